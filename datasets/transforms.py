"""Frame and box transforms: resize (squash here, or short side by the reader), crop, flip, colour, normalise.

Augmentation parameters are drawn once per video from the episode's generator (`sample_view`,
`QueryAugment`) and applied identically to the frames and to the entity boxes, so boxes stay on the
entities they describe.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF

from datasets.sampling import randint, uniform
from utils.pixels import normalise

# squash: every frame to SCALE x SCALE, aspect ratio ignored (CLIP-FSAR); short_side: short side to SCALE (ours).
RESIZE_MODES = ("squash", "short_side")


@dataclass(frozen=True)
class ColourJitter:
    """One video's colour augmentation, the same on every frame: four adjustments in `order`, grey first."""

    brightness: float  # factor, 1 = unchanged
    contrast: float
    saturation: float
    hue: float  # shift of the hue channel, 0 = unchanged
    order: tuple[int, ...]  # permutation of (brightness, contrast, saturation, hue)
    grayscale: bool  # convert to grey before the four adjustments

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """float [T, 3, H, W] in 0..1 -> same shape, in 0..1."""
        if self.grayscale:
            video = TF.rgb_to_grayscale(video, num_output_channels=3)
        adjust = (
            lambda v: TF.adjust_brightness(v, self.brightness),
            lambda v: _adjust_contrast(v, self.contrast),
            lambda v: TF.adjust_saturation(v, self.saturation),
            lambda v: adjust_hue(v, self.hue),
        )
        for k in self.order:
            video = adjust[k](video)
        return video


