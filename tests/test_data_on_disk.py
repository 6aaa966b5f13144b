"""Partial downloads as a recorded choice (DATA.ON_MISSING_VIDEO drop) on stand-ins in the benchmarks' real layouts
and codecs, most of each list missing; bad videos are opened once per process (DATA.ON_BAD_VIDEO resample)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from tiny_run import log_records, tiny_argv

from datasets import build_dataset
from datasets.checks import MissingVideosError, check_run_data, write_effective_lists
from datasets.sampling import EpisodeConfigError
from datasets.splits import load_split
from datasets.video import PyAVSource
from runs.config import load_config

SPLITS = ("train", "val", "test")
LISTED, ON_DISK = 5, (2, 3, 2, 1)  # per class: listed videos, and how many of them were downloaded (8 of 20)
# benchmark -> (encoder, options, DATA.VIDEO_EXT, list line of split/class/video k)
LAYOUTS = {
    "ucf101": ("mpeg4", {"qscale": "3"}, ".mp4", "{split}{c}//videos/{name}/v_{name}_g{k:02d}_c01.avi"),
    "ssv2": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "b": "0", "crf": "40"}, ".webm",
             "{split}{c}/{sid}{c}{k}"),
    "kinetics100": ("libx264", {"crf": "30"}, ".mp4",
                    "{split}{c}//train_256/{name}/id{k:02d}x{c}{sid}yz_000010_000020.mp4"),
}
SPLIT_IDS = {"train": 1, "val": 2, "test": 3}


def _write_clip(path: Path, codec: str, options: dict) -> None:
    """8 frames of 32 x 32, each a different grey, written by PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25, options=options)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for k in range(8):
            frame = np.full((32, 32, 3), 30 * k, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _video_file(root: Path, line: str, ext: str) -> Path:
    rel = line.split("//", 1)[1] if "//" in line else line.split("/", 1)[1] + ext
    return root / rel


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory) -> dict[str, Path]:
    """Per benchmark: 4 classes per split, 5 videos listed per class, 2/3/2/1 of them on disk."""
    roots = {}
    for bench, (codec, options, ext, pattern) in LAYOUTS.items():
        root = tmp_path_factory.mktemp(bench)
        clip = root / f"clip{Path(pattern).suffix or ext}"
        _write_clip(clip, codec, options)
        for split in SPLITS:
            names = [f"{split}Action{c}" for c in range(len(ON_DISK))]
            lines = []
            for c, (name, present) in enumerate(zip(names, ON_DISK, strict=True)):
                for k in range(LISTED):
                    line = pattern.format(split=split, c=c, k=k, name=name, sid=SPLIT_IDS[split])
                    lines.append(line)
                    if k < present:
                        target = _video_file(root, line, ext)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(clip, target)
            (root / f"{split}_few_shot.txt").write_text("\n".join(lines) + "\n")
            (root / f"{split}_class_names.txt").write_text("\n".join(n.lower() for n in names) + "\n")
        clip.unlink()
        roots[bench] = root
    return roots


def _cfg(root: Path, bench: str, *opts):
    return load_config(None, [
        "DATA.DATASET", "Ssv2_few_shot" if bench == "ssv2" else "Kinetics100_few_shot", "DATA.ANNO_DIR", str(root),
        "DATA.DATA_ROOT_DIR", str(root), "DATA.VIDEO_EXT", LAYOUTS[bench][2], "DATA.NUM_INPUT_FRAMES", "4",
        "DATA.TRAIN_JITTER_SCALES", "[32, 32]", "DATA.TEST_SCALE", "32", "DATA.TRAIN_CROP_SIZE", "32",
        "DATA.TEST_CROP_SIZE", "32", "DATA.NUM_WORKERS", "0", "TRAIN.WAY", "2", "TRAIN.SHOT", "1",
        "TRAIN.QUERY_PER_CLASS", "1", "TRAIN.QUERY_PER_CLASS_TEST", "1", "TEST.ENABLE", "True", *map(str, opts)])


