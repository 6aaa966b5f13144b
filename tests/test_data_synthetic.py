"""The synthetic benchmark: real layout, deterministic per seed, fine-grained classes, tracks and detections."""
from __future__ import annotations

import hashlib
import json

import decord
import numpy as np
import pytest

from datasets.splits import SPLITS, load_split
from datasets.synthetic import class_catalogue, make_synthetic, split_sizes
from datasets.tracks import load_track_file, track_path
from runs.make_synthetic import main as make_synthetic_main


def test_layout_matches_the_real_benchmarks(synthetic_root):
    counts = {}
    for split in SPLITS:
        split_data = load_split(str(synthetic_root), split)
        counts[split] = split_data.num_classes
        assert all(len(v) == 6 for v in split_data.videos_by_class())
        for entry in split_data.videos:
            assert entry.has_path and entry.rest.startswith("videos/") and entry.rest.endswith(".mp4")
            assert (synthetic_root / entry.rest).is_file()
            track_file = load_track_file(track_path(str(synthetic_root / "tracks"), entry.video_id), entry.video_id)
            assert (track_file.num_frames, track_file.width, track_file.height) == (24, 64, 64)
            assert len(track_file.tracks) == 4 and track_file.detector == "ground_truth"  # actor, partner, 2 others
            assert all(len(t.frames) == 24 for t in track_file.tracks)
        for name in split_data.class_names:
            assert 3 <= len(name.split()) <= 8 and name == name.lower()
    assert counts == {"train": 5, "val": 5, "test": 5}
    names = [n for s in SPLITS for n in load_split(str(synthetic_root), s).class_names]
    assert len(set(names)) == 15


def test_videos_decode_with_the_declared_size_and_length(synthetic_root):
    entry = load_split(str(synthetic_root), "val").videos[0]
    reader = decord.VideoReader(str(synthetic_root / entry.rest))
    assert len(reader) == 24 and reader[0].shape == (64, 64, 3)


def test_detections_file_is_noisy_tracker_input(synthetic_root):
    detections = json.loads((synthetic_root / "detections.json").read_text())
    assert len(detections) == 90
    total, low = 0, 0
    for video_id, record in detections.items():
        assert (synthetic_root / "tracks" / f"{video_id}.json").is_file()
        assert (record["num_frames"], record["width"], record["height"]) == (24, 64, 64)
        assert len(record["frames"]) == 24
        for frame in record["frames"]:
            for det in frame:
                assert len(det["box"]) == 4 and 0 <= det["score"] <= 1 and isinstance(det["label"], str)
                low += det["score"] < 0.4
            total += len(frame)
    true_boxes = 90 * 24 * 4
    assert 0.75 * true_boxes < total - low < 0.92 * true_boxes  # ~15% dropped
    assert low > 0  # occasional low-score false positives


def test_classes_come_in_fine_grained_groups():
    catalogue = class_catalogue(30)
    assert len({c.name for c in catalogue}) == 30
    for g in range(10):
        order_a, order_b, other_actor = catalogue[3 * g: 3 * g + 3]
        assert order_a.actor == order_b.actor and order_a.program == order_b.program[::-1]  # temporal order only
        assert order_a.program == other_actor.program and order_a.actor != other_actor.actor  # acting entity only
        assert other_actor.partner == order_a.actor and order_a.partner == other_actor.actor
    assert catalogue[0].name == "red circle moves left then up"
    assert split_sizes(30) == (18, 6, 6) and split_sizes(15) == (5, 5, 5) and split_sizes(10) == (4, 3, 3)


def test_actor_performs_its_motions_in_order(synthetic_root):
    meta = json.loads((synthetic_root / "meta.json").read_text())
    split_data = load_split(str(synthetic_root), "train")
    by_name = {c["name"]: c for c in meta["catalogue"]}
    for entry in split_data.videos[::6]:
        cls = by_name[split_data.class_names[entry.class_id]]
        track_file = load_track_file(track_path(str(synthetic_root / "tracks"), entry.video_id))
        actor = next(t for t in track_file.tracks if t.label == cls["actor"])
        centre = (actor.boxes[:, :2] + actor.boxes[:, 2:]) / 2
        width = actor.boxes[:, 2] - actor.boxes[:, 0]
        first, second = cls["program"]
        half = len(centre) // 2
        for motion, part in ((first, slice(0, half + 3)), (second, slice(half - 3, None))):
            seg_c, seg_w = centre[part], width[part]
            change = {"left": seg_c[0, 0] - seg_c[-1, 0], "right": seg_c[-1, 0] - seg_c[0, 0],
                      "up": seg_c[0, 1] - seg_c[-1, 1], "down": seg_c[-1, 1] - seg_c[0, 1],
                      "grow": seg_w[-1] - seg_w[0], "shrink": seg_w[0] - seg_w[-1]}[motion]
            assert change > 4, (entry.video_id, motion, change)


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_per_seed(tmp_path):
    kwargs = dict(classes=3, videos_per_class=2, frames=8, size=32)
    make_synthetic(str(tmp_path / "a"), seed=5, **kwargs)
    make_synthetic(str(tmp_path / "b"), seed=5, **kwargs)
    make_synthetic(str(tmp_path / "c"), seed=6, **kwargs)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    videos = [k for k in a if k.endswith(".mp4")]
    assert len(videos) == 6 and all(a[k] != c[k] for k in videos)


def test_cli_writes_the_layout(tmp_path, capsys):
    out = tmp_path / "cli"
    assert make_synthetic_main(["--out", str(out), "--classes", "3", "--videos-per-class", "2", "--frames", "6",
                                "--size", "32", "--seed", "1", "--distractors", "1"]) == 0
    assert "3 classes (train/val/test 1/1/1)" in capsys.readouterr().out
    assert load_split(str(out), "test").num_classes == 1
    track_file = json.loads(next((out / "tracks").rglob("*.json")).read_text())
    assert len(track_file["tracks"]) == 3  # actor, partner, one distractor


@pytest.mark.parametrize("kwargs, message", [({"size": 33}, "size must be even"), ({"classes": 2}, "at least 3"),
                                             ({"classes": 400}, "distinct classes")])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic(str(tmp_path), **kwargs)
    assert not np.any([p.suffix == ".mp4" for p in tmp_path.rglob("*")])
