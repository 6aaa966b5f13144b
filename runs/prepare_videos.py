"""Convert a benchmark's videos once into the form that decodes fastest at training resolution.

    python runs/prepare_videos.py --data-root data/ucf101 --anno-dir splits/ucf101 --out data/ucf101_frames
    # then train with: DATA.DATA_ROOT_DIR data/ucf101_frames DATA.FRAMES_FOLDER True

Every video is decoded once, from its first frame (PyAV: frame k is the k-th decoded picture, the definition the
loader's decoders are tested against), shrunk so that its short side is at most `--short-side` (aspect kept,
never enlarged) and written under `--out` with the same relative layout:

- `frames` (default, the fastest to read; runs/benchmark.py data): `<out>/<video path without extension>/
  img_00001.jpg ...`, read with DATA.FRAMES_FOLDER True (mmaction2's rawframes layout);
- `mp4`: H.264 with a key frame every `--gop` frames (default 1: intra-only, the fastest mp4 to seek in) and no
  B-frames, under the original file name (FFmpeg recognises the container by its content), so only
  DATA.DATA_ROOT_DIR changes; about a third of the frames' disk space, decoding about 1.3x slower.

Videos run in parallel processes. One writer per output: `<out>/prepare.lock` refuses a second prepare_videos on
the same `--out` while the first runs (exit 9, naming the holder), so a `.partial` found at start is always an
interrupted one. A finished video is never redone (rerun to resume); each is written to `<final>.partial` and
renamed when complete, so a video's folder or file exists only once it is whole. The summary lists failures with
their reasons; the exit code is 0 when every video is converted or already was, and 5 (the video family) when any
failed, after all others are done.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import sys
from dataclasses import dataclass

from tqdm import tqdm

if __package__ in (None, ""):  # `python runs/prepare_videos.py`: this repository's packages come first (a Hugging Face
    # `datasets` installed in the same environment must not shadow ours; see README, Layout)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.prepared import PreparedForm, read_prepared_form, write_frames_fps, write_prepared_form  # noqa: E402
from datasets.splits import SPLITS, parse_split_file, split_files  # noqa: E402
from datasets.video import BadVideoError, resized_size, rgb24  # noqa: E402
from utils.cli import non_negative_int, positive_int  # noqa: E402
from utils.errors import ArgumentError, entry_point  # noqa: E402
from utils.run_lock import RunLock  # noqa: E402

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
# 320 serves both training views without enlarging on disk what the loader would enlarge anyway: our short-side
# view draws the short side from DATA.TRAIN_JITTER_SCALES [256, 320]; the lineage's squash view needs >= 256 on
# both sides. UCF101/HMDB51/SSv2 (240 px tall) are therefore kept at their own resolution.
DEFAULT_SHORT_SIDE = 320
PREPARE_LOCK = "prepare.lock"  # in --out while a prepare_videos writes there (utils/run_lock.py)


@dataclass(frozen=True)
class Job:
    source: str  # input video file
    target: str  # output folder (frames) or file (mp4)
    rel: str  # path relative to the data root, for messages


@dataclass(frozen=True)
class Outcome:
    rel: str
    status: str  # done | skipped | missing (not in --data-root) | failed
    frames: int = 0
    bytes: int = 0
    reason: str = ""


def target_path(out_root: str, rel: str, fmt: str) -> str:
    """Where the loader will look: frames -> the path without extension (VideoEntry.video_path), mp4 -> same."""
    return os.path.join(out_root, os.path.splitext(rel)[0] if fmt == "frames" else rel)


def list_videos(data_root: str, lists: list[str], video_ext: str, exclude: str = "") -> list[str]:
    """Relative paths of the videos named by split lists, or of every video file under `data_root` (except
    under `exclude`, the output folder when it lies inside the data root)."""
    if lists:
        rels = []
        for list_file in lists:
            for entry in parse_split_file(list_file):
                rels.append(os.path.relpath(entry.video_path(data_root, video_ext), data_root))
        return list(dict.fromkeys(rels))
    found = []
    for folder, subfolders, files in os.walk(data_root):
        subfolders[:] = [d for d in subfolders if os.path.abspath(os.path.join(folder, d)) != os.path.abspath(exclude)]
        found += [os.path.relpath(os.path.join(folder, f), data_root) for f in files
                  if f.lower().endswith(VIDEO_EXTENSIONS)]
    return sorted(found)


def _size_on_disk(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def _even(size: tuple[int, int]) -> tuple[int, int]:
    return size[0] - size[0] % 2, size[1] - size[1] % 2  # yuv420p needs even sides


def _decoded_frames(source: str, short_side: int, even: bool, squash: int = 0):
    """RGB frames of `source` from its first, at most `short_side` on the short side, or squashed to `squash` x
    `squash` with the lineage's rule (datasets/transforms.py:squash_crop, rounded to uint8); yields (frame, size,
    fps)."""
    import av

    if not os.path.isfile(source):
        raise BadVideoError(source, "missing")
    with av.open(source) as container:
        if not container.streams.video:
            raise BadVideoError(source, "unreadable", "no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # the pool already uses every core
        width, height = stream.codec_context.width, stream.codec_context.height
        size = resized_size(width, height, short_side) if min(width, height) > short_side > 0 else (width, height)
        size = _even(size) if even else size
        fps = stream.average_rate or 25
        for frame in container.decode(stream):
            if squash:
                yield squashed(rgb24(frame), squash), (squash, squash), fps
            else:
                yield rgb24(frame, width=size[0], height=size[1], interpolation="AREA"), size, fps


def squashed(rgb, side: int):
    """uint8 [h, w, 3] -> [side, side, 3] resized with the loader's squash rule (bilinear, half-pixel centres, no
    antialiasing: datasets/transforms.py:squash_crop, within float rounding), rounded to the nearest level."""
    import torch
    import torch.nn.functional as F

    video = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()  # [1, 3, h, w]
    out = F.interpolate(video, size=(side, side), mode="bilinear", align_corners=False)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _one_thread() -> None:
    """Pool workers: one torch thread each (the pool already uses every core; more threads only contend)."""
    import torch

    torch.set_num_threads(1)


def _write_frames(source: str, partial: str, short_side: int, quality: int, squash: int) -> int:
    from PIL import Image

    os.makedirs(partial)
    count, rate = 0, None
    for count, (rgb, _, fps) in enumerate(_decoded_frames(source, short_side, even=False, squash=squash), start=1):
        Image.fromarray(rgb).save(os.path.join(partial, f"img_{count:05d}.jpg"), quality=quality)
        rate = fps
    if rate is not None:  # the clip window of DATA.FRAME_SAMPLING clip scales with it (datasets/sampling.py)
        write_frames_fps(partial, float(rate))
    return count


def _write_mp4(source: str, partial: str, short_side: int, gop: int, crf: int, squash: int) -> int:
    import av

    count, stream = 0, None
    with av.open(partial, "w", format="mp4") as out:
        for rgb, size, fps in _decoded_frames(source, short_side, even=True, squash=squash):
            count += 1
            if stream is None:
                stream = out.add_stream("libx264", rate=fps, options={
                    "crf": str(crf), "preset": "veryfast", "g": str(gop), "bf": "0", "threads": "1"})
                stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        if stream is not None:
            out.mux(stream.encode())
    return count


def convert(job: Job, fmt: str, short_side: int, quality: int = 90, gop: int = 1, crf: int = 20,
            squash: int = 0) -> Outcome:
    """Convert one video (skipped if its output exists); never raises, a failure is an Outcome with a reason."""
    if os.path.exists(job.target):
        return Outcome(job.rel, "skipped", bytes=_size_on_disk(job.target))
    if not os.path.isfile(job.source):  # a partial download: reported apart, and no folder is made for it
        return Outcome(job.rel, "missing")
    partial = job.target + ".partial"
    parent = os.path.dirname(job.target) or "."
    made = not os.path.isdir(parent)
    try:
        _remove(partial)  # left by an interrupted run
        os.makedirs(parent, exist_ok=True)
        if fmt == "frames":
            count = _write_frames(job.source, partial, short_side, quality, squash)
        else:
            count = _write_mp4(job.source, partial, short_side, gop, crf, squash)
        if count == 0:
            raise BadVideoError(job.source, "empty", "0 decodable frames")
        os.rename(partial, job.target)
        return Outcome(job.rel, "done", count, _size_on_disk(job.target))
    except Exception as e:  # one broken video must not stop the others; its reason goes into the summary
        _remove(partial)
        if made and os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)  # no empty class folder for a class whose only video failed
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        text = re.sub(r"^\[Errno -?\d+\] ", "", text)  # PyAV's FFmpeg error numbers say nothing more
        return Outcome(job.rel, "failed", reason=text[:300])


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def _convert_star(args) -> Outcome:
    return convert(*args)


def split_lists(anno_dir: str) -> list[str]:
    """The `<split>_few_shot.txt` files present in `anno_dir`."""
    lists = [split_files(anno_dir, s)[0] for s in SPLITS if os.path.isfile(split_files(anno_dir, s)[0])]
    if not lists:
        raise ArgumentError(f"{anno_dir}: no {{train,val,test}}_few_shot.txt here (pass --anno-dir of a benchmark's "
                            f"split lists, --lists FILES, or neither to convert every video under --data-root)")
    return lists


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True, help="DATA.DATA_ROOT_DIR of the raw videos")
    p.add_argument("--out", required=True, help="new data root (same relative layout)")
    p.add_argument("--anno-dir", default="", help="DATA.ANNO_DIR: convert the videos of its split lists")
    p.add_argument("--lists", nargs="+", default=[], help="split list files (instead of --anno-dir)")
    p.add_argument("--video-ext", default=".mp4", help="DATA.VIDEO_EXT for '<split><id>/<video id>' lines")
    p.add_argument("--format", choices=("frames", "mp4"), default="frames", help="JPEG folders or short-GOP mp4")
    p.add_argument("--short-side", type=non_negative_int, default=DEFAULT_SHORT_SIDE,
                   help="shrink larger videos to this short side (never enlarge; 0 keeps every size)")
    p.add_argument("--squash", type=non_negative_int, default=0,
                   help="squash every frame to this square side (the lineage's DATA.RESIZE_MODE squash at a fixed "
                        "scale, e.g. 256): views become exact crops, read as uint8 (0: keep the aspect ratio)")
    p.add_argument("--quality", type=positive_int, default=90, help="JPEG quality 1-95 (frames)")
    p.add_argument("--gop", type=positive_int, default=1, help="frames between key frames (mp4)")
    p.add_argument("--crf", type=non_negative_int, default=20, help="H.264 constant rate factor (mp4)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="parallel processes")
    args = p.parse_args(argv)
    if not os.path.isdir(args.data_root):
        raise ArgumentError(f"{args.data_root}: --data-root is not a folder (pass the folder of the raw videos)")
    if os.path.abspath(args.out) == os.path.abspath(args.data_root):
        raise ArgumentError(f"{args.out}: --out is the data root (write the prepared videos to a new folder)")
    return args


@entry_point
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    lists = args.lists or (split_lists(args.anno_dir) if args.anno_dir else [])
    rels = list_videos(args.data_root, lists, args.video_ext, exclude=args.out)
    if not rels:
        raise ArgumentError(f"{args.data_root}: no videos found ({', '.join(VIDEO_EXTENSIONS)}; or pass --lists)")
    jobs = [(Job(os.path.join(args.data_root, rel), target_path(args.out, rel, args.format), rel), args.format,
             args.short_side, args.quality, args.gop, args.crf, args.squash) for rel in rels]
    # Two writers would delete each other's `.partial` folders mid-write and rename half-written ones as finished.
    with RunLock(args.out, name=PREPARE_LOCK, key="--out"):
        record_form(args)
        outcomes = convert_all(jobs, args)
    return summarize(outcomes, args)


def convert_all(jobs: list[tuple], args: argparse.Namespace) -> list[Outcome]:
    outcomes: list[Outcome] = []
    bar = tqdm(total=len(jobs), desc=f"prepare ({args.format})", unit="video", file=sys.stderr)
    if args.workers > 1:
        with multiprocessing.get_context("fork").Pool(args.workers, initializer=_one_thread) as pool:
            for outcome in pool.imap_unordered(_convert_star, jobs, chunksize=4):
                outcomes.append(outcome)
                bar.update()
    else:
        for job in jobs:
            outcomes.append(_convert_star(job))
            bar.update()
    bar.close()
    return outcomes


def record_form(args: argparse.Namespace) -> None:
    """Write `<out>/prepared.json` (what the loader checks against its view), refusing to resume into an output
    made with other settings: its finished videos would be mixed with differently made ones."""
    form = PreparedForm(args.format, args.short_side, args.squash)
    previous = read_prepared_form(args.out) if os.path.isdir(args.out) else None
    if previous is not None and previous != form:
        raise ArgumentError(f"{args.out}: prepared with {previous} already; rerun with the same settings or "
                            f"choose a new --out")
    if previous is None:
        write_prepared_form(args.out, form)


def summarize(outcomes: list[Outcome], args: argparse.Namespace) -> int:
    by = {s: [o for o in outcomes if o.status == s] for s in ("done", "skipped", "missing", "failed")}
    ready = by["done"] + by["skipped"]
    size = sum(o.bytes for o in ready)
    print(f"{len(outcomes)} videos: {len(by['done'])} converted, {len(by['skipped'])} already there (skipped), "
          f"{len(by['missing'])} not in {args.data_root}, {len(by['failed'])} failed; {size / 2**20:.1f} MiB in "
          f"{args.out}" + (f" ({size / len(ready) / 2**10:.0f} KiB per video)" if ready else ""))
    if by["missing"]:
        shown = ", ".join(o.rel for o in sorted(by["missing"], key=lambda o: o.rel)[:3])
        print(f"  missing: {len(by['missing'])} listed videos were never downloaded (e.g. {shown}); train on the "
              f"others with DATA.ON_MISSING_VIDEO drop")
    for o in sorted(by["failed"], key=lambda o: o.rel):
        print(f"  failed: {o.rel}: {o.reason}")
    if ready:
        extra = " DATA.FRAMES_FOLDER True" if args.format == "frames" else ""
        if args.squash:
            extra += (f" DATA.RESIZE_MODE squash DATA.TRAIN_JITTER_SCALES [{args.squash},{args.squash}] "
                      f"DATA.TEST_SCALE {args.squash}")
        print(f"use: DATA.DATA_ROOT_DIR {args.out}{extra}")
    return BadVideoError.exit_code if by["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
