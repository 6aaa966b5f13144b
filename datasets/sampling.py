"""Sampling policies as small strategy objects: which classes and videos form an episode, which frames.

All randomness comes from a `torch.Generator` passed in (seeded by `utils.seeding.episode_generator`),
never from a global RNG, so an episode is a pure function of (RANDOM_SEED, split, episode index).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from datasets.splits import VideoEntry
from utils.errors import UserError


class EpisodeConfigError(UserError, ValueError):
    """The split cannot provide the requested episodes; the message lists the offending classes."""

    exit_code = 8
    family = "episode"


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive) from `generator`."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator).item())


def child_seed(generator: torch.Generator) -> int:
    """A 62-bit seed for a sub-generator, so that one slot's randomness never shifts another's."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def segment_indices(num_frames: int, num_segments: int, train: bool, generator: torch.Generator | None) -> list[int]:
    """One frame per equal segment of [0, num_frames): random within it (train) or its centre (test).

    Videos shorter than `num_segments` frames give repeated indices (segments shorter than a frame).
    """
    if num_frames < 1:
        raise ValueError(f"segment_indices: a video needs at least one frame, got {num_frames}")
    seg = num_frames / num_segments
    indices = []
    for k in range(num_segments):
        start = k * seg
        pos = start + (uniform(generator) if train else 0.5) * seg
        indices.append(min(int(pos), num_frames - 1))
    return indices


# segment: one frame per equal segment (ours; CLIP-FSAR's SAMPLING_RATE > 40 path for SSv2/UCF/HMDB);
# clip: CLIP-FSAR's clip window of NUM_INPUT_FRAMES x SAMPLING_RATE frames at TARGET_FPS (its K-100 configs,
# SAMPLING_RATE 35, TARGET_FPS 12).
FRAME_SAMPLINGS = ("segment", "clip")
# val/test frames: centre (ours, deterministic) or random like training (CLIP-FSAR).
TEST_FRAMES = ("centre", "random")


def clip_indices(num_frames: int, num_samples: int, sampling_rate: int, train: bool,
                 generator: torch.Generator | None, fps: float | None = None, target_fps: float = 12.0) -> list[int]:
    """CLIP-FSAR's interval sampling (its base_dataset.py `_interval_based_sampling`): `num_samples` frames evenly
    over a window of the video.

    The window is `num_samples * sampling_rate * fps / target_fps` frames, in the lineage's order of operations
    (`sampling_rate` counts frames at `target_fps`: K-100's 8 x 35 frames at 12 fps are 23.3 s, 700 frames of a
    30-fps file); without `fps` (a file that records none) or with `target_fps` 0 it is `num_samples *
    sampling_rate` frames of the file. It is cut to the largest multiple of `num_samples` that fits when the video
    is shorter (every Kinetics clip of K-100, 10 s). Its start is uniform in [0, free] in training and free / 2 in
    test, free = num_frames - window + 1; samples run from the start to start + window - sampling_rate
    (torch.linspace, float32), clamped and truncated to integers. Where that end lies before the start (a
    video shorter than about `sampling_rate + num_samples` frames) the lineage's indices run backwards onto
    frame 0; we spread them over the window instead (start to start + window - 1).
    """
    if num_frames < 1:
        raise ValueError(f"clip_indices: a video needs at least one frame, got {num_frames}")
    window: float = num_samples * sampling_rate
    if fps and target_fps > 0:
        window = num_samples * sampling_rate * fps / target_fps
    if window > num_frames:
        window = num_frames // num_samples * num_samples
    free = max(num_frames - window + 1, 0)
    start = uniform(generator) * free if train else free / 2
    end = start + window - sampling_rate
    if end < start:
        end = start + max(window - 1, 0)
    index = torch.linspace(start, end, num_samples)
    return torch.clamp(index, 0, num_frames - 1).long().tolist()