def _adjust_contrast(video: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend each frame with its mean grey level (torchvision's rule), the mean summed in float64 so that the
    result does not depend on how many threads share the reduction."""
    grey = TF.rgb_to_grayscale(video).double().mean(dim=(-3, -2, -1), keepdim=True).float()  # [T, 1, 1, 1]
    return (factor * video + (1.0 - factor) * grey).clamp(0.0, 1.0)


def adjust_hue(video: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the HSV hue of float RGB [..., 3, H, W] in 0..1 by `shift` turns (torchvision's adjust_hue, with the
    closed-form HSV -> RGB: 10x fewer passes over the frames than its one-hot sector blend)."""
    r, g, b = video.unbind(-3)
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)  # = value x saturation
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    sector = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    sector = torch.where(delta > 0, sector, torch.zeros_like(sector))  # grey pixels have no hue
    sector = torch.remainder(sector / 6.0 + shift, 1.0) * 6.0  # rotated hue in sectors, [0, 6)
    channels = []
    for n in (5.0, 3.0, 1.0):  # R, G, B
        k = torch.remainder(n + sector, 6.0)
        channels.append(maxc - delta * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, dim=-3)


def squash_crop(video: torch.Tensor, size: tuple[int, int], x0: int, y0: int, crop: int) -> torch.Tensor:
    """The `crop` x `crop` window at (x0, y0) of `video` (uint8 [T, 3, h, w]) resized to `size` (w, h), as float
    0..255 [T, 3, crop, crop]: bilinear with half-pixel centres and no antialiasing, the rule of
    torch.nn.functional.interpolate(align_corners=False) on float pixels that CLIP-FSAR used. Only the window is
    computed.

    Written as row/column gathers and elementwise products because interpolate's float kernel rounds differently
    with the number of threads (an episode must be the same tensor in any process; DataLoader workers run 1
    thread), and its uint8 kernel errs by up to a grey level, mostly upwards.
    """
    def taps(n_in: int, n_out: int, first: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = ((torch.arange(first, first + crop, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
        low = src.floor().long().clamp(max=n_in - 1)
        return low, (low + 1).clamp(max=n_in - 1), (src - low).float()

    width, height = size
    ya, yb, wy = taps(video.shape[2], height, y0)
    xa, xb, wx = taps(video.shape[3], width, x0)
    video = video.contiguous()  # index_select on contiguous rows: 4x faster than advanced indexing
    wy = wy.view(-1, 1)
    rows = video.index_select(2, ya).float() * (1.0 - wy) + video.index_select(2, yb).float() * wy  # [T, 3, crop, w]
    return rows.index_select(3, xa) * (1.0 - wx) + rows.index_select(3, xb) * wx  # [T, 3, crop, crop]


@dataclass(frozen=True)
class ViewParams:
    """How one video is turned into network input: scale, crop position, flip, colour."""

    short_side: int  # the reader resizes to this short side (<= 0: original resolution)
    crop_size: int  # square crop
    x_frac: float  # crop offset as a fraction of the free space (0 = left, 0.5 = centre)
    y_frac: float
    flip: bool
    squash: int = 0  # > 0: the transform resizes every frame to squash x squash (aspect ignored) before the crop
    jitter: ColourJitter | None = None  # colour augmentation after the crop (training queries, QueryAugment)


def sample_view(generator: torch.Generator, train: bool, jitter_scales: Sequence[int], test_scale: int,
                crop_size: int, flip: bool, resize_mode: str = "short_side") -> ViewParams:
    """Train: random scale in `jitter_scales`, random crop, random flip (if enabled); test: centre crop.

    The scale is the short side (`short_side`, the reader resizes) or the side of the square every frame is
    squashed to (`squash`, the reader decodes at the original resolution and `frames_to_tensor` resizes).
    """
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"DATA.RESIZE_MODE must be one of {RESIZE_MODES}, got {resize_mode!r}")
    squash = resize_mode == "squash"
    if not train:
        return ViewParams(0 if squash else test_scale, crop_size, 0.5, 0.5, False, test_scale if squash else 0)
    scale = randint(generator, int(jitter_scales[0]), int(jitter_scales[1]))
    x_frac, y_frac = uniform(generator), uniform(generator)
    do_flip = flip and uniform(generator) < 0.5
    return ViewParams(0 if squash else scale, crop_size, x_frac, y_frac, do_flip, scale if squash else 0)


@dataclass(frozen=True)
class QueryAugment:
    """CLIP-FSAR's AUGMENTATION.SUPPORT_QUERY_DIFF: training queries (not supports) get a horizontal flip
    (p = 0.5) and a colour jitter consistent over the frames, on top of the support view.

    Factors are drawn uniformly from [max(0, 1 - b), 1 + b] (brightness, contrast, saturation) and [-h, h]
    (hue); the four adjustments run in a random order, after a grey conversion with probability `grayscale`.
    """

    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.25
    grayscale: float = 0.3
    flip: bool = True  # False where a flip changes the label (SSv2)

    def __call__(self, view: ViewParams, generator: torch.Generator) -> ViewParams:
        def factor(amount: float) -> float:
            low, high = max(0.0, 1.0 - amount), 1.0 + amount
            return low + (high - low) * uniform(generator)

        do_flip = uniform(generator) < 0.5
        brightness, contrast, saturation = factor(self.brightness), factor(self.contrast), factor(self.saturation)
        hue = (2.0 * uniform(generator) - 1.0) * self.hue
        order = tuple(torch.randperm(4, generator=generator).tolist())
        gray = uniform(generator) < self.grayscale
        jitter = ColourJitter(brightness, contrast, saturation, hue, order, gray)
        return dataclasses.replace(view, flip=self.flip and do_flip, jitter=jitter)


@dataclass(frozen=True)
class ViewSampler:
    """The dataset's view strategy: each video's scale, crop, flip (training: random; otherwise the centre) and,
    for training queries, QueryAugment's colour jitter, all drawn from the video's own generator."""

    random: bool  # random views (training episodes, unless DATA.DETERMINISTIC_TRAIN)
    jitter_scales: tuple[int, int]
    test_scale: int
    crop_size: int
    flip: bool
    resize_mode: str = "short_side"
    query_augment: QueryAugment | None = None  # training queries only (never with fixed views)

    def __post_init__(self):
        if self.query_augment is not None and not self.random:
            raise ValueError("ViewSampler: QueryAugment needs random views (fixed views must stay fixed)")

    @property
    def exact_crops(self) -> bool:
        """True when every view only selects pixels of frames the reader resized (short side, no jitter): the
        dataset may then hand uint8 pixels over (frames squashed at preparation are the dataset's to know)."""
        return self.resize_mode == "short_side" and self.query_augment is None

    def __call__(self, generator: torch.Generator, is_query: bool = False) -> ViewParams:
        view = sample_view(generator, self.random, self.jitter_scales, self.test_scale, self.crop_size, self.flip,
                           self.resize_mode)
        if is_query and self.query_augment is not None:
            view = self.query_augment(view, generator)
        return view


def view_frame_size(size: tuple[int, int], view: ViewParams) -> tuple[int, int]:
    """(w, h) of a decoded frame of `size` once the transform has resized it (squash), before the crop."""
    return (view.squash, view.squash) if view.squash > 0 else size


def crop_box(size: tuple[int, int], view: ViewParams) -> tuple[int, int]:
    """Top-left (x0, y0) of the crop inside a frame of `size` (w, h), the size after any squash."""
    width, height = size
    if width < view.crop_size or height < view.crop_size:
        raise ValueError(f"frame {width}x{height} is smaller than the crop {view.crop_size}; the scale "
                         f"(DATA.TEST_SCALE / DATA.TRAIN_JITTER_SCALES) must be >= the crop size")
    return round(view.x_frac * (width - view.crop_size)), round(view.y_frac * (height - view.crop_size))


def is_exact_crop(view: ViewParams, size: tuple[int, int]) -> bool:
    """True when the view of a frame of `size` (w, h) only selects pixels (crop, flip): it can stay uint8."""
    return view.jitter is None and view_frame_size(size, view) == size


def frames_to_tensor(frames: np.ndarray, view: ViewParams, mean: Sequence[float], std: Sequence[float],
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [T, h, w, 3] as decoded -> [T, 3, crop, crop], written into `out`: normalised float32, or, when
    `out` is uint8, the crop's pixels themselves (exact crops only; the model normalises them on its device,
    models/clip.py:CLIPBackbone.normalise)."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # [T, 3, h, w] uint8 view
    frame_size = (video.shape[3], video.shape[2])
    size = view_frame_size(frame_size, view)
    x0, y0 = crop_box(size, view)
    c = view.crop_size
    if out is not None and out.dtype == torch.uint8:
        if not is_exact_crop(view, frame_size):
            raise ValueError("frames_to_tensor: a uint8 output needs an exact crop (no squash resize, no colour "
                             "jitter)")
        crop = video[:, :, y0:y0 + c, x0:x0 + c]
        return out.copy_(crop.flip(-1) if view.flip else crop)
    if size != frame_size:
        video = squash_crop(video, size, x0, y0, c)  # [T, 3, c, c] float
    else:
        video = video[:, :, y0:y0 + c, x0:x0 + c]  # [T, 3, c, c] uint8 view
    if view.flip:
        video = video.flip(-1)
    pixel = 255.0
    if view.jitter is not None:
        video = view.jitter(video.float() / 255.0)  # colour adjustments work on 0..1 and clip to it
        pixel = 1.0
    return normalise(video, mean, std, pixel, out=out)  # one pass over the largest tensors


def transform_boxes(boxes: torch.Tensor, mask: torch.Tensor, size: tuple[int, int],
                    view: ViewParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes normalised to the original frame (0..1) -> normalised to the final crop, clipped.

    boxes [T, K, 4] (x1, y1, x2, y2), mask [T, K] bool, `size` the decoded frame size (w, h). An entity whose
    box leaves the crop entirely (nothing left after clipping) is masked; masked boxes are zeros.
    """
    width, height = view_frame_size(size, view)
    x0, y0 = crop_box((width, height), view)
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
