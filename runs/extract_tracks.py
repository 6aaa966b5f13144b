"""Extract object tracks for VFAM: a detector on sampled frames, a maintained multi-object tracker over time.

    python runs/extract_tracks.py --split-file train_few_shot.txt [...] --data-root DIR --out TRACK_DIR
    python runs/extract_tracks.py --videos DIR --out TRACK_DIR --classes all --workers 4
    python runs/extract_tracks.py --detections detections.json --out TRACK_DIR      (precomputed detections)

Writes `<out>/<video id>.json` in the docs/design.md §4 track format (pixel boxes of the original video), atomically;
finished files are skipped on rerun. Only observed detections are written: a track's `frames` may have gaps (dropped
detections, `--frame-stride`); the episode loader interpolates inside a track's span. One tracker runs per label
(`--class-agnostic`: one for all); pieces of a track the online tracker split are joined afterwards (`--stitch-*`).
A track's label is its most frequent one; tracks are numbered by length x mean area x mean score, best first.

Detectors: `torchvision` (a torchvision.models.detection model with COCO classes; `--weights` a local state dict,
or DEFAULT to download) and `yolo` (Ultralytics, `--weights` a local .pt; needs `pip install ultralytics`).
`--classes person` for Kinetics/UCF/HMDB; `--classes all` for SSv2 (with a hand-capable YOLO model, or a list).
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import trackers
from tqdm import tqdm

if __package__ in (None, ""):  # `python runs/extract_tracks.py`: this repository's packages come first (a Hugging Face
    # `datasets` installed in the same environment must not shadow ours; see README, Layout)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.splits import parse_split_file  # noqa: E402
from datasets.tracking import FrameDets, clamp_tracks, track_detections  # noqa: E402
from datasets.tracks import write_track_file  # noqa: E402
from datasets.video import PyAVSource  # noqa: E402
from utils.errors import ArgumentError, entry_point  # noqa: E402
from utils.logger import get_logger, setup_logging  # noqa: E402
from utils.textfiles import read_text  # noqa: E402

logger = get_logger(__name__)

VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
TRACKERS = {"bytetrack": "ByteTrackTracker", "sort": "SORTTracker", "ocsort": "OCSORTTracker"}


@dataclass
class VideoJob:
    video_id: str
    path: str = ""  # video file (detector mode)
    detections: dict[str, Any] = field(default_factory=dict)  # precomputed entry (--detections mode)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("input (one of --split-file, --videos, --detections)")
    src.add_argument("--split-file", nargs="+", default=[], help="CLIP-FSAR split list(s)")
    src.add_argument("--data-root", default="", help="DATA.DATA_ROOT_DIR the split lists are relative to")
    src.add_argument("--video-ext", default=".mp4", help="extension of `<split><id>/<video id>` lines")
    src.add_argument("--videos", default="", help="a folder of videos (searched recursively)")
    src.add_argument("--detections", default="", help="precomputed detections JSON (with --split-file: its videos)")
    p.add_argument("--out", required=True, help="output folder (= DATA.TRACK_DIR)")
    p.add_argument("--detector", choices=("torchvision", "yolo"), default="torchvision")
    p.add_argument("--model", default="fasterrcnn_resnet50_fpn", help="torchvision detection model name")
    p.add_argument("--weights", default="", help="local weights file, or DEFAULT (torchvision download)")
    p.add_argument("--classes", default="person", help="comma-separated labels to keep, or 'all'")
    p.add_argument("--score-thresh", type=float, default=0.1, help="drop detections below this score")
    p.add_argument("--frame-stride", type=int, default=1, help="run the detector on every n-th frame")
    p.add_argument("--batch-size", type=int, default=8, help="frames per detector call")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--tracker", choices=sorted(TRACKERS), default="bytetrack")
    p.add_argument("--track-thresh", type=float, default=0.5, help="score that starts a track (ByteTrack: high/low)")
    p.add_argument("--match-iou", type=float, default=0.2, help="minimum IoU to associate a detection")
    p.add_argument("--lost-buffer", type=int, default=30, help="frames (at 30 fps) a lost track is kept")
    p.add_argument("--class-agnostic", action="store_true", help="one tracker for all labels (default: per label)")
    p.add_argument("--stitch-gap", type=int, default=5, help="join track pieces <= this many sampled frames apart")
    p.add_argument("--stitch-dist", type=float, default=1.0, help="... and <= this many box sizes apart")
    p.add_argument("--min-track-len", type=int, default=3, help="drop tracks with fewer detections")
    p.add_argument("--workers", type=int, default=1, help="parallel processes over videos")
    p.add_argument("--overwrite", action="store_true", help="redo videos whose track file exists")
    args = p.parse_args(argv)
    sources = [bool(args.videos), bool(args.detections), bool(args.split_file) and not args.detections]
    if sum(sources) != 1 or (sources[2] and not args.data_root):
        p.error("give exactly one input: --split-file with --data-root, --videos or --detections")
    if args.frame_stride < 1 or args.batch_size < 1 or args.workers < 1:
        p.error("--frame-stride, --batch-size and --workers must be >= 1")
    if not args.detections and not args.weights:
        p.error(f"--detector {args.detector} needs --weights (a local file, or DEFAULT to download)")
    for name in ("score_thresh", "track_thresh", "match_iou"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    check_inputs(args)
    return args


def check_inputs(args: argparse.Namespace) -> None:
    """Inputs that do not exist are errors (a missing folder must not become a successful run over 0 videos)."""
    folders = [("--videos", args.videos), ("--data-root", args.data_root if args.split_file else "")]
    for flag, folder in folders:
        if folder and not os.path.isdir(folder):
            raise ArgumentError(f"{folder}: {flag} folder not found")
    for flag, path in [("--detections", args.detections)] + [("--split-file", f) for f in args.split_file]:
        if path and not os.path.isfile(path):
            raise ArgumentError(f"{path}: {flag} file not found")
    if args.weights and args.weights != "DEFAULT" and not args.detections and not os.path.isfile(args.weights):
        raise ArgumentError(f"{args.weights}: --weights file not found (a local weights file, or DEFAULT to download)")


# ---------------------------------------------------------------------------------------------- inputs
def list_jobs(args: argparse.Namespace) -> list[VideoJob]:
    """The videos to process, in a stable order."""
    entries = [e for path in args.split_file for e in parse_split_file(path)]
    if args.detections:
        try:
            dets = json.loads(read_text(args.detections, "detections file", ArgumentError))
        except json.JSONDecodeError as e:
            raise ArgumentError(f"{args.detections}: invalid JSON ({e.msg} at line {e.lineno} column "
                                f"{e.colno})") from None
        if not isinstance(dets, dict):
            raise ArgumentError(f"{args.detections}: expected an object of video id -> detections")
        wanted = {e.video_id for e in entries} if entries else set(dets)
        missing = sorted(wanted - set(dets))
        if missing:
            logger.warning("%d split videos have no entry in %s (e.g. %s)", len(missing), args.detections,
                           missing[0])
        return [VideoJob(vid, detections=dets[vid]) for vid in sorted(wanted & set(dets))]
    if entries:
        return [VideoJob(e.video_id, e.video_path(args.data_root, args.video_ext)) for e in entries]
    jobs = []
    for root, _, files in os.walk(args.videos):
        for name in files:
            if os.path.splitext(name)[1].lower() in VIDEO_EXTS:
                path = os.path.join(root, name)
                rel = os.path.splitext(os.path.relpath(path, args.videos))[0]
                jobs.append(VideoJob(rel.replace(os.sep, "/"), path))
    return sorted(jobs, key=lambda j: j.video_id)


def _keep(dets: FrameDets, classes: set[str] | None, score_thresh: float) -> FrameDets:
    """The detections above the score threshold whose label passes the class filter (None = all)."""
    boxes, scores, labels = dets
    keep = [i for i, lab in enumerate(labels) if scores[i] >= score_thresh and (not classes or lab.lower() in classes)]
    return boxes[keep].reshape(-1, 4), scores[keep], [labels[i] for i in keep]


# ---------------------------------------------------------------------------------------------- detectors
def check_detector(args: argparse.Namespace) -> None:
    """Before anything is written: the detector can be built here. A torchvision model's released weights
    (`--weights DEFAULT` or a weights name) are fetched into torch's hub cache once, by this process (the workers
    then read the cache); offline without them is one line naming the flag, not a urllib traceback."""
    if args.detections:
        return
    if args.detector == "yolo":
        if importlib.util.find_spec("ultralytics") is None:
            raise ArgumentError("--detector yolo: needs the ultralytics package (pip install ultralytics)")
        return
    from torchvision.models import get_model_weights

    try:
        weights_enum = get_model_weights(args.model)
    except (KeyError, ValueError):
        raise ArgumentError(f"--model {args.model}: not a torchvision detection model") from None
    if args.weights != "DEFAULT" and args.weights not in weights_enum.__members__:
        return  # a local state dict (check_inputs found the file)
    url = (weights_enum.DEFAULT if args.weights == "DEFAULT" else weights_enum[args.weights]).url
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    file = os.path.basename(url)
    if os.path.isfile(os.path.join(folder, file)):
        return
    os.makedirs(folder, exist_ok=True)
    hash_prefix = torch.hub.HASH_REGEX.search(file)  # what torchvision's own download checks
    try:
        torch.hub.download_url_to_file(url, os.path.join(folder, file), hash_prefix[1] if hash_prefix else None,
                                       progress=False)
    except (OSError, RuntimeError, ValueError) as e:  # urllib's URLError/HTTPError, a hash mismatch
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ArgumentError(f"--weights {args.weights}: torchvision's {args.model} weights ({file}) are not in "
                            f"{folder} and could not be downloaded from {url} ({why}) (offline: copy {file} there "
                            f"and run again, or give --weights a local state dict of {args.model})") from None


class TorchvisionDetector:
    """A torchvision detection model (COCO classes) on batches of RGB uint8 frames."""

    def __init__(self, model: str, weights: str, device: str) -> None:
        from torchvision.models import get_model, get_model_weights

        self.device = device
        try:
            weights_enum = get_model_weights(model)
        except (KeyError, ValueError):
            raise ArgumentError(f"--model {model}: not a torchvision detection model") from None
        # The category names ship with torchvision's code (no download), COCO order = the model's label ids.
        self.categories = weights_enum.DEFAULT.meta["categories"]
        if weights == "DEFAULT" or weights in weights_enum.__members__:
            self.model = get_model(model, weights=weights)
        else:
            if not os.path.isfile(weights):
                raise ArgumentError(f"{weights}: --weights file not found (state dict of {model}, or DEFAULT)")
            self.model = get_model(model, weights=None, weights_backbone=None, num_classes=len(self.categories))
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        self.model.eval().to(device)

    def __call__(self, frames: np.ndarray) -> list[FrameDets]:
        images = [torch.from_numpy(f).to(self.device).permute(2, 0, 1).float().div_(255) for f in frames]
        with torch.inference_mode():
            outputs = self.model(images)
        return [(o["boxes"].float().cpu().numpy(), o["scores"].float().cpu().numpy(),
                 [self.categories[int(i)] for i in o["labels"]]) for o in outputs]


class YoloDetector:
    """An Ultralytics YOLO model from a local weights file (imported only when chosen)."""

    def __init__(self, weights: str, device: str, score_thresh: float) -> None:
        try:
            from ultralytics import YOLO
        except ImportError:
            raise ArgumentError("--detector yolo: needs the ultralytics package (pip install ultralytics)") from None
        if not os.path.isfile(weights):
            raise ArgumentError(f"{weights}: --weights YOLO weights file not found")
        self.model, self.score_thresh = YOLO(weights), score_thresh
        self.device = "cpu" if device == "cpu" else device.replace("cuda:", "").replace("cuda", "0")

    def __call__(self, frames: np.ndarray) -> list[FrameDets]:
        # Ultralytics reads numpy images as BGR (OpenCV order); the reader gives RGB.
        results = self.model.predict([np.ascontiguousarray(f[..., ::-1]) for f in frames], device=self.device,
                                     conf=self.score_thresh, verbose=False)
        return [(r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy(),
                 [r.names[int(c)] for c in r.boxes.cls.cpu().numpy()]) for r in results]


# ---------------------------------------------------------------------------------------------- tracking
def build_tracker(args: argparse.Namespace, fps: float) -> Any:
    """A fresh tracker of the `trackers` package; options it does not take are left at its defaults."""
    cls = getattr(trackers, TRACKERS[args.tracker])
    wanted = {"lost_track_buffer": args.lost_buffer, "frame_rate": fps, "minimum_consecutive_frames": 2,
              "track_activation_threshold": args.track_thresh, "high_conf_det_threshold": args.track_thresh,
              "minimum_iou_threshold": args.match_iou}
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in wanted.items() if k in accepted})


# ---------------------------------------------------------------------------------------------- per video
_WORKER: dict[str, Any] = {}


def _init_worker(args: argparse.Namespace, num_threads: int) -> None:
    names = args.classes.strip().lower()
    classes = None if names == "all" else {c.strip() for c in names.split(",") if c.strip()}
    _WORKER.update(args=args, classes=classes, detector=None)
    if not args.detections:
        torch.set_num_threads(num_threads)
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        _WORKER["detector"] = (TorchvisionDetector(args.model, args.weights, device) if args.detector == "torchvision"
                               else YoloDetector(args.weights, device, args.score_thresh))


def _decode_and_detect(path: str, args: argparse.Namespace) -> tuple[dict[str, Any], Iterator]:
    """Open a video; return its header and a lazy stream of (frame index, detections) for the sampled frames.

    Frames come from the training loader's own exact reader (datasets/video.py, PyAV): a track's frame numbers must
    be the frames the loader returns for those numbers (decord returns others in MPEG-4 and H.264 AVI)."""
    import av

    video = PyAVSource().open(path, 0)
    with av.open(path) as container:
        rate = container.streams.video[0].average_rate
    header = {"num_frames": video.num_frames, "width": video.width, "height": video.height,
              "fps": float(rate) if rate else 30.0}
    indices = list(range(0, video.num_frames, args.frame_stride))

    def stream() -> Iterator[tuple[int, FrameDets]]:
        for start in range(0, len(indices), args.batch_size):
            chunk = indices[start:start + args.batch_size]
            yield from zip(chunk, _WORKER["detector"](video.frames(chunk)), strict=True)  # [n,H,W,3] uint8 RGB

    return header, stream()


def _precomputed(entry: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], Iterator]:
    """A --detections entry as a header and a stream of (frame index, detections) for the sampled frames."""
    header = {"num_frames": int(entry["num_frames"]), "width": int(entry["width"]), "height": int(entry["height"]),
              "fps": float(entry.get("fps", 30.0))}
    frames = entry["frames"]
    return header, ((f, (np.array([d["box"] for d in frames[f]], dtype=np.float64).reshape(-1, 4),
                         np.array([d["score"] for d in frames[f]], dtype=np.float64),
                         [str(d["label"]) for d in frames[f]])) for f in range(0, len(frames), args.frame_stride))


def process_video(job: VideoJob) -> tuple[str, str, int]:
    """Track one video and write its file: (video id, "done"|"skipped"|"failed: why", number of tracks)."""
    args, classes = _WORKER["args"], _WORKER["classes"]
    out_path = os.path.join(args.out, job.video_id + ".json")
    if os.path.isfile(out_path) and not args.overwrite:
        with open(out_path, encoding="utf-8") as f:
            return job.video_id, "skipped", len(json.load(f)["tracks"])
    try:
        header, stream = _precomputed(job.detections, args) if args.detections else \
            _decode_and_detect(job.path, args)
        kept = ((frame, _keep(dets, classes, args.score_thresh)) for frame, dets in stream)
        tracks = track_detections(kept, lambda: build_tracker(args, header["fps"] / args.frame_stride),
                                  args.min_track_len, args.track_thresh, args.stitch_gap * args.frame_stride,
                                  args.stitch_dist, args.class_agnostic)
    except (OSError, RuntimeError, KeyError, ValueError, IndexError, TypeError) as e:  # BadVideoError included
        return job.video_id, f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", 0
    detector = (f"precomputed:{os.path.basename(args.detections)}" if args.detections else
                f"{args.detector}:{args.model if args.detector == 'torchvision' else os.path.basename(args.weights)}")
    record = {"video": job.video_id, "num_frames": header["num_frames"], "width": header["width"],
              "height": header["height"], "tracks": clamp_tracks(tracks, header["width"], header["height"]),
              "detector": detector, "tracker": f"trackers.{TRACKERS[args.tracker]}"}
    write_track_file(out_path, record)
    return job.video_id, "done", len(tracks)


# ---------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict[str, Any]:
    """Process every video (in parallel with --workers); return the summary."""
    jobs = list_jobs(args)
    if not jobs:
        source = args.videos or args.detections or ", ".join(args.split_file)
        raise ArgumentError(f"{source}: selects no videos (extensions searched: {', '.join(VIDEO_EXTS)})")
    check_detector(args)
    os.makedirs(args.out, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    if args.workers == 1:
        _init_worker(args, threads)
        results = [process_video(j) for j in tqdm(jobs, desc="tracks", unit="video")]
    else:
        # Detector workers use CUDA/OpenMP, which are not fork-safe: spawn them. Precomputed detections need
        # neither, and forking skips re-importing the project in every worker.
        method = "fork" if args.detections and "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(args.workers, _init_worker, (args, threads)) as pool:
            results = list(tqdm(pool.imap_unordered(process_video, jobs), total=len(jobs), desc="tracks",
                                unit="video"))
    counts = [n for _, status, n in results if not status.startswith("failed")]
    failed = [(vid, status) for vid, status, _ in results if status.startswith("failed")]
    for vid, status in failed:
        logger.warning("%s: %s", vid, status)
    return {"videos": len(jobs), "written": sum(s == "done" for _, s, _ in results),
            "skipped": sum(s == "skipped" for _, s, _ in results), "failed": failed,
            "empty": sum(n == 0 for n in counts), "tracks_mean": float(np.mean(counts)) if counts else 0.0,
            "tracks_min": min(counts, default=0), "tracks_max": max(counts, default=0)}


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    s = run(args)
    print(f"extract_tracks: {s['videos']} videos -> {args.out}: {s['written']} written, {s['skipped']} already "
          f"done, {len(s['failed'])} failed; tracks per video mean {s['tracks_mean']:.1f} (min {s['tracks_min']}, "
          f"max {s['tracks_max']}); {s['empty']} videos without tracks")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
