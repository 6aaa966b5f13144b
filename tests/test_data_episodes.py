"""The episodic dataset and loader: episode contract, determinism, startup checks, bad-video policies."""
from __future__ import annotations

import dataclasses
import logging
import os

import pytest
import torch
from tiny_run import log_records

from datasets import DATASET_REGISTRY, build_dataset, build_loader
from datasets.sampling import EpisodeConfigError
from datasets.video import BadVideoError
from runs.config import load_config
from utils.episode import Episode


def _cfg(root, *opts):
    return load_config(None, [
        "DATA.DATASET", "Synthetic_few_shot", "DATA.ANNO_DIR", str(root), "DATA.DATA_ROOT_DIR", str(root),
        "DATA.TRAIN_CROP_SIZE", "56", "DATA.TEST_CROP_SIZE", "64", "DATA.TRAIN_JITTER_SCALES", "[64, 80]",
        "DATA.TEST_SCALE", "64", "DATA.NUM_WORKERS", "0", "TRAIN.WAY", "5", "TRAIN.SHOT", "1",
        "TRAIN.QUERY_PER_CLASS", "2", "TRAIN.QUERY_PER_CLASS_TEST", "1", *map(str, opts)])


def _assert_same_episode(a, b):
    assert type(a) is type(b) is Episode
    for key in (f.name for f in dataclasses.fields(Episode)):
        if torch.is_tensor(getattr(a, key)):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
        else:
            assert getattr(a, key) == getattr(b, key), key


def test_episode_follows_the_contract(synthetic_root):
    episode = build_dataset(_cfg(synthetic_root), "train", [4])[0]
    assert episode.support_set.shape == (5, 8, 3, 56, 56) and episode.support_set.dtype == torch.float32
    assert episode.target_set.shape == (10, 8, 3, 56, 56)
    assert episode.support_labels.tolist() == [0, 1, 2, 3, 4]
    assert episode.target_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    names = episode.split_class_names
    assert len(names) == 5 and sorted(set(episode.class_names)) == sorted(names)
    assert [names[c] for c in episode.real_support_labels] == episode.class_names
    assert episode.real_target_labels.tolist() == episode.real_support_labels.repeat_interleave(2).tolist()
    for k, vid in enumerate(episode.target_ids):  # class-major, and every video is of its class
        assert vid.split("/")[1] == episode.class_names[k // 2].replace(" ", "_")
    ids = episode.support_ids + episode.target_ids
    assert len(set(ids)) == len(ids)  # support and query videos distinct
    assert (episode.episode_index, episode.split, episode.replaced_videos) == (4, "train", [])
    mean = episode.support_set.mean().item()
    assert -2 < mean < 2 and episode.support_set.std() > 0.1  # normalised, not raw 0..255


@pytest.mark.parametrize("split", ["train", "test"])
def test_same_seed_split_index_gives_identical_tensors(synthetic_root, split):
    cfg = _cfg(synthetic_root, "DATA.TRACK_DIR", synthetic_root / "tracks")
    first = build_dataset(cfg, split, [11])[0]
    again = build_dataset(cfg, split, [3, 11])[1]  # fresh dataset, other position: same episode
    _assert_same_episode(first, again)


def test_different_index_or_seed_gives_a_different_episode(synthetic_root):
    cfg = _cfg(synthetic_root)
    a, b = build_dataset(cfg, "train", [0, 1])
    assert a.support_ids != b.support_ids or not torch.equal(a.support_set, b.support_set)
    c = build_dataset(_cfg(synthetic_root, "RANDOM_SEED", 1), "train", [0])[0]
    assert not torch.equal(a.support_set, c.support_set)


def test_test_episodes_are_deterministic_centre_views(synthetic_root):
    episode = build_dataset(_cfg(synthetic_root), "test", [2])[0]
    assert episode.support_set.shape == (5, 8, 3, 64, 64) and episode.target_set.shape == (5, 8, 3, 64, 64)
    shot5 = build_dataset(_cfg(synthetic_root, "TRAIN.SHOT_TEST", 3, "TRAIN.QUERY_PER_CLASS_TEST", 2), "val", [2])[0]
    assert shot5.support_set.shape[0] == 15 and shot5.target_set.shape[0] == 10
    assert shot5.support_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]


def test_loader_with_workers_yields_the_same_episodes_in_order(synthetic_root):
    cfg = _cfg(synthetic_root, "DATA.NUM_WORKERS", 2)
    indices = [7, 2, 5]
    loader = build_loader(cfg, "train", indices)
    assert loader.batch_size is None and loader.persistent_workers and loader.num_workers == 2
    from_workers = list(loader)
    in_process = build_dataset(_cfg(synthetic_root), "train", indices)
    assert [e.episode_index for e in from_workers] == indices
    for k in range(len(indices)):
        _assert_same_episode(from_workers[k], in_process[k])


