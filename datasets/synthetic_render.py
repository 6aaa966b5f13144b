"""Drawing one synthetic video: entity paths, frames, ground-truth boxes, noisy detections, mp4 writing.

Everything is drawn with numpy from a `numpy.random.Generator` seeded per video, so a video is a
pure function of (seed, class, video number) and videos can be generated in any order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Translations move the entity by MOVE_FRAC of the frame; grow/shrink change its size by GROW_FACTOR.
MOTIONS = {
    "left": (-1.0, 0.0, 0.0), "right": (1.0, 0.0, 0.0), "up": (0.0, -1.0, 0.0), "down": (0.0, 1.0, 0.0),
    "grow": (0.0, 0.0, 1.0), "shrink": (0.0, 0.0, -1.0),
}
MOVE_FRAC = 0.34
BASE_RADIUS_FRAC = 0.08
GROW_FACTOR = 1.8


@dataclass
class EntityPath:
    """One entity over the video: name, look, centre and half-size per frame."""

    name: str  # "red circle"
    shape: str  # circle | square | triangle
    colour: tuple[int, int, int]
    centres: np.ndarray  # [F, 2] pixels (x, y)
    radii: np.ndarray  # [F] pixels

    def boxes(self, size: int) -> np.ndarray:
        """Tight [F, 4] pixel boxes (x1, y1, x2, y2), clipped to the frame."""
        r = self.radii
        cx, cy = self.centres[:, 0], self.centres[:, 1]
        if self.shape == "square":
            half_w = top = bottom = 0.85 * r
        elif self.shape == "triangle":
            half_w, top, bottom = r, r, 0.8 * r
        else:
            half_w = top = bottom = r
        boxes = np.stack([cx - half_w, cy - top, cx + half_w, cy + bottom], axis=1)
        return np.clip(boxes, 0, size)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def program_offsets(program: tuple[str, ...], frames: int, size: int, rng: np.random.Generator,
                    amplitude: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Offsets [F, 2] and size factors [F] for a sequence of motions, one phase each, eased in and out.

    Phases split the span [start, end] (random margins at both ends, a jittered boundary), so the
    order of the motions is what separates "left then up" from "up then left".
    """
    t = np.arange(frames, dtype=np.float64)
    last = frames - 1
    start, end = rng.uniform(0.0, 0.15) * last, rng.uniform(0.85, 1.0) * last
    bounds = np.linspace(start, end, len(program) + 1)
    bounds[1:-1] += rng.uniform(-0.06, 0.06, len(program) - 1) * last
    offsets = np.zeros((frames, 2))
    log_scale = np.zeros(frames)
    for k, motion in enumerate(program):
        dx, dy, ds = MOTIONS[motion]
        progress = _smoothstep((t - bounds[k]) / max(bounds[k + 1] - bounds[k], 1e-6))
        offsets += progress[:, None] * np.array([dx, dy]) * MOVE_FRAC * size * amplitude
        log_scale += progress * ds * np.log(GROW_FACTOR) * amplitude
    # A shrinking entity starts large, so sizes stay within [1, GROW_FACTOR] x the base size.
    log_scale -= min(log_scale.min(), 0.0)
    return offsets, np.exp(log_scale)


def wander(frames: int, size: int, rng: np.random.Generator, amplitude: float = 0.03) -> np.ndarray:
    """A small smooth random drift [F, 2] (passive entities are not perfectly still)."""
    t = np.arange(frames, dtype=np.float64) / max(frames - 1, 1)
    freq = rng.uniform(0.5, 1.5, 2)
    phase = rng.uniform(0, 2 * np.pi, 2)
    return amplitude * size * np.sin(2 * np.pi * freq[None] * t[:, None] + phase[None])


