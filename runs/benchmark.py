"""Benchmarks, one subcommand each: `python runs/benchmark.py <name> [options]`.

    data        episodes/s of the episodic loader (decode resized vs full resolution then resize)
    train-step  one training iteration of a config per variant (fp32, bf16, checkpointing, or KEY VALUE sets):
                median time, peak memory (each variant in a fresh process), MFU on known GPUs
    eval        test episodes/s with and without the per-video feature cache (and equal accuracies)
    otam        OTAM forward+backward: vectorised vs per-cell loop (and equal values)
    flops       per-module FLOPs (fvcore) and trainable parameters of a config

Each subcommand prints a small table and, with `--json OUT`, writes its numbers (medians over repeats).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Sequence

if __package__ in (None, ""):  # `python runs/benchmark.py`: this repository's packages come first (a Hugging Face
    # `datasets` installed in the same environment must not shadow ours; see README, Layout)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import simplejson as json  # noqa: E402

from datasets.video import DecordSource, OpenedVideo, VideoSource, resize_frames, resized_size  # noqa: E402
from utils.cli import int_shape, non_negative_int, positive_int  # noqa: E402
from utils.errors import entry_point  # noqa: E402


def write_json(path: str, data: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


# ---------------------------------------------------------------------------------------------
# data


def resize_frames_float(frames, size: tuple[int, int]):
    """The common float pipeline (ToTensor-style): uint8 -> float, antialiased bilinear, back to uint8."""
    import torch
    import torch.nn.functional as F

    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    video = F.interpolate(video, size=(size[1], size[0]), mode="bilinear", antialias=True, align_corners=False)
    return video.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class _FullResolutionVideo(OpenedVideo):
    def __init__(self, video: OpenedVideo, size: tuple[int, int], resize: Callable):
        self.inner, self.path, self.num_frames, self.resize = video, video.path, video.num_frames, resize
        self.width, self.height, self.size = video.width, video.height, size

    def frames(self, indices: Sequence[int]):
        return self.resize(self.inner.frames(indices), self.size)


class FullResolutionThenResize(VideoSource):
    """The baseline: decord decodes the sampled frames at full resolution, then they are resized
    (`resize="uint8"`: torch's uint8 antialiased kernel; `"float"`: the float pipeline)."""

    def __init__(self, resize: str = "uint8", num_threads: int = 1):
        self.decord = DecordSource(num_threads=num_threads)
        self.resize = resize_frames if resize == "uint8" else resize_frames_float

    def open(self, path: str, short_side: int) -> OpenedVideo:
        video = self.decord.open(path, 0)
        return _FullResolutionVideo(video, resized_size(video.width, video.height, short_side), self.resize)


def _data_cfg(root: str, way: int, shot: int, query: int, workers: int):
    from utils.config import load_config

    return load_config(None, [
        "DATA.DATASET", "Synthetic_few_shot", "DATA.ANNO_DIR", root, "DATA.DATA_ROOT_DIR", root,
        "DATA.NUM_INPUT_FRAMES", "8", "DATA.TRAIN_CROP_SIZE", "224", "DATA.TRAIN_JITTER_SCALES", "[256, 320]",
        "DATA.NUM_WORKERS", str(workers), "DATA.PIN_MEMORY", "False",
        "TRAIN.WAY", str(way), "TRAIN.SHOT", str(shot), "TRAIN.QUERY_PER_CLASS", str(query),
    ])


def episodes_per_second(cfg, episodes: int, source: VideoSource, offset: int) -> float:
    """Steady-state rate: the clock starts when the first episode arrives (worker start-up excluded)."""
    from datasets import build_loader

    loader = build_loader(cfg, "train", range(offset, offset + episodes + 1), video_source=source)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    count = sum(1 for _ in iterator)
    elapsed = time.perf_counter() - start
    del iterator, loader
    return count / elapsed


def bench_data(args: argparse.Namespace) -> dict:
    """Episodes/s for decode-resized (the loader's reader) vs full resolution then resize, 0 and N workers."""
    from datasets.synthetic import make_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or os.path.join(tmp, "synthetic")
        if not os.path.isfile(os.path.join(root, "train_few_shot.txt")):
            print(f"generating synthetic videos ({args.size}x{args.size}, {args.frames} frames) in {root} ...")
            make_synthetic(root, classes=15, videos_per_class=args.shot + args.query + 1, frames=args.frames,
                           size=args.size, seed=0)
        methods: dict[str, Callable[[], VideoSource]] = {
            "decode_resized": lambda: DecordSource(num_threads=1),
            "full_res+resize_uint8": lambda: FullResolutionThenResize("uint8"),
            "full_res+resize_float": lambda: FullResolutionThenResize("float"),
        }
        results: dict[str, dict] = {}
        for workers in args.workers:
            cfg = _data_cfg(root, args.way, args.shot, args.query, workers)
            for name, make_source in methods.items():
                # Each repeat reads different episodes, so the page cache favours no method.
                rates = [episodes_per_second(cfg, args.episodes, make_source(), offset=r * 1000)
                         for r in range(args.repeats)]
                results[f"{name}/workers={workers}"] = {"method": name, "workers": workers,
                                                        "episodes_per_s": statistics.median(rates), "runs": rates}
    rows = [["workers", *[f"{m} ep/s" for m in methods], "ratio vs uint8", "ratio vs float"]]
    summary = {}
    for workers in args.workers:
        rate = {m: results[f"{m}/workers={workers}"]["episodes_per_s"] for m in methods}
        fast = rate["decode_resized"]
        ratios = [fast / rate["full_res+resize_uint8"], fast / rate["full_res+resize_float"]]
        summary[str(workers)] = {**rate, "ratio_vs_uint8": ratios[0], "ratio_vs_float": ratios[1]}
        rows.append([str(workers), *[f"{rate[m]:.2f}" for m in methods], *[f"{r:.2f}x" for r in ratios]])
    print(f"episodes: {args.way}-way {args.shot}-shot {args.query}-query, 8 frames, 224 px crop, short side "
          f"256-320; videos {args.size}x{args.size}, {args.frames} frames (mp4); median of {args.repeats} x "
          f"{args.episodes} episodes; {os.cpu_count()} CPUs")
    print_table(rows)
    out = {"benchmark": "data", "video_size": args.size, "video_frames": args.frames, "way": args.way,
           "shot": args.shot, "query": args.query, "episodes": args.episodes, "repeats": args.repeats,
           "cpus": os.cpu_count(), "results": results, "summary": summary}
    write_json(args.json, out)
    return out


def add_data_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="episodic loader throughput: decode resized vs full res + resize")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (the median is reported)")
    p.add_argument("--episodes", type=int, default=6, help="episodes per timed run")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to compare")
    p.add_argument("--size", type=int, default=480, help="side of the generated square videos (pixels)")
    p.add_argument("--frames", type=int, default=48, help="frames per generated video")
    p.add_argument("--root", default="", help="existing synthetic benchmark to read (default: generate one)")
    p.add_argument("--way", type=int, default=5)
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--query", type=int, default=5)
    p.add_argument("--json", default="", help="write the results here")
    p.set_defaults(func=bench_data)