def test_startup_check_lists_classes_short_of_videos_and_too_large_way(synthetic_root):
    with pytest.raises(EpisodeConfigError, match="5 classes have fewer than SHOT \\+ QUERY = 7 videos: 0:'"):
        build_dataset(_cfg(synthetic_root, "TRAIN.QUERY_PER_CLASS", 6), "train", [0])
    with pytest.raises(EpisodeConfigError, match="WAY 6 is larger than the 5 classes"):
        build_dataset(_cfg(synthetic_root, "TRAIN.WAY", 6), "train", [0])


def test_unknown_dataset_name_lists_registered_entries(synthetic_root):
    with pytest.raises(KeyError, match="Synthetic_few_shot"):
        build_dataset(_cfg(synthetic_root, "DATA.DATASET", "Ssv3_few_shot"), "train", [0])
    for name in ("Ssv2_few_shot", "Kinetics100_few_shot", "Ucf101_few_shot", "Hmdb51_few_shot", "Synthetic_few_shot"):
        assert name in DATASET_REGISTRY


def test_ssv2_entry_turns_flip_off_and_says_so(synthetic_root, monkeypatch):
    import utils.logger as logger_module

    monkeypatch.setattr(logger_module, "_LOGGED_ONCE", set())  # said once per process: forget earlier tests' notes
    with log_records() as records:
        dataset = build_dataset(_cfg(synthetic_root, "DATA.DATASET", "Ssv2_few_shot", "DATA.FLIP", True), "train", [0])
    assert not dataset.views.flip
    assert any("Ssv2_few_shot: DATA.FLIP is off" in r.getMessage() for r in records)
    assert build_dataset(_cfg(synthetic_root, "DATA.DATASET", "Kinetics100_few_shot"), "train", [0]).views.flip


@pytest.fixture()
def damaged_root(synthetic_root, tmp_path):
    """The synthetic benchmark with 3 of the 6 videos of every test class missing, corrupt or empty."""
    for name in ("test_few_shot.txt", "test_class_names.txt"):
        (tmp_path / name).write_text((synthetic_root / name).read_text())
    bad = []
    for line in (synthetic_root / "test_few_shot.txt").read_text().split():
        rel = line.split("//", 1)[1]
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        number = int(rel[-7:-4])
        if number == 0:
            pass  # missing
        elif number == 1:
            target.write_bytes(b"\x00garbage" * 64)
        elif number == 2:
            target.write_bytes(b"")
        else:
            os.symlink(synthetic_root / rel, target)
            continue
        bad.append(rel[:-4])
    return tmp_path, set(bad)


def test_bad_video_is_an_error_naming_the_file_by_default(damaged_root):
    root, _ = damaged_root
    dataset = build_dataset(_cfg(root), "test", range(6))
    with pytest.raises(BadVideoError, match=f"{root}/videos/.* video .*test episode 0; DATA.ON_BAD_VIDEO resample"):
        dataset[0]


def test_resample_replaces_bad_videos_by_the_same_class_and_logs_them(damaged_root):
    root, bad = damaged_root
    dataset = build_dataset(_cfg(root, "DATA.ON_BAD_VIDEO", "resample", "TRAIN.QUERY_PER_CLASS_TEST", 2), "test",
                            range(4))
    with log_records(logging.WARNING) as records:
        episodes = [dataset[i] for i in range(4)]
    replaced = [r for e in episodes for r in e.replaced_videos]
    assert replaced and {vid for vid, _ in replaced} <= bad
    assert {reason for _, reason in replaced} <= {"missing", "unreadable", "empty"}
    # one warning per bad video, the first time this process meets it (tests/test_data_on_disk.py: never reopened)
    assert len([r for r in records if "replaced by other videos" in r.getMessage()]) == len({v for v, _ in replaced})
    for e in episodes:  # never dropped: full episodes of good videos from the right classes
        assert e.target_set.shape[0] == 10 and e.support_set.shape[0] == 5
        ids = e.support_ids + e.target_ids
        assert not set(ids) & bad and len(set(ids)) == len(ids)
        for k, vid in enumerate(e.target_ids):
            assert vid.split("/")[1] == e.class_names[k // 2].replace(" ", "_")
    _assert_same_episode(episodes[1], dataset[1])  # replacements are reproducible too


def test_too_short_videos_are_bad(synthetic_root):
    dataset = build_dataset(_cfg(synthetic_root, "DATA.MIN_VIDEO_FRAMES", 30), "train", [0])
    with pytest.raises(BadVideoError, match="too short video \\(24 frames < DATA.MIN_VIDEO_FRAMES 30"):
        dataset[0]
