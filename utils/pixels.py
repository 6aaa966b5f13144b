"""Pixel normalisation, shared by the loader (views it resamples or colour-jitters) and the backbone (the exact
crops the loader hands over as uint8): one formula, so both give the same float32 input bit for bit."""
from __future__ import annotations

from typing import Sequence

import torch


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], pixel: float = 255.0,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """(pixels / pixel - mean) / std per channel of [..., 3, H, W], as one multiply-add reading `pixels` once
    (`pixel` is 255 for 0..255 values, 1 for 0..1). Constants are rounded to float32 once, from float64."""
    scale = torch.tensor([1.0 / (pixel * s) for s in std], device=pixels.device).view(3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=pixels.device).view(3, 1, 1)
    if out is None:
        out = torch.empty(pixels.shape, dtype=torch.float32, device=pixels.device)
    return torch.addcmul(shift, pixels, scale, out=out)  # uint8 pixels are promoted element by element
