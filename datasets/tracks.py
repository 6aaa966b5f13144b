"""Track files (docs/design.md §4): reading, validation, ranking and per-frame entity boxes.

`DATA.TRACK_DIR/<video id>.json`:
`{"video": id, "num_frames": n, "width": w, "height": h, "tracks": [{"id": int, "label": str,
"frames": [int...], "boxes": [[x1, y1, x2, y2]...], "scores": [float...]}], "detector": str, "tracker": str}`
with pixel boxes of the original video. A missing file means "no entities": every slot is masked.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from numbers import Real
from typing import Sequence

import numpy as np
import torch

from utils.atomic import atomic_write
from utils.errors import UserError
from utils.logger import get_logger
from utils.textfiles import read_text

logger = get_logger(__name__)


class TrackFileError(UserError, ValueError):
    """A malformed track file or one that does not match its video; one line naming the file."""

    exit_code = 6
    family = "track"


@dataclass(frozen=True)
class Track:
    id: int
    label: str
    frames: np.ndarray  # [n] int, strictly increasing
    boxes: np.ndarray  # [n, 4] float pixels (x1, y1, x2, y2)
    scores: np.ndarray  # [n] float


@dataclass(frozen=True)
class TrackFile:
    video: str
    num_frames: int
    width: int
    height: int
    tracks: list[Track]
    detector: str = ""
    tracker: str = ""
    clamped_boxes: int = 0  # boxes that reached past the frame and were clamped to it (logged at load)


def track_path(track_dir: str, video_id: str) -> str:
    return os.path.join(track_dir, video_id + ".json")


def _positive_int(data: dict, key: str, path: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise TrackFileError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return value


def _parse_track(raw: object, k: int, num_frames: int, width: int, height: int, path: str) -> tuple[Track, int]:
    """One validated track and the number of its boxes clamped to the frame."""
    where = f"{path}: tracks[{k}]"
    if not isinstance(raw, dict):
        raise TrackFileError(f"{where} must be an object, got {type(raw).__name__}")
    for key in ("id", "frames", "boxes", "scores"):
        if key not in raw:
            raise TrackFileError(f"{where} has no '{key}'")
    if not isinstance(raw["id"], int) or isinstance(raw["id"], bool):
        raise TrackFileError(f"{where}: 'id' must be an integer, got {raw['id']!r}")
    frames, boxes, scores = raw["frames"], raw["boxes"], raw["scores"]
    if not (isinstance(frames, list) and isinstance(boxes, list) and isinstance(scores, list)):
        raise TrackFileError(f"{where}: 'frames', 'boxes' and 'scores' must be lists")
    if not (len(frames) == len(boxes) == len(scores)) or not frames:
        raise TrackFileError(f"{where}: frames/boxes/scores lengths differ or are empty "
                             f"({len(frames)}/{len(boxes)}/{len(scores)})")
    if not all(isinstance(f, int) and not isinstance(f, bool) for f in frames):
        raise TrackFileError(f"{where}: 'frames' must be integers")
    frames_a = np.asarray(frames, dtype=np.int64)
    if frames_a[0] < 0 or frames_a[-1] >= num_frames or np.any(np.diff(frames_a) <= 0):
        raise TrackFileError(f"{where}: 'frames' must increase strictly within 0..{num_frames - 1}")
    if not all(isinstance(b, list) and len(b) == 4 and all(isinstance(v, Real) for v in b) for b in boxes):
        raise TrackFileError(f"{where}: each box must be [x1, y1, x2, y2] numbers")
    boxes_a = np.asarray(boxes, dtype=np.float64)
    inverted = np.flatnonzero((boxes_a[:, 2] < boxes_a[:, 0]) | (boxes_a[:, 3] < boxes_a[:, 1]))
    if len(inverted):
        raise TrackFileError(f"{where}: boxes[{inverted[0]}] {boxes[inverted[0]]} is inverted (need x2 >= x1 and "
                             f"y2 >= y1)")
    # Trackers extrapolate boxes a little past the border: those are clamped (and counted); a box with nothing
    # left inside the frame is wrong data.
    clamped = np.clip(boxes_a, 0.0, [width, height, width, height])
    outside = np.flatnonzero((boxes_a[:, 2] < 0) | (boxes_a[:, 3] < 0) | (boxes_a[:, 0] > width)
                             | (boxes_a[:, 1] > height))
    if len(outside):
        raise TrackFileError(f"{where}: boxes[{outside[0]}] {boxes[outside[0]]} lies outside the {width}x{height} "
                             f"frame")
    if not all(isinstance(s, Real) for s in scores):
        raise TrackFileError(f"{where}: 'scores' must be numbers")
    track = Track(raw["id"], str(raw.get("label", "")), frames_a, clamped, np.asarray(scores, dtype=np.float64))
    return track, int(np.any(clamped != boxes_a, axis=1).sum())


def _no_constant(path: str):
    """JSON's NaN/Infinity extensions: a box or score that is not a number is refused, not silently masked."""
    def refuse(name: str):
        raise TrackFileError(f"{path}: {name} in the file (boxes and scores must be finite numbers)")
    return refuse


