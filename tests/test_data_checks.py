"""Fail fast: every split the run uses is loaded and checked before the first training step."""
from __future__ import annotations

import logging
import shutil

import pytest
from tiny_run import log_records

from datasets.checks import MissingVideosError, check_run_data, run_splits, scan_videos
from datasets.sampling import EpisodeConfigError
from datasets.splits import SplitError
from runs.config import load_config
from utils.errors import UserError


def _cfg(root, *opts):
    return load_config(None, [
        "DATA.DATASET", "Synthetic_few_shot", "DATA.ANNO_DIR", str(root), "DATA.DATA_ROOT_DIR", str(root),
        "TRAIN.WAY", "5", "TRAIN.SHOT", "1", "TRAIN.QUERY_PER_CLASS", "2", "TRAIN.QUERY_PER_CLASS_TEST", "1",
        *map(str, opts)])


@pytest.fixture()
def root(synthetic_root, tmp_path):
    """A private copy of the synthetic benchmark (15 classes 5/5/5, 6 videos each) that tests may damage."""
    copy = tmp_path / "bench"
    shutil.copytree(synthetic_root, copy)
    return copy


def _videos(root, split):
    return [line.split("//", 1)[1] for line in (root / f"{split}_few_shot.txt").read_text().split()]


def test_a_healthy_benchmark_is_counted_split_by_split(synthetic_root):
    counts = check_run_data(_cfg(synthetic_root))
    for split in ("train", "val", "test"):
        assert counts[split] == {"classes": 5, "videos": 30, "missing": 0, "empty": 0, "missing_tracks": None}
    assert counts["seconds"] >= 0


def test_only_the_splits_the_run_uses_are_checked(root):
    (root / "test_class_names.txt").unlink()
    assert set(check_run_data(_cfg(root, "TEST.ENABLE", False))) == {"train", "val", "seconds"}
    assert run_splits(_cfg(root, "TRAIN.ENABLE", False)) == ["test"]
    with pytest.raises(SplitError, match="test_class_names.txt: class-name file not found"):
        check_run_data(_cfg(root))


def test_val_split_with_fewer_classes_than_way_fails_before_training(root):
    lines = (root / "val_few_shot.txt").read_text().split()
    (root / "val_few_shot.txt").write_text("\n".join(line for line in lines if not line.startswith("val4/")) + "\n")
    names = (root / "val_class_names.txt").read_text().splitlines()
    (root / "val_class_names.txt").write_text("\n".join(names[:4]) + "\n")
    with pytest.raises(EpisodeConfigError, match="val_few_shot.txt \\(val episodes\\): WAY 5 is larger than the 4"):
        check_run_data(_cfg(root))
    assert "val" not in check_run_data(_cfg(root, "TRAIN.ENABLE", False, "TEST.CHECKPOINT_FILE_PATH", "x.pth"))


def test_each_split_uses_its_own_shot_and_query(synthetic_root):
    check_run_data(_cfg(synthetic_root, "TRAIN.SHOT", 1, "TRAIN.QUERY_PER_CLASS", 5))  # 6 videos: 1 + 5 fits
    with pytest.raises(EpisodeConfigError, match="val_few_shot.txt \\(val episodes\\): 5 classes have fewer than "
                                                 "SHOT \\+ QUERY = 7"):
        check_run_data(_cfg(synthetic_root, "TRAIN.SHOT_TEST", 5, "TRAIN.QUERY_PER_CLASS_TEST", 2))
    with pytest.raises(EpisodeConfigError, match="test_few_shot.txt \\(test episodes\\): .* SHOT \\+ QUERY = 7"):
        check_run_data(_cfg(synthetic_root, "TRAIN.QUERY_PER_CLASS_TEST", 6, "TRAIN.ENABLE", False,
                            "TEST.CHECKPOINT_FILE_PATH", "x.pth"))


def test_missing_videos_are_one_error_naming_the_count_and_first_paths(root):
    videos = _videos(root, "train")
    for rel in videos[:4]:
        (root / rel).unlink()
    (root / videos[4]).write_bytes(b"")
    with pytest.raises(MissingVideosError) as err:
        check_run_data(_cfg(root))
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message
    assert message.startswith(f"{root}/train_few_shot.txt: 5 of 30 listed videos are unusable (4 missing, 1 empty)")
    assert f"{root / videos[0]}, {root / videos[1]}, {root / videos[2]} and 2 more" in message
    assert message.endswith("(check DATA.DATA_ROOT_DIR and DATA.VIDEO_EXT; to run on the videos you have, set "
                            "DATA.ON_MISSING_VIDEO drop; DATA.ON_BAD_VIDEO resample replaces them by other videos of "
                            "their class)")