@pytest.mark.parametrize("bench", sorted(LAYOUTS))
def test_drop_runs_on_the_videos_on_disk_and_the_classes_they_fill(benchmarks, bench):
    root = benchmarks[bench]
    with pytest.raises(MissingVideosError, match="12 of 20 listed videos are unusable .*DATA.ON_MISSING_VIDEO drop"):
        check_run_data(_cfg(root, bench))  # the default: the lists are the benchmark
    cfg = _cfg(root, bench, "DATA.ON_MISSING_VIDEO", "drop")
    with log_records(logging.WARNING) as records:
        counts = check_run_data(cfg)
    for split in SPLITS:  # class 3 keeps 1 video < SHOT + QUERY = 2: dropped with its video
        assert {k: counts[split][k] for k in ("videos", "classes", "missing", "kept_videos", "kept_classes")} == {
            "videos": 20, "classes": 4, "missing": 12, "kept_videos": 7, "kept_classes": 3}
    logged = [r.getMessage() for r in records]
    assert sum("keeps 7 of 20 listed videos (35.0 %; 12 missing, 0 empty) and 3 of 4 classes (1 dropped, 1 of them "
               "left with fewer than SHOT + QUERY = 2 videos)" in m for m in logged) == 3
    for split in SPLITS:
        dataset = build_dataset(cfg, split, range(6))
        for i in range(6):
            episode = dataset[i]  # decodes the real avi / webm / mp4 files
            assert episode.support_set.shape[:2] == (2, 4) and episode.replaced_videos == []
            assert set(episode.class_names) <= {f"{split}action{c}" for c in range(3)}


@pytest.mark.parametrize("bench", sorted(LAYOUTS))
def test_episodes_are_those_of_the_effective_lists_written_for_the_run(benchmarks, bench, tmp_path):
    root = benchmarks[bench]
    cfg = _cfg(root, bench, "DATA.ON_MISSING_VIDEO", "drop")
    write_effective_lists(cfg, str(tmp_path))
    test = load_split(str(tmp_path), "test")
    assert test.class_names == ["testaction0", "testaction1", "testaction2"] and len(test.videos) == 7
    assert all(Path(e.video_path(str(root), LAYOUTS[bench][2])).is_file() for e in test.videos)
    recorded = _cfg(root, bench, "DATA.ANNO_DIR", tmp_path)  # the lists as anyone would read them, policy error
    check_run_data(recorded)  # nothing missing in them
    for split in SPLITS:
        dropped, listed = build_dataset(cfg, split, [0, 5]), build_dataset(recorded, split, [0, 5])
        for a, b in ((dropped[0], listed[0]), (dropped[1], listed[1])):
            assert (a.support_ids, a.target_ids, a.class_names) == (b.support_ids, b.target_ids, b.class_names)
            assert torch.equal(a.support_set, b.support_set) and torch.equal(a.target_set, b.target_set)


def test_too_few_classes_left_for_way_is_one_error_before_training(benchmarks):
    cfg = _cfg(benchmarks["kinetics100"], "kinetics100", "DATA.ON_MISSING_VIDEO", "drop", "TRAIN.WAY", "4")
    with pytest.raises(EpisodeConfigError, match="counting only videos on disk .*WAY 4 is larger than the 3 classes"):
        check_run_data(cfg)


def test_a_run_records_the_share_of_the_benchmark_it_tested(benchmarks, tmp_path, capsys):
    from runs.run import main

    root, out = benchmarks["kinetics100"], tmp_path / "run"
    result = main(tiny_argv(root, out, "DATA.DATASET", "Kinetics100_few_shot", "DATA.ON_MISSING_VIDEO", "drop",
                            "TRAIN.WAY", "2", "TRAIN.NUM_TRAIN_TASKS", "2", "TRAIN.VAL_FRE_ITER", "2",
                            "TRAIN.NUM_VAL_TASKS", "1", "TRAIN.NUM_TEST_TASKS", "2"))
    share = {"videos": 7, "listed_videos": 20, "classes": 3, "listed_classes": 4, "share_of_videos": 0.35,
             "partial": True}
    assert result["benchmark"] == share and json.loads((out / "results.json").read_text())["benchmark"] == share
    assert "PARTIAL BENCHMARK: test episodes drew on 7 of 20 listed videos (35.0 %) and 3 of 4 classes" in \
        capsys.readouterr().out
    for split in SPLITS:
        written = load_split(str(out / "splits"), split)
        assert (written.num_classes, len(written.videos)) == (3, 7)


