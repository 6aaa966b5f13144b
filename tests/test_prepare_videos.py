"""runs/prepare_videos.py: converted videos read through the same VideoSource interface, frame for frame;
reruns skip finished videos; a corrupt input is listed with its reason and sets the exit code."""
from __future__ import annotations

import os

import numpy as np
import pytest
from test_decoders import frame_numbers, write_numbered_clip

from datasets.splits import parse_split_file
from datasets.video import FramesFolderSource, PyAVSource, build_video_source
from runs.prepare_videos import main

# (relative path, encoder, options, frames, width, height)
VIDEOS = [
    ("walk/v_walk_01.mp4", "libx264", {"crf": "18"}, 30, 128, 96),
    ("walk/v_walk_02.webm", "libvpx-vp9", {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8"}, 24,
     128, 96),
    ("run/v_run_01.avi", "mpeg4", {"qscale": "3", "bf": "2"}, 36, 128, 96),
    ("run/v_run_02.avi", "mpeg4", {"qscale": "3"}, 20, 256, 192),  # larger than --short-side 48: shrunk
]


@pytest.fixture()
def raw(tmp_path):
    root = tmp_path / "raw"
    for rel, codec, options, frames, width, height in VIDEOS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_numbered_clip(str(root / rel), codec, options, frames, width, height)
    split = tmp_path / "train_few_shot.txt"
    split.write_text("".join(f"train{k // 2}//{rel}\n" for k, (rel, *_) in enumerate(VIDEOS)))
    return root, str(split)


def _prepare(raw_root, split, out, *extra) -> int:
    return main(["--data-root", str(raw_root), "--lists", split, "--out", str(out), "--short-side", "96", *extra])


@pytest.mark.parametrize("fmt", ["frames", "mp4"])
def test_prepared_videos_read_like_the_raw_ones_frame_for_frame(raw, tmp_path, fmt):
    raw_root, split = raw
    out = tmp_path / fmt
    assert _prepare(raw_root, split, out, "--format", fmt, "--workers", "2") == 0
    frames_folder = fmt == "frames"
    prepared = FramesFolderSource() if frames_folder else build_video_source(False, decoder="pyav")
    for entry, (_, _, _, n, _, _) in zip(parse_split_file(split), VIDEOS, strict=True):
        before = PyAVSource().open(entry.video_path(str(raw_root)), 48)
        after = prepared.open(entry.video_path(str(out), frames_folder=frames_folder), 48)
        # Kept at most 96 px on the short side (the 256x192 clip is shrunk to 128x96), never enlarged.
        assert (after.width, after.height) == (128, 96) and after.size == before.size
        assert after.num_frames == before.num_frames == n
        indices = [0, n // 3, n // 2, n - 1]
        old, new = before.frames(indices), after.frames(indices)
        assert frame_numbers(new) == indices
        assert np.abs(old.astype(int) - new.astype(int)).mean() < 4  # near-identical pixels
    assert not [p for p, _, _ in os.walk(out) if p.endswith(".partial")]


def test_rerun_skips_finished_videos_and_replaces_interrupted_ones(raw, tmp_path, capsys):
    raw_root, split = raw
    out = tmp_path / "frames"
    assert _prepare(raw_root, split, out, "--workers", "1") == 0
    finished = out / "walk" / "v_walk_01" / "img_00001.jpg"
    stamp = finished.stat().st_mtime_ns
    # An interrupted conversion leaves only `<target>.partial`: it is redone, the finished ones are not.
    os.rename(out / "run" / "v_run_01", out / "run" / "v_run_01.partial")
    capsys.readouterr()
    assert _prepare(raw_root, split, out, "--workers", "1") == 0
    assert "4 videos: 1 converted, 3 already there (skipped), 0 failed" in capsys.readouterr().out
    assert finished.stat().st_mtime_ns == stamp
    assert len(os.listdir(out / "run" / "v_run_01")) == 36 and not (out / "run" / "v_run_01.partial").exists()


def test_a_corrupt_video_is_listed_with_its_reason_and_sets_exit_code_5(raw, tmp_path, capsys):
    raw_root, split = raw
    (raw_root / "walk" / "v_walk_02.webm").write_bytes(b"\x1aE\xdf\xa3 not really a webm" * 50)
    out = tmp_path / "frames"
    assert _prepare(raw_root, split, out, "--workers", "2") == 5
    printed = capsys.readouterr().out
    assert "4 videos: 3 converted, 0 already there (skipped), 1 failed" in printed
    failed = [line for line in printed.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 1 and failed[0].startswith("  failed: walk/v_walk_02.webm: ") and len(failed[0]) > 30
    assert sorted(os.listdir(out / "walk")) == ["v_walk_01"]  # nothing half-written for the broken one


def test_a_folder_without_split_lists_converts_every_video_under_it(raw, tmp_path, capsys):
    raw_root, _ = raw
    assert main(["--data-root", str(raw_root), "--out", str(tmp_path / "all"), "--workers", "1"]) == 0
    assert "4 videos: 4 converted" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "all" / "run")) == ["v_run_01", "v_run_02"]