def test_resample_logs_the_count_and_checks_what_is_left_per_class(root):
    videos = _videos(root, "test")  # class-major, 6 per class
    for rel in videos[:3]:
        (root / rel).unlink()
    with log_records(logging.WARNING) as records:
        counts = check_run_data(_cfg(root, "DATA.ON_BAD_VIDEO", "resample"))
    assert counts["test"]["missing"] == 3 and counts["train"]["missing"] == 0
    assert any("test_few_shot.txt: 3 of 30 listed videos are unusable" in r.getMessage() for r in records)
    (root / videos[3]).unlink()  # class 0 keeps 2 videos: SHOT 1 + QUERY 1 still fits; a third loss does not
    check_run_data(_cfg(root, "DATA.ON_BAD_VIDEO", "resample"))
    (root / videos[4]).unlink()
    with pytest.raises(EpisodeConfigError, match="counting only usable videos: 1 classes have fewer than SHOT \\+ "
                                                 "QUERY = 2 videos: 0:"):
        check_run_data(_cfg(root, "DATA.ON_BAD_VIDEO", "resample"))


def test_frames_folders_are_checked_as_folders(root):
    for split in ("train", "val", "test"):
        for rel in _videos(root, split):
            (root / rel[:-4]).mkdir()  # the folder of frames next to each video
    assert check_run_data(_cfg(root, "DATA.FRAMES_FOLDER", True))["train"]["missing"] == 0
    first = _videos(root, "val")[0]
    (root / first[:-4]).rmdir()
    with pytest.raises(MissingVideosError, match="1 of 30 listed folders of frames are unusable \\(1 missing\\)"):
        check_run_data(_cfg(root, "DATA.FRAMES_FOLDER", True))


def test_videos_without_track_files_are_counted_not_refused(root):
    tracks = root / "tracks"
    first_test = _videos(root, "test")[0][:-4]  # video id of the `//` form: the path without extension
    (tracks / f"{first_test}.json").unlink()
    with log_records() as records:
        counts = check_run_data(_cfg(root, "VFAM.ENABLE", True, "DATA.TRACK_DIR", tracks))
    assert counts["test"]["missing_tracks"] == 1 and counts["train"]["missing_tracks"] == 0
    assert any("1 of 30 videos have no track file" in r.getMessage() and first_test in r.getMessage()
               for r in records)
    assert check_run_data(_cfg(root, "DATA.TRACK_DIR", tracks))["test"]["missing_tracks"] is None  # VFAM off


def test_scan_videos_follows_symlinks_and_refuses_folders_for_files(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "link.mp4").symlink_to(tmp_path / "a.mp4")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "empty.mp4").write_bytes(b"")
    names = ["a.mp4", "link.mp4", "dangling.mp4", "dir.mp4", "empty.mp4", "none.mp4"]
    missing, empty = scan_videos([str(tmp_path / n) for n in names])
    assert (missing, empty) == ([2, 3, 5], [4])


def test_a_test_line_reading_outside_the_data_root_is_refused_before_the_run_starts(root, tmp_path, capsys):
    """`test0//../../outside.mp4` would be read from outside DATA.DATA_ROOT_DIR and tested without a word."""
    from tiny_run import TINY_CFG, refused

    outside = tmp_path / "outside.mp4"
    outside.write_bytes((root / _videos(root, "test")[0]).read_bytes())
    data_root = root / "videos"  # the list's `../../outside.mp4` resolves from here to tmp_path/outside.mp4
    lists = tmp_path / "lists"
    shutil.copytree(root, lists, ignore=shutil.ignore_patterns("videos", "tracks"))
    for split in ("train", "val", "test"):  # the same videos, written relative to <root>/videos
        text = (lists / f"{split}_few_shot.txt").read_text().replace("//videos/", "//")
        (lists / f"{split}_few_shot.txt").write_text(text)
    with open(lists / "test_few_shot.txt", "a", encoding="utf-8") as f:
        f.write("test0//../../outside.mp4\n")
    out = tmp_path / "run"
    line = refused(capsys, 4, ["--cfg", TINY_CFG, "DATA.ANNO_DIR", str(lists), "DATA.DATA_ROOT_DIR", str(data_root),
                               "OUTPUT_DIR", str(out)])
    assert line == (f"error: {lists / 'test_few_shot.txt'}:31: path '../../outside.mp4' leaves the data root (paths "
                    f"in a split list are relative to DATA.DATA_ROOT_DIR and stay inside it; move the video under "
                    f"the data root)")
    assert not out.exists()


def test_a_node_whose_data_differs_from_rank_zeros_is_refused_even_where_no_check_fails(synthetic_root, root):
    """With DATA.ON_BAD_VIDEO resample a node lacking a video passes its own check, but its ranks would draw other
    episodes than rank 0 expects: its counts are compared with rank 0's (runs/run.py check_every_node)."""
    from datasets.checks import check_same_data

    reference = check_run_data(_cfg(synthetic_root, "DATA.ON_BAD_VIDEO", "resample"))
    cfg = _cfg(root, "DATA.ON_BAD_VIDEO", "resample")
    check_same_data(cfg, reference, check_run_data(cfg))  # the same data: nothing to say
    (root / _videos(root, "val")[0]).unlink()
    with pytest.raises(MissingVideosError) as info:
        check_same_data(cfg, reference, check_run_data(cfg))
    assert str(info.value) == (f"{root / 'val_few_shot.txt'}: this node sees other data than rank 0 (missing 1 "
                               f"here, 0 on rank 0) (every node must read the same split lists and videos under "
                               f"DATA.ANNO_DIR and DATA.DATA_ROOT_DIR; copy what this node lacks)")
