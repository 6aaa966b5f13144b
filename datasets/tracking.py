"""Associating per-frame detections into tracks (used by runs/extract_tracks.py to write docs/design.md §4 track files).

`track_detections` runs an online tracker of the `trackers` package per label and then stitches the pieces it
split offline (`_stitch`); `clamp_tracks` keeps boxes inside the frame, as the track-file reader requires.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable

import numpy as np

FrameDets = tuple[np.ndarray, np.ndarray, list[str]]  # boxes [M,4] xyxy pixels, scores [M], labels


def track_detections(steps: Iterable[tuple[int, FrameDets]], make_tracker: Callable[[], Any], min_len: int = 3,
                     track_thresh: float = 0.5, stitch_gap: int = 5, stitch_dist: float = 1.0,
                     class_agnostic: bool = False) -> list[dict[str, Any]]:
    """Associate per-frame detections over time: [(frame index, detections)] -> track dicts (docs/design.md §4).

    One tracker per label (a person track never takes a cup's box) unless `class_agnostic`. Then `_stitch` joins
    what the online trackers split; confident detections they left unassigned (among them each track's first
    detection, which the trackers return without an id) take part as one-frame pieces.
    """
    import supervision as sv  # the trackers' detection container (only needed when tracking)

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


def clamp_tracks(tracks: list[dict[str, Any]], width: int, height: int) -> list[dict[str, Any]]:
    """Boxes clipped to the frame (online trackers extrapolate past the border)."""
    def clamp(box: list[float]) -> list[float]:
        x1, y1, x2, y2 = box
        return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width),
                min(max(y2, 0.0), height)]
    return [{**t, "boxes": [clamp(b) for b in t["boxes"]]} for t in tracks]