def load_track_file(path: str, video_id: str | None = None) -> TrackFile:
    """Read and validate a track file; any problem is a TrackFileError naming `path`."""
    try:
        data = json.loads(read_text(path, "track file", TrackFileError), parse_constant=_no_constant(path))
    except json.JSONDecodeError as e:
        raise TrackFileError(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise TrackFileError(f"{path}: top level must be an object, got {type(data).__name__}")
    if video_id is not None and data.get("video") != video_id:
        raise TrackFileError(f"{path}: 'video' is {data.get('video')!r}, expected {video_id!r}")
    num_frames = _positive_int(data, "num_frames", path)
    width, height = _positive_int(data, "width", path), _positive_int(data, "height", path)
    if not isinstance(data.get("tracks"), list):
        raise TrackFileError(f"{path}: 'tracks' must be a list")
    parsed = [_parse_track(raw, k, num_frames, width, height, path) for k, raw in enumerate(data["tracks"])]
    tracks = [track for track, _ in parsed]
    clamped = sum(n for _, n in parsed)
    if clamped:
        logger.warning("%s: %d boxes reached past the %dx%d frame and were clamped to it", path, clamped, width,
                       height)
    ids = [t.id for t in tracks]
    if len(set(ids)) != len(ids):
        raise TrackFileError(f"{path}: track ids are not unique: {sorted(ids)}")
    return TrackFile(str(data.get("video", "")), num_frames, width, height, tracks,
                     str(data.get("detector", "")), str(data.get("tracker", "")), clamped_boxes=clamped)


def write_track_file(path: str, record: dict) -> None:
    """Write a track file (the format above) atomically; it is validated by reading it back, so a writer can never
    produce a file the loader refuses."""
    atomic_write(path, lambda f: json.dump(record, f, separators=(",", ":")), binary=False, fsync=False)
    load_track_file(path, record.get("video"))


def track_rank_score(track: Track, width: int, height: int) -> float:
    """length x mean normalised area x mean score: long, large, confident tracks first."""
    areas = (track.boxes[:, 2] - track.boxes[:, 0]) * (track.boxes[:, 3] - track.boxes[:, 1]) / (width * height)
    return float(len(track.frames) * areas.mean() * track.scores.mean())


def rank_tracks(track_file: TrackFile, k: int) -> list[Track]:
    """The top `k` tracks by `track_rank_score` (ties by track id, so the order is stable)."""
    scored = [(-track_rank_score(t, track_file.width, track_file.height), t.id, t) for t in track_file.tracks]
    return [t for _, _, t in sorted(scored, key=lambda x: (x[0], x[1]))[:k]]


def boxes_at_frames(track_file: TrackFile | None, frame_indices: Sequence[int],
                    k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Entity boxes at the sampled frames, normalised to the original frame (0..1).

    Slot j holds the j-th ranked track in every frame (identity kept). Between two detections of a track
    the box is interpolated linearly; outside the track's span the slot is masked.
    Returns boxes [T, K, 4] float32 and mask [T, K] bool; no file (None) = all masked.
    """
    t = len(frame_indices)
    boxes = np.zeros((t, k, 4), dtype=np.float64)
    mask = np.zeros((t, k), dtype=bool)
    if track_file is not None:
        query = np.asarray(frame_indices, dtype=np.float64)
        norm = np.array([track_file.width, track_file.height] * 2, dtype=np.float64)
        for slot, track in enumerate(rank_tracks(track_file, k)):
            inside = (query >= track.frames[0]) & (query <= track.frames[-1])
            for c in range(4):
                boxes[:, slot, c] = np.interp(query, track.frames, track.boxes[:, c]) / norm[c]
            mask[:, slot] = inside
    boxes *= mask[..., None]
    return torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(mask)


def check_track_matches(track_file: TrackFile, path: str, num_frames: int, width: int, height: int) -> None:
    """The track file must describe this video: same frame count and the same aspect ratio.

    A different resolution with the same aspect is fine (boxes are used normalised), e.g. tracks
    extracted from a downscaled copy.
    """
    if track_file.num_frames != num_frames:
        raise TrackFileError(f"{path}: num_frames {track_file.num_frames} does not match the video's {num_frames}")
    aspect_file, aspect_video = track_file.width / track_file.height, width / height
    if abs(aspect_file / aspect_video - 1.0) > 0.02:
        raise TrackFileError(f"{path}: frame size {track_file.width}x{track_file.height} does not match the "
                             f"video's {width}x{height}")


class TrackReader:
    """The dataset's track strategy (VFAM): each video's validated track file from `track_dir`, kept in a bounded
    cache (SSv2 has ~70k videos per worker), and its boxes at the sampled frames."""

    def __init__(self, track_dir: str, max_entities: int, capacity: int = 4096):
        self.track_dir, self.max_entities, self.capacity = track_dir, max_entities, capacity
        self._cache: OrderedDict[str, TrackFile] = OrderedDict()

    def track_file(self, video_id: str, num_frames: int, width: int, height: int) -> TrackFile | None:
        """The video's track file, checked against the decoded video, or None when there is none."""
        path = track_path(self.track_dir, video_id)
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        if not os.path.isfile(path):
            return None
        track_file = load_track_file(path, video_id)
        check_track_matches(track_file, path, num_frames, width, height)
        self._cache[path] = track_file
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return track_file

    def boxes(self, video_id: str, indices: Sequence[int], num_frames: int, width: int,
              height: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(boxes [T, K, 4] normalised to the frame, mask [T, K], whether the video has no track file)."""
        track_file = self.track_file(video_id, num_frames, width, height)
        boxes, mask = boxes_at_frames(track_file, indices, self.max_entities)
        return boxes, mask, track_file is None
