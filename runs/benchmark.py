"""Benchmarks, one subcommand each: `python runs/benchmark.py <name> [options]`.

    data        per codec: raw videos (each decoder) vs prepared data (runs/prepare_videos.py): ms per video,
                episodes/s per core, disk per video
    train-step  one training iteration of a config per variant (fp32, bf16, checkpointing, or KEY VALUE sets):
                median time, peak memory (each variant in a fresh process), MFU on known GPUs
    frame-cache training episodes loaded per CPU second with and without DATA.FRAME_CACHE_MB (and equal episodes)
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
from utils.cli import int_shape, non_negative_int, positive_float, positive_int  # noqa: E402
from utils.errors import ArgumentError, entry_point  # noqa: E402


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


# Realistic clips in the benchmarks' codecs and sizes: (extension, encoder, options, width, height, fps).
# UCF101/HMDB51: MPEG-4 part 2 AVI with B-frames (Xvid-like), 320x240 at 25 fps; SSv2: VP9 webm, 427x240;
# Kinetics-style H.264 mp4 at 320x240, 30 fps. Key frames every 250 frames (x264's default; Xvid's is 300).
CLIP_KINDS = {
    "avi-mpeg4": (".avi", "mpeg4", {"b": "800k", "bf": "2", "g": "250"}, 320, 240, 25),
    "mp4-h264": (".mp4", "libx264", {"crf": "18", "preset": "veryfast", "g": "250"}, 320, 240, 30),
    "webm-vp9": (".webm", "libvpx-vp9", {"crf": "24", "b": "0", "deadline": "realtime", "cpu-used": "8",
                                         "g": "250"}, 427, 240, 25),
}


def write_realistic_clip(path: str, kind: str, seconds: float, seed: int) -> None:
    """A panning smooth texture, a moving block and light sensor noise: compresses like camera footage."""
    import av
    import numpy as np
    from PIL import Image

    ext, codec, options, width, height, fps = CLIP_KINDS[kind]
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4 + 4, width // 4 + 4, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((coarse.shape[1] * 4, coarse.shape[0] * 4), Image.BICUBIC))
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(int(seconds * fps)):
            y, x = (np.arange(height)[:, None] + t) % texture.shape[0], (np.arange(width) + 2 * t) % texture.shape[1]
            img = texture[y, x]
            cx = (5 * t) % width
            img[height // 3:height // 3 + 40, max(0, cx - 20):cx + 20] = (200, 50, 50)
            img = np.clip(img.astype(np.int16) + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def make_realistic_benchmark(root: str, kinds: Sequence[str], classes: int, videos_per_class: int,
                             seconds: tuple[float, float]) -> None:
    """Per kind: `<root>/videos/<kind>/c<k>/v<k>_<j><ext>` and split files in `<root>/anno/<kind>` ('//' lines)."""
    import numpy as np

    for kind in kinds:
        anno = os.path.join(root, "anno", kind)
        if os.path.isfile(os.path.join(anno, "train_few_shot.txt")):
            continue
        lengths = np.random.default_rng(0).uniform(*seconds, classes * videos_per_class)
        lines = []
        for k in range(classes):
            os.makedirs(os.path.join(root, "videos", kind, f"c{k}"), exist_ok=True)
            for j in range(videos_per_class):
                rel = f"{kind}/c{k}/v{k}_{j}{CLIP_KINDS[kind][0]}"
                write_realistic_clip(os.path.join(root, "videos", rel), kind, lengths[k * videos_per_class + j],
                                     seed=k * 1000 + j)
                lines.append(f"train{k}//{rel}\n")
        os.makedirs(anno, exist_ok=True)
        with open(os.path.join(anno, "train_class_names.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f"class {k}\n" for k in range(classes)))
        with open(os.path.join(anno, "train_few_shot.txt"), "w", encoding="utf-8") as f:  # last: marks done
            f.write("".join(lines))


SQUASH = 256  # the lineage's squash scale


def _data_cfg(anno: str, data_root: str, frames_folder: bool, way: int, shot: int, query: int, workers: int):
    from runs.config import load_config

    return load_config(None, [
        "DATA.DATASET", "Ucf101_few_shot", "DATA.ANNO_DIR", anno, "DATA.DATA_ROOT_DIR", data_root,
        "DATA.FRAMES_FOLDER", str(frames_folder), "DATA.NUM_INPUT_FRAMES", "8", "DATA.TRAIN_CROP_SIZE", "224",
        # CLIP-FSAR's view (configs/projects/CLIPFSAR/base.yaml): every frame squashed to 256 x 256, 224 crop.
        "DATA.RESIZE_MODE", "squash", "DATA.TRAIN_JITTER_SCALES", f"[{SQUASH}, {SQUASH}]", "DATA.TEST_SCALE",
        str(SQUASH), "DATA.NUM_WORKERS", str(workers), "DATA.PIN_MEMORY", "False",
        "TRAIN.WAY", str(way), "TRAIN.SHOT", str(shot), "TRAIN.QUERY_PER_CLASS", str(query),
    ])


def episodes_per_second(cfg, episodes: int, source: VideoSource, offset: int) -> float:
    """Steady-state rate: the clock starts when the first episode arrives (worker start-up excluded).

    With 0 workers the clock is this process's CPU time, so the rate is per core even on a shared machine."""
    from datasets import build_loader

    clock = time.process_time if cfg.DATA.NUM_WORKERS == 0 else time.perf_counter
    loader = build_loader(cfg, "train", range(offset, offset + episodes + 1), video_source=source)
    iterator = iter(loader)
    next(iterator)
    start = clock()
    count = sum(1 for _ in iterator)
    elapsed = clock() - start
    del iterator, loader
    return count / elapsed


