"""Frame and box transforms: short-side resize (done by the reader), crop, flip, normalise.

Augmentation parameters are drawn once per video from the episode's generator (`sample_view`) and
applied identically to the frames and to the entity boxes, so boxes stay on the entities they describe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from datasets.sampling import randint, uniform


@dataclass(frozen=True)
class ViewParams:
    """How one video is turned into network input: scale, crop position, flip."""

    short_side: int  # the reader resizes to this short side
    crop_size: int  # square crop
    x_frac: float  # crop offset as a fraction of the free space (0 = left, 0.5 = centre)
    y_frac: float
    flip: bool


def sample_view(generator: torch.Generator, train: bool, jitter_scales: Sequence[int], test_scale: int,
                crop_size: int, flip: bool) -> ViewParams:
    """Train: random short side in `jitter_scales`, random crop, random flip (if enabled); test: centre crop."""
    if not train:
        return ViewParams(test_scale, crop_size, 0.5, 0.5, False)
    short_side = randint(generator, int(jitter_scales[0]), int(jitter_scales[1]))
    x_frac, y_frac = uniform(generator), uniform(generator)
    do_flip = flip and uniform(generator) < 0.5
    return ViewParams(short_side, crop_size, x_frac, y_frac, do_flip)


def crop_box(size: tuple[int, int], view: ViewParams) -> tuple[int, int]:
    """Top-left (x0, y0) of the crop inside a frame of `size` (w, h)."""
    width, height = size
    if width < view.crop_size or height < view.crop_size:
        raise ValueError(f"frame {width}x{height} is smaller than the crop {view.crop_size}; the scale "
                         f"(DATA.TEST_SCALE / DATA.TRAIN_JITTER_SCALES) must be >= the crop size")
    return round(view.x_frac * (width - view.crop_size)), round(view.y_frac * (height - view.crop_size))


def frames_to_tensor(frames: np.ndarray, view: ViewParams, mean: Sequence[float], std: Sequence[float],
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [T, h, w, 3] at the resized size -> normalised float [T, 3, crop, crop] (written into `out`)."""
    height, width = frames.shape[1:3]
    x0, y0 = crop_box((width, height), view)
    c = view.crop_size
    video = torch.from_numpy(frames)[:, y0:y0 + c, x0:x0 + c].permute(0, 3, 1, 2)  # [T, 3, c, c] uint8 view
    if view.flip:
        video = video.flip(-1)
    if out is None:
        out = torch.empty(video.shape, dtype=torch.float32)
    # (x / 255 - mean) / std as one multiply-add reading the uint8 crop: one pass over the largest tensors.
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, 3, 1, 1)
    return torch.addcmul(shift, video, scale, out=out)


def transform_boxes(boxes: torch.Tensor, mask: torch.Tensor, size: tuple[int, int],
                    view: ViewParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes normalised to the original frame (0..1) -> normalised to the final crop, clipped.

    boxes [T, K, 4] (x1, y1, x2, y2), mask [T, K] bool. An entity whose box leaves the crop entirely
    (nothing left after clipping) is masked; masked boxes are zeros.
    """
    width, height = size
    x0, y0 = crop_box(size, view)
    c = float(view.crop_size)
    scale = boxes.new_tensor([width, height, width, height])
    offset = boxes.new_tensor([x0, y0, x0, y0])
    out = (boxes * scale - offset) / c  # [T, K, 4] in crop units
    if view.flip:
        out = torch.stack([1 - out[..., 2], out[..., 1], 1 - out[..., 0], out[..., 3]], dim=-1)
    out = out.clamp(0.0, 1.0)
    inside = (out[..., 2] > out[..., 0]) & (out[..., 3] > out[..., 1])
    mask = mask & inside
    return out * mask.unsqueeze(-1), mask