class CountingSource(PyAVSource):
    """PyAV, counting the opens of each path (to see what is tried again)."""

    def __init__(self):
        super().__init__()
        self.opens: dict[str, int] = {}

    def open(self, path: str, short_side: int):
        self.opens[path] = self.opens.get(path, 0) + 1
        return super().open(path, short_side)


def test_resample_never_opens_a_known_bad_video_again_and_episodes_do_not_change(benchmarks, tmp_path):
    root = benchmarks["kinetics100"]
    lines = [line for line in (root / "train_few_shot.txt").read_text().splitlines() if not line.startswith("train3")]
    (tmp_path / "train_few_shot.txt").write_text("\n".join(lines) + "\n")  # classes 0-2: 2, 3, 2 of 5 on disk
    (tmp_path / "train_class_names.txt").write_text("".join(f"trainaction{c}\n" for c in range(3)))
    cfg = _cfg(root, "kinetics100", "DATA.ON_BAD_VIDEO", "resample", "DATA.ANNO_DIR", tmp_path)
    source = CountingSource()
    dataset = build_dataset(cfg, "train", range(30), video_source=source)
    with log_records(logging.DEBUG) as records:
        episodes = [dataset[i] for i in range(30)]
    missing = {p for p in source.opens if not Path(p).is_file()}
    assert missing and all(source.opens[p] == 1 for p in missing)  # found bad once, replaced at once after that
    warned = [r for r in records if r.levelno == logging.WARNING]
    assert len(warned) == len(missing) and all("will not open it again" in r.getMessage() for r in warned)
    replaced = sum(len(e.replaced_videos) for e in episodes)
    assert replaced > len(missing)  # the saving: every later draw of a known-bad video is replaced without a try
    fresh = build_dataset(cfg, "train", range(30))  # a new process knows nothing: the same episodes
    for i in (3, 17, 29):
        again = fresh[i]
        assert (again.support_ids, again.target_ids, again.replaced_videos) == (
            episodes[i].support_ids, episodes[i].target_ids, episodes[i].replaced_videos)
        assert torch.equal(again.support_set, episodes[i].support_set)


def test_a_benchmark_config_tries_out_on_cpu_through_the_overlay(benchmarks, tmp_path):
    """docs/training.md "Try a benchmark config on a laptop": a three-line child of the shipped UCF101 config and
    configs/overlays/cpu_trial.yaml runs end to end on a partial download in the real layout (tiny tower, 64 px)."""
    from runs.run import main

    repo, root = Path(__file__).resolve().parents[1], benchmarks["ucf101"]
    child = tmp_path / "trial.yaml"
    child.write_text(f"_BASE_: [{repo}/configs/projects/CLIPFSAR/ucf101/CLIPFSAR_UCF101_1shot_ViT-B16.yaml, "
                     f"{repo}/configs/overlays/cpu_trial.yaml]\n"
                     f"DATA: {{DATA_ROOT_DIR: {root}, ANNO_DIR: {root}, ON_MISSING_VIDEO: drop}}\n")
    cfg = load_config(str(child), [])
    assert (cfg.DATA.DATASET, cfg.VIDEO.HEAD.BACKBONE_NAME, cfg.DATA.TEST_CROP_SIZE) == (
        "Ucf101_few_shot", "FSAR-Tiny-ViT", 64)
    result = main(["--cfg", str(child), "OUTPUT_DIR", str(tmp_path / "run"), "TRAIN.WAY", "2",
                   "TRAIN.QUERY_PER_CLASS", "1", "TRAIN.NUM_TRAIN_TASKS", "2", "TRAIN.VAL_FRE_ITER", "2",
                   "TRAIN.NUM_VAL_TASKS", "1", "TRAIN.NUM_TEST_TASKS", "2", "DATA.NUM_WORKERS", "0"])
    assert result["episodes"] == 2 and 0.0 <= result["accuracy"] <= 100.0