def report(bench: Callable[[argparse.Namespace], dict]) -> Callable[[argparse.Namespace], dict]:
    """Run a model benchmark, print its rows as a table and write its JSON."""
    def run(args: argparse.Namespace) -> dict:
        out = bench(args)
        rows = out.get("rows", [])
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row))  # every row's keys, first-seen order
            print_table([keys] + [[_fmt(row.get(k)) for k in keys] for row in rows])
        print({k: v for k, v in out.items() if k not in ("rows", "raw", "table")})
        write_json(args.json, out)
        return out
    return run


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def add_model_parsers(subparsers) -> None:
    from runs import bench_model as bm

    def common(p, repeats: int):
        p.add_argument("--cfg", default="configs/projects/MCDPFSAR/synthetic/demo.yaml")
        p.add_argument("--repeats", type=positive_int, default=repeats, help="timed repeats (the median is reported)")
        p.add_argument("--json", default="", help="write the results here")
        p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every variant")

    p = subparsers.add_parser("train-step", help="one training iteration per variant")
    common(p, 3)
    p.add_argument("--warmup", type=non_negative_int, default=1)
    p.add_argument("--variant", action="append", help="NAME=KEY VALUE ... (default: fp32, bf16, ckpt variants)")
    p.add_argument("--flops", action="store_true", help="count FLOPs (for MFU on a GPU)")
    p.set_defaults(func=report(bm.bench_train_step))
    p = subparsers.add_parser("train-step-child", help=argparse.SUPPRESS)
    common(p, 3)
    p.add_argument("--warmup", type=non_negative_int, default=1)
    p.add_argument("--flops", action="store_true")
    p.add_argument("--child-json", required=True)
    p.set_defaults(func=bm.train_step_child)
    p = subparsers.add_parser("eval", help="test episodes/s with and without the feature cache")
    common(p, 1)
    p.add_argument("--episodes", type=positive_int, default=300)
    p.add_argument("--split", default="test")
    p.set_defaults(func=report(bm.bench_eval))
    p = subparsers.add_parser("train-cache", help="frozen-backbone training episodes/s with and without the cache")
    common(p, 1)
    p.add_argument("--first-pass", type=positive_int, default=150, help="episodes that fill the cache before timing")
    p.add_argument("--episodes", type=positive_int, default=30, help="timed episodes (the median step is reported)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed episodes of the uncached variant")
    p.set_defaults(func=report(bm.bench_train_cache))
    p = subparsers.add_parser("otam", help="OTAM forward+backward: vectorised vs per-cell loop")
    p.add_argument("--shape", type=int_shape(4, "queries, prototypes, query frames, prototype frames"),
                   default="25,5,8,8")
    p.add_argument("--repeats", type=positive_int, default=20)
    p.add_argument("--warmup", type=non_negative_int, default=3)
    p.add_argument("--json", default="")
    p.set_defaults(func=report(bm.bench_otam))
    p = subparsers.add_parser("flops", help="per-module FLOPs and trainable parameters of a config")
    common(p, 1)
    p.add_argument("--depth", type=positive_int, default=3, help="module depth of the FLOP table")
    p.set_defaults(func=report(bm.bench_flops))


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_data_parser(subparsers)
    add_model_parsers(subparsers)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