def place(offsets: np.ndarray, radii: np.ndarray, size: int, rng: np.random.Generator,
          avoid: list[np.ndarray]) -> np.ndarray:
    """Pick a start so the whole path stays inside the frame, preferring starts away from others."""
    margin = radii.max() + 1.0
    low = margin - offsets.min(axis=0)
    high = size - margin - offsets.max(axis=0)
    high = np.maximum(high, low)
    best, best_gap = None, -1.0
    for _ in range(20):
        start = rng.uniform(low, high)
        gap = min((np.linalg.norm(start - a) for a in avoid), default=np.inf)
        if gap > best_gap:
            best, best_gap = start, gap
        if gap > 3.0 * radii[0]:
            break
    return best + offsets


def make_background(size: int, rng: np.random.Generator, clutter: int = 6) -> np.ndarray:
    """A static muted background: a colour gradient plus low-contrast blobs (clutter), float [S, S, 3]."""
    base = rng.uniform(45, 110, 3)
    ramp = np.linspace(-1, 1, size)[:, None, None] * rng.uniform(-18, 18, 3)[None, None]
    image = np.broadcast_to(base + ramp, (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for _ in range(clutter):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.05, 0.2, 2) * size
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        image[inside] = base + rng.normal(0, 16, 3)
    return image


def shape_mask(shape: str, cx: float, cy: float, r: float, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "triangle":  # apex up, base at 0.8 r below the centre
        return (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
    raise ValueError(f"unknown shape {shape!r}")


def render_frames(background: np.ndarray, entities: list[EntityPath], rng: np.random.Generator,
                  noise: float = 2.0) -> np.ndarray:
    """uint8 [F, S, S, 3]; entities drawn in list order (the actor last, on top)."""
    frames = len(entities[0].radii)
    size = background.shape[0]
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        canvas = background + noise * rng.standard_normal(background.shape, dtype=np.float32)
        for ent in entities:
            cx, cy, r = ent.centres[f, 0], ent.centres[f, 1], ent.radii[f]
            # Only the entity's bounding window is tested, so large frames stay cheap to draw.
            x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, size)
            y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, size)
            yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
            window = canvas[y0:y1, x0:x1]
            window[shape_mask(ent.shape, cx, cy, r, xx, yy)] = ent.colour
        out[f] = np.clip(canvas, 0, 255).astype(np.uint8)
    return out


def noisy_detections(entities: list[EntityPath], size: int, rng: np.random.Generator, drop: float = 0.15,
                     false_positive: float = 0.1) -> list[list[dict]]:
    """Per frame detector-like boxes: jittered, some dropped, occasional low-score false positives."""
    frames = len(entities[0].radii)
    gt = [ent.boxes(size) for ent in entities]
    out: list[list[dict]] = []
    for f in range(frames):
        dets = []
        for ent, boxes in zip(entities, gt, strict=True):
            if rng.random() < drop:
                continue
            box = boxes[f]
            jitter = rng.normal(0, 0.06, 4) * max(box[2] - box[0], box[3] - box[1])
            noisy = np.clip(box + jitter, 0, size)
            dets.append({"box": [round(float(v), 2) for v in noisy], "score": round(float(rng.uniform(0.6, 0.99)), 3),
                         "label": ent.shape})
        if rng.random() < false_positive:
            w = rng.uniform(0.06, 0.2) * size
            x, y = rng.uniform(0, size - w, 2)
            dets.append({"box": [round(float(v), 2) for v in (x, y, x + w, y + w)],
                         "score": round(float(rng.uniform(0.05, 0.35)), 3),
                         "label": str(rng.choice(["circle", "square", "triangle"]))})
        order = rng.permutation(len(dets))
        out.append([dets[i] for i in order])
    return out


def write_mp4(path: str, frames: np.ndarray, fps: int = 12) -> None:
    """H.264 mp4 with PyAV, byte-identical run to run.

    One encoder thread, and no lookahead decisions (B-frame placement, scene cuts, macroblock tree): with
    them x264 gave different bytes for the same frames in a few runs out of a hundred, as if reading uninitialised
    frame padding.
    """
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1",
                          "x264-params": "bframes=0:scenecut=0:rc-lookahead=0:mbtree=0"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