def ms_per_video(cfg, source: VideoSource, paths: list[str], seed: int) -> float:
    """CPU ms to open a video and decode the frames a training episode takes from it (the dataset's frame sampler:
    DATA.NUM_INPUT_FRAMES, DATA.FRAME_SAMPLING) at a 288-px short side, mean over `paths`: the decoder alone (the
    episode rates below add the view and everything else)."""
    import torch

    from datasets.few_shot import clip_reader

    reader = clip_reader(cfg, "train")
    generator = torch.Generator().manual_seed(seed)
    start = time.process_time()
    for path in paths:
        video = source.open(path, 288)
        video.frames(reader.frames(video.num_frames, reader.num_frames, True, generator, video.fps))
    return 1000 * (time.process_time() - start) / len(paths)


def _mean_size(paths: list[str]) -> float:
    """Mean KiB per video (a file or a folder of frames)."""
    total = 0
    for path in paths:
        total += os.path.getsize(path) if os.path.isfile(path) else sum(
            os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    return total / len(paths) / 1024


def _data_methods(root: str, full_res: bool) -> dict[str, tuple[str, bool, Callable[[], VideoSource]]]:
    """name -> (data root, frames folder, source factory): raw videos first, then the prepared forms."""
    from datasets.video import FramesFolderSource, PyAVSource, TorchcodecSource, decoder_available

    raw = os.path.join(root, "videos")
    methods = {"raw/pyav": (raw, False, lambda: PyAVSource(num_threads=1)),
               "raw/decord": (raw, False, lambda: DecordSource(num_threads=1))}
    if not decoder_available("torchcodec"):
        methods["raw/torchcodec"] = (raw, False, lambda: TorchcodecSource(num_threads=1))
    if full_res:
        methods["raw/decord full res+resize"] = (raw, False, lambda: FullResolutionThenResize("uint8"))
    methods["prepared/frames"] = (os.path.join(root, "prepared_frames"), True, FramesFolderSource)
    methods[f"prepared/frames squash {SQUASH}"] = (os.path.join(root, "prepared_frames_squash"), True,
                                                   FramesFolderSource)
    methods["prepared/mp4 pyav"] = (os.path.join(root, "prepared_mp4"), False, lambda: PyAVSource(num_threads=1))
    methods["prepared/mp4 decord"] = (os.path.join(root, "prepared_mp4"), False, lambda: DecordSource(num_threads=1))
    return methods


def bench_data(args: argparse.Namespace) -> dict:
    """Per codec: raw videos (each decoder) vs prepared data (JPEG frames, short-GOP mp4): ms per video,
    episodes/s per core (0 workers) and with N workers, disk per video."""
    import torch

    from datasets.splits import parse_split_file
    from runs import prepare_videos

    if args.seconds[0] > args.seconds[1]:
        raise ArgumentError(f"--seconds {args.seconds[0]:g} {args.seconds[1]:g}: the shorter length comes first "
                            f"(--seconds MIN MAX)")
    torch.set_num_threads(1)  # as in every DataLoader worker: 0 workers is then exactly one core
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or os.path.join(tmp, "realistic")
        print(f"videos: {len(args.kinds)} codecs x {args.classes} classes x {args.videos_per_class}, "
              f"{args.seconds[0]:g}-{args.seconds[1]:g} s, in {root} (generated once) ...", flush=True)
        make_realistic_benchmark(root, args.kinds, args.classes, args.videos_per_class, tuple(args.seconds))
        for name, extra in (("frames", []), ("mp4", ["--format", "mp4"]),
                            ("frames_squash", ["--squash", str(SQUASH)])):
            code = prepare_videos.main(["--data-root", os.path.join(root, "videos"), "--out",
                                        os.path.join(root, f"prepared_{name}"), *extra, "--lists",
                                        *[os.path.join(root, "anno", k, "train_few_shot.txt") for k in args.kinds]])
            if code:
                raise RuntimeError(f"prepare_videos {' '.join(extra)} failed on generated videos")
        methods = _data_methods(root, args.full_res)
        results: dict[str, dict] = {}
        for kind in args.kinds:
            anno = os.path.join(root, "anno", kind)
            entries = parse_split_file(os.path.join(anno, "train_few_shot.txt"))
            for name, (data_root, frames_folder, make_source) in methods.items():
                paths = [e.video_path(data_root, frames_folder=frames_folder) for e in entries]
                cfg = _data_cfg(anno, data_root, frames_folder, args.way, args.shot, args.query, 0)
                row = {"kind": kind, "method": name, "kib_per_video": _mean_size(paths),
                       "ms_per_video": statistics.median(ms_per_video(cfg, make_source(), paths, seed=r)
                                                         for r in range(args.repeats))}
                for workers in args.workers:
                    cfg = _data_cfg(anno, data_root, frames_folder, args.way, args.shot, args.query, workers)
                    # Each repeat reads different episodes, so the page cache favours no method.
                    rates = [episodes_per_second(cfg, args.episodes, make_source(), offset=r * 1000)
                             for r in range(args.repeats)]
                    row[f"episodes_per_s/workers={workers}"] = statistics.median(rates)
                results[f"{kind}/{name}"] = row
                print(f"  {kind:10s} {name:28s} " + "  ".join(
                    f"{k}={v:.3g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    return _report_data(args, methods, results)


def _report_data(args: argparse.Namespace, methods: dict, results: dict[str, dict]) -> dict:
    per_core = f"episodes_per_s/workers={args.workers[0]}"
    rows = [["codec", "method", "KiB/video", "decode ms/video", *[f"ep/s w={w}" for w in args.workers],
             "ep/s x raw/pyav", "decode x raw/pyav"]]
    for kind in args.kinds:
        base = results[f"{kind}/raw/pyav"]
        for name in methods:
            row = results[f"{kind}/{name}"]
            row["episodes_speedup_vs_raw_pyav"] = row[per_core] / base[per_core]
            row["decode_speedup_vs_raw_pyav"] = base["ms_per_video"] / row["ms_per_video"]
            rows.append([kind, name, f"{row['kib_per_video']:.0f}", f"{row['ms_per_video']:.1f}",
                         *[f"{row[f'episodes_per_s/workers={w}']:.3f}" for w in args.workers],
                         f"{row['episodes_speedup_vs_raw_pyav']:.2f}x", f"{row['decode_speedup_vs_raw_pyav']:.2f}x"])
    print(f"episodes: {args.way}-way {args.shot}-shot {args.query}-query, 8 frames, 224 px crop of frames squashed "
          f"to {SQUASH} x {SQUASH}; "
          f"median of {args.repeats} x {args.episodes} episodes; 0 workers: CPU time (per core); "
          f"{os.cpu_count()} CPUs")
    print_table(rows)
    out = {"benchmark": "data", "kinds": {k: CLIP_KINDS[k][:1] + CLIP_KINDS[k][3:] for k in args.kinds},
           "seconds": args.seconds, "classes": args.classes, "videos_per_class": args.videos_per_class,
           "way": args.way, "shot": args.shot, "query": args.query, "episodes": args.episodes,
           "repeats": args.repeats, "cpus": os.cpu_count(), "results": results}
    write_json(args.json, out)
    return out


def add_data_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="episodic loader throughput: raw videos vs prepared data, per codec")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per setting (the median is reported)")
    p.add_argument("--episodes", type=positive_int, default=1, help="episodes per timed run")
    p.add_argument("--workers", type=non_negative_int, nargs="+", default=[0],
                   help="DataLoader worker counts (0: one core)")
    p.add_argument("--kinds", nargs="+", choices=list(CLIP_KINDS), default=list(CLIP_KINDS), help="codecs")
    p.add_argument("--seconds", type=positive_float, nargs=2, default=[2.0, 10.0],
                   help="clip length range MIN MAX (uniform)")
    p.add_argument("--classes", type=positive_int, default=5, help="classes per codec")
    p.add_argument("--videos-per-class", type=positive_int, default=6)
    p.add_argument("--full-res", action="store_true", help="also decode at full resolution, then resize")
    p.add_argument("--root", default="", help="keep the generated videos here and reuse them (default: temporary)")
    p.add_argument("--way", type=positive_int, default=5)
    p.add_argument("--shot", type=positive_int, default=1)
    p.add_argument("--query", type=positive_int, default=5)
    p.add_argument("--json", default="", help="write the results here")
    p.set_defaults(func=bench_data)


def bench_frame_cache(args: argparse.Namespace) -> dict:
    """Training episodes of a config loaded with and without DATA.FRAME_CACHE_MB, 0 workers (CPU seconds of one
    core), each repeat from an empty cache over new episodes, so the first draws' misses are in the number."""
    import torch

    from datasets import DATASET_REGISTRY, build_dataset
    from runs.config import load_config

    torch.set_num_threads(1)  # as in a DataLoader worker
    variants = {"decode every time": 0, f"frame cache {args.cache_mb} MiB": args.cache_mb}
    cfgs = {name: load_config(args.cfg, [*args.opts, "DATA.FRAME_CACHE_MB", str(mb)]) for name, mb in variants.items()}
    DATASET_REGISTRY.get(cfgs["decode every time"].DATA.DATASET, "DATA.DATASET").prepare(cfgs["decode every time"])
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    first: dict[str, list] = {}
    for r in range(args.repeats):
        for name, cfg in cfgs.items():  # side by side, alternating
            dataset = build_dataset(cfg, "train", range(r * args.episodes, (r + 1) * args.episodes))
            start = time.process_time()
            episodes = [dataset[i] for i in range(len(dataset))]
            seconds[name].append(time.process_time() - start)
            if r == 0:
                first[name] = episodes[:5]
    plain, cached = (first[name] for name in variants)
    same = all(torch.equal(a.support_set, b.support_set) and torch.equal(a.target_set, b.target_set)
               for a, b in zip(plain, cached, strict=True))
    rates = {name: args.episodes / statistics.median(s) for name, s in seconds.items()}
    base = rates["decode every time"]
    rows = [{"variant": name, "episodes_per_cpu_s": rate, "x_decode_every_time": rate / base}
            for name, rate in rates.items()]
    return {"benchmark": "frame-cache", "cfg": args.cfg, "episodes": args.episodes, "repeats": args.repeats,
            "identical_episodes": same, "rows": rows}


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


OTAM_MAX_CELLS = 1 << 26  # --shape's bound: 256 MiB per float32 tensor; the benchmark holds several (and gradients)


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
    p = subparsers.add_parser("frame-cache", help="training episodes loaded per CPU second with and without the "
                              "decoded-frame cache")
    common(p, 3)
    p.add_argument("--episodes", type=positive_int, default=100, help="episodes per repeat (a fresh cache each)")
    p.add_argument("--cache-mb", type=positive_int, default=256, help="DATA.FRAME_CACHE_MB of the cached variant")
    p.set_defaults(func=report(bench_frame_cache))
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
    p.add_argument("--shape", type=int_shape(4, "queries, prototypes, query frames, prototype frames", OTAM_MAX_CELLS),
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
