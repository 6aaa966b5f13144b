"""Split lists and class-name files: the real CLIP-FSAR lists parse with the published counts; bad files fail
with errors naming the file and line."""
from __future__ import annotations

import pytest

from datasets.splits import SPLITS, SplitError, class_counts, load_split, parse_split_file, read_class_names

# benchmark: ((train, val, test) classes, (train, val, test) videos)
REAL_COUNTS = {
    "ssv2_full": ((64, 12, 24), (67013, 1926, 2857)),
    "ssv2_small": ((64, 12, 24), (6400, 1200, 2400)),
    "kinetics100": ((64, 12, 24), (6400, 1200, 2400)),
    "ucf101": ((70, 10, 21), (9154, 1421, 2745)),
    "hmdb51": ((31, 10, 10), (4280, 1194, 1292)),
}


@pytest.mark.parametrize("bench", sorted(REAL_COUNTS))
def test_real_split_lists_have_published_class_and_video_counts(shared_splits, bench):
    classes, videos = REAL_COUNTS[bench]
    for k, split in enumerate(SPLITS):
        entries = parse_split_file(str(shared_splits / "clipfsar" / bench / f"{split}_few_shot.txt"), split)
        assert len(entries) == videos[k], (bench, split)
        assert sorted(class_counts(entries)) == list(range(classes[k])), (bench, split)
        assert all(e.has_path == (not bench.startswith("ssv2")) for e in entries)
        if split != "val":  # the CLIP-FSAR reference has train/test names only
            loaded = load_split(str(shared_splits / "clipfsar" / bench), split)
            assert loaded.num_classes == classes[k]
            assert sum(len(v) for v in loaded.videos_by_class()) == videos[k]


def test_both_separators_give_video_ids_and_paths(tmp_path):
    path = tmp_path / "train_few_shot.txt"
    path.write_text("train3/78687\ntrain0//videos/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi\n\n")
    ssv2, other = parse_split_file(str(path), "train")
    assert (ssv2.class_id, ssv2.video_id, ssv2.has_path) == (3, "78687", False)
    assert ssv2.video_path("/data", ".webm") == "/data/78687.webm"
    video_id = "videos/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0"
    assert (other.class_id, other.video_id) == (0, video_id)
    assert other.video_path("/data", ".webm") == f"/data/{video_id}.avi"
    assert other.video_path("/data", frames_folder=True) == f"/data/{video_id}"
    assert (other.line, ssv2.line) == (2, 1)


def _write_split(folder, lines, names):
    (folder / "train_few_shot.txt").write_text("".join(line + "\n" for line in lines))
    if names is not None:
        (folder / "train_class_names.txt").write_text("".join(n + "\n" for n in names))
    return str(folder)


@pytest.mark.parametrize("lines, names, message", [
    (["train0/1", "train2/2"], ["a", "b"], "train_few_shot.txt:2: class id 2 out of range"),
    (["train0/1", "train1/5", "train0/1"], ["a", "b"], "train_few_shot.txt:3: duplicate video '1' (first on line 1)"),
    (["train0/1", "train0 2"], ["a"], "train_few_shot.txt:2: cannot parse"),
    (["train0/1", "test0/2"], ["a"], "train_few_shot.txt:2: line belongs to split 'test'"),
    (["train0/1"], ["a", "", "b"], "train_class_names.txt:2: empty class name"),
    (["train0/1"], ["a", "b", "a"], "train_class_names.txt:3: duplicate class name 'a'"),
    (["train0/1"], ["x", "y", "x  "], "train_class_names.txt:3: duplicate class name 'x' (line 1 names it too; this "
                                      "line reads 'x  ')"),
    (["train0/1", "train0/v2.mp4\t0"], ["a"], "train_few_shot.txt:2: tab in 'train0/v2.mp4\\\\t0'"),
    # One video written two ways is one video: it could otherwise be support and query of one episode.
    (["train0//a/b.mp4", "train0//a/./b.mp4"], ["a"], "train_few_shot.txt:2: duplicate video 'a/b' (first on line 1)"),
    (["train0//a//b.mp4", "train0//c/../a/b.mp4"], ["a"], "train_few_shot.txt:2: duplicate video 'a/b'"),
    (["train0//../../outside.mp4"], ["a"], "train_few_shot.txt:1: path '../../outside.mp4' leaves the data root"),
    (["train0/1", "train0/../x"], ["a"], "train_few_shot.txt:2: path '../x' leaves the data root"),
    (["train0//a/../../x.mp4"], ["a"], "train_few_shot.txt:1: path 'a/../../x.mp4' leaves the data root"),
    (["train0///etc/x.mp4"], ["a"], "train_few_shot.txt:1: absolute path '/etc/x.mp4'; paths in a split list are "
                                    "relative to DATA.DATA_ROOT_DIR"),
])
def test_invalid_split_files_name_file_and_line(tmp_path, lines, names, message):
    anno = _write_split(tmp_path, lines, names)
    with pytest.raises(SplitError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_split(anno, "train")
    assert "\n" not in str(info.value)


def test_missing_class_name_file_says_how_to_produce_it(tmp_path):
    anno = _write_split(tmp_path, ["train0/1"], None)
    with pytest.raises(SplitError, match="train_class_names.txt: class-name file not found.*prepare_splits.py"):
        load_split(anno, "train")


def test_class_names_keep_order_and_ignore_trailing_blank_lines(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("Pouring [something] into [something]\nbrush hair\n\n")
    assert read_class_names(str(path)) == ["Pouring [something] into [something]", "brush hair"]


def test_utf8_bom_is_stripped_from_class_names_and_split_lists(tmp_path, caplog):
    anno = _write_split(tmp_path, ["train0/1", "train1/2"], ["a", "b"])
    for name in ("train_few_shot.txt", "train_class_names.txt"):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with caplog.at_level("WARNING"):
        split = load_split(anno, "train")
    assert split.class_names == ["a", "b"] and [v.video_id for v in split.videos] == ["1", "2"]
    assert sum("byte-order mark" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("content, message", [
    ("train0/1\n".encode("utf-16"), "split list is UTF-16-encoded (save it as UTF-8)"),
    (b"train0/1\n\x00\x00", "split list is binary, not text (NUL byte at offset 9)"),
])
def test_non_utf8_split_lists_are_named(tmp_path, content, message):
    anno = _write_split(tmp_path, ["train0/1"], ["a"])
    (tmp_path / "train_few_shot.txt").write_bytes(content)
    with pytest.raises(SplitError) as info:
        load_split(anno, "train")
    assert str(info.value) == f"{tmp_path / 'train_few_shot.txt'}: {message}"
