"""The episode: one few-shot task as the loader hands it to the engine (docs/design.md §4), a typed record.

Support and query videos are [N, T, 3, H, W] tensors (uint8 pixels for exact crops, normalised float32 otherwise;
the head's backbone normalises uint8, models/clip.py) or, where the feature cache holds some videos, per-video
lists with None for the videos that were not decoded. Labels 0..WAY-1 follow the episode's class order; the real
labels index the split's class list. The query labels are carried for the loss and the accuracy only: nothing that
computes query features may read them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

Videos = Tensor | list[Tensor | None]  # [N, T, 3, H, W], or one [T, 3, H, W] (None: cached, not decoded) per video


@dataclass(eq=False)  # field-wise == would compare tensors; episodes are compared field by field where needed
class Episode:
    support_set: Videos  # [S, T, 3, H, W], supports ordered by class then shot
    target_set: Videos  # [Q, T, 3, H, W], queries ordered by class then query
    support_labels: Tensor  # [S] 0..WAY-1
    target_labels: Tensor  # [Q] 0..WAY-1: the loss and the accuracy only
    real_support_labels: Tensor  # [S] split class ids
    real_target_labels: Tensor  # [Q] split class ids
    class_names: list[str]  # WAY names, episode order
    split_class_names: list[str]  # every class of the split (the video-text loss's classes)
    support_ids: list[str]
    target_ids: list[str]
    episode_index: int
    split: str
    replaced_videos: list[list[str]] = field(default_factory=list)  # [bad video id, reason] replaced by another
    # Tracks (VFAM, DATA.TRACK_DIR): normalised x1,y1,x2,y2 boxes and which slots hold an entity.
    support_boxes: Tensor | None = None  # [S, T, K, 4]
    support_box_mask: Tensor | None = None  # [S, T, K]
    target_boxes: Tensor | None = None  # [Q, T, K, 4]
    target_box_mask: Tensor | None = None  # [Q, T, K]
    missing_tracks: list[str] = field(default_factory=list)  # videos without a track file (no entities)

    @property
    def way(self) -> int:
        return len(self.class_names)

    @property
    def has_tracks(self) -> bool:
        return self.support_boxes is not None

    def replace(self, **changes) -> Episode:
        """A copy with some fields changed (tests permute queries, relabel, drop tracks)."""
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device) -> Episode:
        """The episode with its tensors (also inside the per-video lists) on `device`; asynchronous copies on CUDA
        (the loader pins host memory)."""
        non_blocking = torch.device(device).type == "cuda"
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Episode:
        """Called by torch's DataLoader pin-memory thread (DATA.PIN_MEMORY on CUDA)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Episode:
        def apply(value):
            if torch.is_tensor(value):
                return fn(value)
            if isinstance(value, list) and any(torch.is_tensor(v) for v in value):
                return [None if v is None else fn(v) for v in value]
            return value

        return dataclasses.replace(self, **{f.name: apply(getattr(self, f.name)) for f in dataclasses.fields(self)})


def build_episode(support_set: Videos, target_set: Videos, *, shot: int, query: int, class_ids: Sequence[int],
                  split_class_names: Sequence[str], support_ids: list[str], target_ids: list[str],
                  episode_index: int, split: str, **optional) -> Episode:
    """The one place that derives an episode's labels: WAY = len(class_ids) classes in episode order, supports
    `shot` per class and queries `query` per class, each grouped by class."""
    class_ids = [int(c) for c in class_ids]
    way = len(class_ids)
    real = torch.tensor(class_ids)
    return Episode(
        support_set=support_set, target_set=target_set,
        support_labels=torch.arange(way).repeat_interleave(shot),
        target_labels=torch.arange(way).repeat_interleave(query),
        real_support_labels=real.repeat_interleave(shot), real_target_labels=real.repeat_interleave(query),
        class_names=[split_class_names[c] for c in class_ids], split_class_names=list(split_class_names),
        support_ids=list(support_ids), target_ids=list(target_ids), episode_index=episode_index, split=split,
        **optional)
