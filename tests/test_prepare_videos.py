"""runs/prepare_videos.py: converted videos read through the same VideoSource interface, frame for frame;
reruns skip finished videos; a corrupt input is listed with its reason and sets the exit code."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from test_decoders import frame_numbers, write_numbered_clip

from datasets import build_dataset
from datasets.checks import check_run_data
from datasets.prepared import PreparedForm, read_frames_fps, read_prepared_form
from datasets.splits import parse_split_file
from datasets.transforms import ViewParams, frames_to_tensor
from datasets.video import FramesFolderSource, PyAVSource, build_video_source
from runs.config import load_config
from runs.prepare_videos import main
from utils.config import ConfigError
from utils.errors import ArgumentError
from utils.pixels import normalise

REPO = Path(__file__).resolve().parents[1]

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
    assert f"4 videos: 1 converted, 3 already there (skipped), 0 not in {raw_root}, 0 failed" in capsys.readouterr().out
    assert finished.stat().st_mtime_ns == stamp
    assert len(list((out / "run" / "v_run_01").glob("img_*.jpg"))) == 36
    assert not (out / "run" / "v_run_01.partial").exists()


def test_a_corrupt_video_is_listed_with_its_reason_and_sets_exit_code_5(raw, tmp_path, capsys):
    raw_root, split = raw
    (raw_root / "walk" / "v_walk_02.webm").write_bytes(b"\x1aE\xdf\xa3 not really a webm" * 50)
    out = tmp_path / "frames"
    assert _prepare(raw_root, split, out, "--workers", "2") == 5
    printed = capsys.readouterr().out
    assert f"4 videos: 3 converted, 0 already there (skipped), 0 not in {raw_root}, 1 failed" in printed
    failed = [line for line in printed.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 1 and failed[0].startswith("  failed: walk/v_walk_02.webm: ") and len(failed[0]) > 30
    assert sorted(os.listdir(out / "walk")) == ["v_walk_01"]  # nothing half-written for the broken one


def test_missing_sources_are_counted_apart_from_failures_and_leave_no_folders(raw, tmp_path, capsys):
    """A partial download: listed videos that were never downloaded are one summary line (exit 0, nothing failed),
    and no class folder is made for a class none of whose videos is there; frames folders record the frame rate."""
    raw_root, split = raw
    (raw_root / "walk" / "v_walk_01.mp4").unlink()
    (raw_root / "walk" / "v_walk_02.webm").unlink()
    out = tmp_path / "frames"
    assert _prepare(raw_root, split, out) == 0
    printed = capsys.readouterr().out
    assert f"4 videos: 2 converted, 0 already there (skipped), 2 not in {raw_root}, 0 failed" in printed
    assert ("  missing: 2 listed videos were never downloaded (e.g. walk/v_walk_01.mp4, walk/v_walk_02.webm); "
            "train on the others with DATA.ON_MISSING_VIDEO drop") in printed
    assert not any(line.startswith("  failed: ") for line in printed.splitlines())
    assert "walk" not in os.listdir(out) and sorted(os.listdir(out / "run")) == ["v_run_01", "v_run_02"]
    with av.open(str(raw_root / "run" / "v_run_01.avi")) as container:
        rate = float(container.streams.video[0].average_rate)
    assert read_frames_fps(str(out / "run" / "v_run_01")) == pytest.approx(rate)


def test_a_split_line_leaving_the_data_root_is_refused_and_nothing_is_written_outside_out(raw, tmp_path, capsys):
    """A downloaded list must not make prepare_videos read or write anywhere the user can."""
    raw_root, split = raw
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "clip.mp4").write_bytes((raw_root / "walk" / "v_walk_01.mp4").read_bytes())
    with open(split, "a", encoding="utf-8") as f:
        f.write("train1//../elsewhere/clip.mp4\n")
    out = tmp_path / "frames"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _prepare(raw_root, split, out)
    assert exit_info.value.code == 4  # the split-list family
    assert capsys.readouterr().err.strip() == (
        f"error: {split}:5: path '../elsewhere/clip.mp4' leaves the data root (paths in a split list are relative "
        f"to DATA.DATA_ROOT_DIR and stay inside it; move the video under the data root)")
    assert sorted(os.listdir(elsewhere)) == ["clip.mp4"] and not out.exists()


def test_a_second_writer_on_one_out_is_refused_and_the_first_finishes_every_video_whole(raw, tmp_path):
    """Two prepare_videos on one --out deleted each other's `.partial` folders and kept half-written ones as
    finished; now the second is refused while the first runs (stopped with SIGSTOP once it holds --out)."""
    raw_root, _ = raw
    for k in range(30):  # enough work that the first is still converting when it is stopped
        os.link(raw_root / "walk" / "v_walk_01.mp4", raw_root / "walk" / f"copy_{k:02d}.mp4")
    out = tmp_path / "frames"

    def prepare() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(REPO / "runs" / "prepare_videos.py"), "--data-root",
                                 str(raw_root), "--out", str(out), "--short-side", "96", "--workers", "1"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    first = prepare()
    try:
        deadline = time.time() + 60
        while not ((out / "prepare.lock").is_file() or list(out.glob("*/*.partial"))):  # the first is writing
            assert first.poll() is None and time.time() < deadline, first.stderr.read().decode()[-2000:]
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)
        second = prepare()
        assert second.wait(timeout=60) == 9
        err = second.stderr.read().decode()
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
        assert re.fullmatch(rf"error: {re.escape(str(out / 'prepare.lock'))}: --out folder in use by pid "
                            rf"{first.pid} on .* since [-0-9: ]+ \(prepare_videos.py --data-root .*\) \(wait for that "
                            rf"job to end or use another --out\)", err.strip()), err
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read().decode()[-2000:]
    expected = {os.path.splitext(rel)[0]: n for rel, _, _, n, _, _ in VIDEOS}
    expected.update({f"walk/copy_{k:02d}": 30 for k in range(30)})
    assert {f"{p.parent.name}/{p.name}": len(list(p.glob("img_*.jpg"))) for p in out.glob("*/*")} == expected
    assert not list(out.rglob("*.partial")) and not (out / "prepare.lock").exists()


def test_a_folder_without_split_lists_converts_every_video_under_it(raw, tmp_path, capsys):
    raw_root, _ = raw
    assert main(["--data-root", str(raw_root), "--out", str(tmp_path / "all"), "--workers", "1"]) == 0
    assert "4 videos: 4 converted" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "all" / "run")) == ["v_run_01", "v_run_02"]


# ---------------------------------------------------------------------------------------------
# squashed at preparation: the lineage's view becomes an exact crop, read as uint8


def _squash_cfg(out, split_dir, scale, *opts):
    return load_config(None, [
        "DATA.DATASET", "Ucf101_few_shot", "DATA.ANNO_DIR", str(split_dir), "DATA.DATA_ROOT_DIR", str(out),
        "DATA.FRAMES_FOLDER", "True", "DATA.RESIZE_MODE", "squash", "DATA.TRAIN_JITTER_SCALES", f"[{scale}, {scale}]",
        "DATA.TEST_SCALE", str(scale), "DATA.TRAIN_CROP_SIZE", "48", "DATA.TEST_CROP_SIZE", "48",
        "DATA.NUM_WORKERS", "0", "TRAIN.WAY", "2", "TRAIN.SHOT", "1", "TRAIN.QUERY_PER_CLASS", "1", *map(str, opts)])


def test_squashed_frames_are_the_loaders_squash_view_and_episodes_travel_as_uint8(raw, tmp_path, capsys):
    raw_root, split = raw
    out = tmp_path / "squashed"
    assert _prepare(raw_root, split, out, "--squash", "64") == 0
    assert "DATA.RESIZE_MODE squash DATA.TRAIN_JITTER_SCALES [64,64] DATA.TEST_SCALE 64" in capsys.readouterr().out
    assert read_prepared_form(str(out)) == PreparedForm("frames", 96, 64)
    view = ViewParams(0, 64, 0.0, 0.0, False, 64)  # the loader's squash to 64 x 64, the whole frame
    for entry, (_, _, _, n, _, _) in zip(parse_split_file(split), VIDEOS, strict=True):
        squashed = FramesFolderSource().open(entry.video_path(str(out), frames_folder=True), 0)
        assert (squashed.width, squashed.height, squashed.num_frames) == (64, 64, n)
        indices = [0, n // 2, n - 1]
        frames = squashed.frames(indices)
        assert frame_numbers(frames) == indices
        raw_frames = PyAVSource().open(entry.video_path(str(raw_root)), 0).frames(indices)
        loader_view = frames_to_tensor(raw_frames, view, (0, 0, 0), (1, 1, 1)) * 255  # [T, 3, 64, 64]
        assert (loader_view - torch.from_numpy(frames).permute(0, 3, 1, 2)).abs().mean() < 3  # JPEG's error only

    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    for name in ("train", "val", "test"):
        (split_dir / f"{name}_few_shot.txt").write_text(open(split).read().replace("train", name))
        (split_dir / f"{name}_class_names.txt").write_text("walking\nrunning\n")
    episode = build_dataset(_squash_cfg(out, split_dir, 64), "train", [0])[0]
    assert episode.support_set.dtype == torch.uint8 and episode.support_set.shape[-3:] == (3, 48, 48)
    with pytest.raises(ConfigError, match=r"squashed to 64x64 .* DATA.TEST_SCALE 80 would resample them again"):
        check_run_data(_squash_cfg(out, split_dir, 64, "DATA.TEST_SCALE", 80))  # at start-up, not in a worker
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _prepare(raw_root, split, out, "--squash", "32")
    assert exit_info.value.code == ArgumentError.exit_code
    assert capsys.readouterr().err.strip() == (f"error: {out}: prepared with --format frames --short-side 96 --squash "
                                               f"64 already; rerun with the same settings or choose a new --out")


def test_uint8_crops_normalised_on_the_device_equal_the_loaders_float_normalisation():
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    for flip in (False, True):
        view = ViewParams(40, 32, 0.7, 0.2, flip)
        as_float = frames_to_tensor(frames, view, mean, std)
        pixels = frames_to_tensor(frames, view, mean, std, out=torch.empty(as_float.shape, dtype=torch.uint8))
        assert torch.equal(normalise(pixels, mean, std), as_float)  # bit for bit: one formula
    with pytest.raises(ValueError, match="uint8 output needs an exact crop"):
        frames_to_tensor(frames, ViewParams(0, 32, 0.5, 0.5, False, 40), mean, std,
                         out=torch.empty((3, 3, 32, 32), dtype=torch.uint8))


def test_a_prepared_frame_of_another_size_than_frame_1_is_a_wrong_size_video_naming_the_frame(raw, tmp_path):
    """Frames 2..n shrunk to 40x40 while prepared.json and frame 1 say 64x64 are refused, not resampled and tested."""
    from PIL import Image

    from datasets.video import BadVideoError

    raw_root, split = raw
    out = tmp_path / "squashed"
    assert _prepare(raw_root, split, out, "--squash", "64") == 0
    folder = Path(parse_split_file(split)[0].video_path(str(out), frames_folder=True))
    frames = sorted(folder.glob("img_*.jpg"))
    for frame in frames[1:16]:
        Image.open(frame).convert("RGB").resize((40, 40)).save(frame)
    video = FramesFolderSource().open(str(folder), 0)
    assert (video.width, video.height) == (64, 64)
    with pytest.raises(BadVideoError) as bad:
        video.frames([0, 5])
    assert bad.value.exit_code == 5 and bad.value.reason == "wrong size"
    assert str(bad.value) == (f"{folder}: wrong size video ({frames[5]} is 40x40, frame 1 is 64x64; all frames of a "
                              f"video share one size: prepare this video again)")