@dataclass(frozen=True)
class FrameSampler:
    """Which frames of a video of `num_frames` frames an episode uses (DATA.FRAME_SAMPLING, DATA.TEST_FRAMES)."""

    mode: str = "segment"  # one of FRAME_SAMPLINGS
    sampling_rate: int = 35  # clip mode: frames between samples at the target frame rate
    random_test: bool = False  # val/test frames drawn like training ones (CLIP-FSAR) instead of centred
    target_fps: float = 12.0  # clip mode: the frame rate SAMPLING_RATE counts at; 0 = frames of the file

    def __post_init__(self):
        if self.mode not in FRAME_SAMPLINGS:
            raise ValueError(f"DATA.FRAME_SAMPLING must be one of {FRAME_SAMPLINGS}, got {self.mode!r}")

    def __call__(self, num_frames: int, num_samples: int, train: bool, generator: torch.Generator | None,
                 fps: float | None = None) -> list[int]:
        """Frame indices; `fps` is the video's average frame rate (None: unknown, the window counts file frames)."""
        random = train or self.random_test
        if self.mode == "clip":
            return clip_indices(num_frames, num_samples, self.sampling_rate, random, generator, fps, self.target_fps)
        return segment_indices(num_frames, num_samples, random, generator)


@dataclass(frozen=True)
class EpisodePlan:
    """Which classes (episode order) and videos (class-major) make up one episode."""

    class_ids: list[int]  # split class ids, label k of the episode = class_ids[k]
    support: list[VideoEntry]  # WAY*SHOT, class-major
    query: list[VideoEntry]  # WAY*QUERY, class-major
    support_seeds: list[int]  # one sub-generator seed per support video (frames, augmentation, replacement)
    query_seeds: list[int]


class EpisodeSampler:
    """Draws WAY classes, then SHOT support and QUERY query videos per class, all distinct."""

    def __init__(self, videos_by_class: Sequence[Sequence[VideoEntry]], class_names: Sequence[str], way: int,
                 shot: int, query: int, source: str = "split"):
        self.videos_by_class = [list(v) for v in videos_by_class]
        self.way, self.shot, self.query = way, shot, query
        self.check(class_names, source)
        self.eligible = list(range(len(self.videos_by_class)))

    def check(self, class_names: Sequence[str], source: str) -> None:
        """Startup check: enough classes for WAY, enough videos in every class for SHOT + QUERY."""
        if self.way < 1 or self.shot < 1 or self.query < 1:
            raise EpisodeConfigError(f"{source}: WAY, SHOT and QUERY must be >= 1, got {self.way}/{self.shot}/"
                                     f"{self.query}")
        num_classes = len(self.videos_by_class)
        if self.way > num_classes:
            listed = ", ".join(f"{i}:{n!r}" for i, n in enumerate(class_names))
            raise EpisodeConfigError(f"{source}: WAY {self.way} is larger than the {num_classes} classes of the "
                                     f"split ({listed})")
        need = self.shot + self.query
        short = [(i, class_names[i], len(v)) for i, v in enumerate(self.videos_by_class) if len(v) < need]
        if short:
            listed = "; ".join(f"{i}:{n!r} has {c}" for i, n, c in short)
            raise EpisodeConfigError(f"{source}: {len(short)} classes have fewer than SHOT + QUERY = {need} videos: "
                                     f"{listed}")

    def __call__(self, generator: torch.Generator) -> EpisodePlan:
        order = torch.randperm(len(self.eligible), generator=generator)[: self.way].tolist()
        class_ids = [self.eligible[i] for i in order]
        support: list[VideoEntry] = []
        query: list[VideoEntry] = []
        for cid in class_ids:
            videos = self.videos_by_class[cid]
            picks = torch.randperm(len(videos), generator=generator)[: self.shot + self.query].tolist()
            support.extend(videos[i] for i in picks[: self.shot])
            query.extend(videos[i] for i in picks[self.shot:])
        support_seeds = [child_seed(generator) for _ in support]
        query_seeds = [child_seed(generator) for _ in query]
        return EpisodePlan(class_ids, support, query, support_seeds, query_seeds)
