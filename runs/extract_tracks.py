"""Extract object tracks for VFAM: a detector on sampled frames, a maintained multi-object tracker over time.

    python runs/extract_tracks.py --split-file train_few_shot.txt [...] --data-root DIR --out TRACK_DIR
    python runs/extract_tracks.py --videos DIR --out TRACK_DIR --classes all --workers 4
    python runs/extract_tracks.py --detections detections.json --out TRACK_DIR      (precomputed detections)

Writes `<out>/<video id>.json` in the DESIGN §4 track format (pixel boxes of the original video), atomically;
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
import inspect
import json
import multiprocessing as mp
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import decord
import numpy as np
import supervision as sv
import torch
import trackers
from tqdm import tqdm

if __package__ in (None, ""):  # `python runs/extract_tracks.py`: this repository's packages come first (a Hugging Face
    # `datasets` installed in the same environment must not shadow ours; see README, Layout)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.splits import parse_split_file  # noqa: E402
from utils.errors import ArgumentError, entry_point  # noqa: E402
from utils.logger import get_logger, setup_logging  # noqa: E402
from utils.textfiles import read_text  # noqa: E402

logger = get_logger(__name__)

VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
TRACKERS = {"bytetrack": "ByteTrackTracker", "sort": "SORTTracker", "ocsort": "OCSORTTracker"}
FrameDets = tuple[np.ndarray, np.ndarray, list[str]]  # boxes [M,4] xyxy pixels, scores [M], labels


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
class TorchvisionDetector:
    """A torchvision detection model (COCO classes) on batches of RGB uint8 frames."""

    def __init__(self, model: str, weights: str, device: str) -> None:
        from torchvision.models import get_model, get_model_weights

        self.device = device
        try:
            weights_enum = get_model_weights(model)
        except (KeyError, ValueError):
            sys.exit(f"extract_tracks: --model {model} is not a torchvision detection model")
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
        # Ultralytics reads numpy images as BGR (OpenCV order); decord gives RGB.
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


def track_detections(steps: Iterable[tuple[int, FrameDets]], make_tracker: Callable[[], Any], min_len: int = 3,
                     track_thresh: float = 0.5, stitch_gap: int = 5, stitch_dist: float = 1.0,
                     class_agnostic: bool = False) -> list[dict[str, Any]]:
    """Associate per-frame detections over time: [(frame index, detections)] -> track dicts (DESIGN §4).

    One tracker per label (a person track never takes a cup's box) unless `class_agnostic`. Then `_stitch` joins
    what the online trackers split; confident detections they left unassigned (among them each track's first
    detection, which the trackers return without an id) take part as one-frame pieces.
    """
    trackers: dict[str, Any] = {}
    tracks: dict[tuple[str, int], dict[str, list]] = {}
    pieces: list[dict[str, list]] = []
    for frame, (boxes, scores, labels) in steps:
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault("" if class_agnostic else label, []).append(i)
        for key in sorted(set(trackers) | set(groups)):  # every tracker sees every frame, even without boxes
            idx = groups.get(key, [])
            names = sorted({labels[i] for i in idx})
            dets = sv.Detections(xyxy=boxes[idx].astype(np.float32).reshape(-1, 4),
                                 confidence=scores[idx].astype(np.float32),
                                 class_id=np.array([names.index(labels[i]) for i in idx], dtype=int))
            out = trackers.setdefault(key, make_tracker()).update(dets)
            for box, score, cid, tid in zip(out.xyxy, out.confidence, out.class_id, out.tracker_id, strict=True):
                obs = {"frames": [frame], "boxes": [box], "scores": [score], "labels": [names[cid]]}
                if tid >= 0:
                    for name, value in obs.items():
                        tracks.setdefault((key, int(tid)), {n: [] for n in obs})[name] += value
                elif score >= track_thresh:
                    pieces.append(obs)
    pieces = [*tracks.values(), *pieces]
    while len(joined := _stitch(pieces, stitch_gap, stitch_dist)) < len(pieces):  # joined pieces bring a velocity
        pieces = joined
    result = []
    for t in pieces:
        if len(t["frames"]) >= min_len:
            b = np.array(t["boxes"], dtype=np.float64)
            rank = len(b) * float(np.mean((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))) * float(np.mean(t["scores"]))
            result.append((rank, {"label": Counter(t["labels"]).most_common(1)[0][0],
                                  "frames": [int(f) for f in t["frames"]],
                                  "boxes": [[round(float(v), 2) for v in box] for box in b],
                                  "scores": [round(float(s), 4) for s in t["scores"]]}))
    result.sort(key=lambda r: (-r[0], r[1]["frames"][0], r[1]["boxes"][0]))
    return [{"id": i, **t} for i, (_, t) in enumerate(result)]


def _stitch(pieces: list[dict[str, list]], max_gap: int, max_dist: float) -> list[dict[str, list]]:
    """Offline tracklet stitching: piece b continues piece a when b starts at most `max_gap` frames after a ends,
    has a's (majority) label, and its first box centre lies within `max_dist` box sizes of a's last centre, either
    where a stopped or where a's last velocity would have taken it.

    Online constant-velocity trackers lose small, fast or turning objects across dropped detections; looking at
    the whole video afterwards recovers them. Links are taken greedily, closest first, one successor per piece.
    """
    label = [Counter(p["labels"]).most_common(1)[0][0] for p in pieces]
    centre = lambda box: (np.asarray(box[:2], dtype=np.float64) + np.asarray(box[2:], dtype=np.float64)) / 2
    size = lambda box: np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1e-6))
    starts: dict[int, list[int]] = {}
    for j, p in enumerate(pieces):
        starts.setdefault(int(p["frames"][0]), []).append(j)
    links = []
    for i, a in enumerate(pieces):
        end = int(a["frames"][-1])
        velocity = 0.0 if len(a["frames"]) < 2 else \
            (centre(a["boxes"][-1]) - centre(a["boxes"][-2])) / (a["frames"][-1] - a["frames"][-2])
        for frame in range(end + 1, end + max_gap + 1):
            for j in starts.get(frame, []):
                moved = centre(pieces[j]["boxes"][0]) - centre(a["boxes"][-1])
                scale = (size(a["boxes"][-1]) + size(pieces[j]["boxes"][0])) / 2
                dist = min(np.linalg.norm(moved), np.linalg.norm(moved - velocity * (frame - end))) / scale
                if label[i] == label[j] and dist <= max_dist:
                    links.append((dist, i, j))
    after: dict[int, int] = {}
    followers: set[int] = set()
    for _, i, j in sorted(links):
        if i not in after and j not in followers:
            after[i] = j
            followers.add(j)
    chains = []
    for i in sorted(set(range(len(pieces))) - followers):
        chain = {name: list(values) for name, values in pieces[i].items()}
        while i in after:
            i = after[i]
            for name in chain:
                chain[name] += pieces[i][name]
        chains.append(chain)
    return chains


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
    """Open a video; return its header and a lazy stream of (frame index, detections) for the sampled frames."""
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    height, width = vr[0].shape[:2]
    header = {"num_frames": len(vr), "width": int(width), "height": int(height), "fps": vr.get_avg_fps() or 30.0}
    indices = list(range(0, len(vr), args.frame_stride))

    def stream() -> Iterator[tuple[int, FrameDets]]:
        for start in range(0, len(indices), args.batch_size):
            chunk = indices[start:start + args.batch_size]
            frames = vr.get_batch(chunk).asnumpy()  # [n,H,W,3] uint8 RGB
            yield from zip(chunk, _WORKER["detector"](frames), strict=True)

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
    except (OSError, RuntimeError, KeyError, ValueError, IndexError, TypeError, decord.DECORDError) as e:
        return job.video_id, f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", 0
    detector = (f"precomputed:{os.path.basename(args.detections)}" if args.detections else
                f"{args.detector}:{args.model if args.detector == 'torchvision' else os.path.basename(args.weights)}")
    record = {"video": job.video_id, "num_frames": header["num_frames"], "width": header["width"],
              "height": header["height"], "tracks": tracks, "detector": detector,
              "tracker": f"trackers.{TRACKERS[args.tracker]}"}
    write_json_atomic(record, out_path)
    return job.video_id, "done", len(tracks)


def write_json_atomic(obj: Any, path: str) -> None:
    """JSON to a temporary file in the same folder, then rename: readers never see a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, separators=(",", ":"))
        os.replace(tmp, path)
    finally:  # after a failure; after success `tmp` is gone
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict[str, Any]:
    """Process every video (in parallel with --workers); return the summary."""
    jobs = list_jobs(args)
    if not jobs:
        source = args.videos or args.detections or ", ".join(args.split_file)
        raise ArgumentError(f"{source}: selects no videos (extensions searched: {', '.join(VIDEO_EXTS)})")
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
