"""The head contract: what the engine, the evaluator and the feature cache may call on a few-shot head.

A head is `forward(episode, features=None) -> {"logits": [Q, WAY], "losses": {name: scalar}, "loss": scalar
(training)}`, called the same way by the trainer and the evaluator. Heads whose per-video encoding does not depend
on the episode declare `supports_feature_cache = True`; the feature cache (models/feature_cache.py) then encodes
each video once with `encode_videos`, keeps what `per_video_outputs` returns for it in each role, and calls
`forward(episode, (support, query))` with `VideoFeatures` it never looks inside.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from utils.episode import Episode


@dataclass
class VideoFeatures:
    """Per-video features of a set of videos, stacked on dim 0: `encoded` is what `encode_videos` returned; `cached`
    is what `per_video_outputs` returned for these videos in their role (eval feature cache; empty otherwise).
    Both are the head's own {name: tensor} dicts: only the head that wrote them reads their names."""
    encoded: dict[str, Tensor]
    cached: dict[str, Tensor] = field(default_factory=dict)

    def split(self, first: int) -> tuple[VideoFeatures, VideoFeatures]:
        """The first `first` videos and the rest (supports and queries of one joint encoding)."""
        return (VideoFeatures({k: v[:first] for k, v in self.encoded.items()}),
                VideoFeatures({k: v[first:] for k, v in self.encoded.items()}))


class FewShotHead(nn.Module, ABC):
    """Base of every registered head. Subclasses own a `backbone` (models/clip.py:CLIPBackbone)."""

    backbone: nn.Module
    # True when `encode_videos` treats every video on its own (no episode context), so its outputs may be cached
    # per video id and handed back through `forward(episode, features)`.
    supports_feature_cache: bool = False
    # True when `encode_videos` reads track boxes (VFAM): the episode's boxes are then passed along.
    uses_tracks: bool = False
    # True when a training step may leave a trainable parameter without a gradient; the trainer then asks DDP to
    # look for such parameters every step (find_unused_parameters, a graph traversal per step). A head that is
    # sure every trainable parameter is reached says False; unknown heads keep the safe default.
    may_leave_parameters_unused: bool = True
    # Config sections only some heads read: a head lists those it reads, and a config that sets one its head does not
    # read is refused at start-up (runs/run.py), so an ablation never runs the baseline silently.
    HEAD_SECTIONS = ("AMCAP", "MCDP", "OTAM", "TRX", "HYRSM", "TSN", "CROSS_TRANSFORMER")
    reads_sections: tuple[str, ...] = ()

    @abstractmethod
    def forward(self, episode: Episode, features: tuple[VideoFeatures, VideoFeatures] | None = None) -> dict[str, Any]:
        """Logits [Q, WAY] (and, training, the losses) of an episode; `features` (support, query) from the feature
        cache replace encoding the episode's videos."""

    @abstractmethod
    def encode_videos(self, videos: Tensor, boxes: Tensor | None = None,
                      box_mask: Tensor | None = None) -> dict[str, Tensor]:
        """videos [B, T, 3, H, W] (uint8 pixels or normalised float) -> per-video features {name: [B, ...]}."""

    @abstractmethod
    def clear_text_cache(self) -> None:
        """Forget cached class texts (the text tower's weights changed)."""

    def per_video_outputs(self, encoded: dict[str, Tensor], class_names: list[str] | None = None) -> dict[str, Tensor]:
        """Eval-mode outputs of single videos for the feature cache, by role: as queries (`class_names` None) or
        as supports (`class_names`: each support's own class). Default: nothing beyond `encode_videos`."""
        return {}

    def state_from_checkpoint(self, checkpoint: Mapping, source: str) -> Mapping[str, Tensor]:
        """This head's weights in a loaded checkpoint (`utils.checkpoint.load_checkpoint`'s dict from `source`): ours
        under "model", or a bare state dict. A head that also reads another codebase's format converts it here
        (models/heads/prototype.py: CLIP-FSAR's; models/heads/frame_head.py: the lineage's CNN heads'); the
        evaluator knows no head's format."""
        return checkpoint["model"] if "model" in checkpoint else checkpoint

    def param_groups(self) -> list[dict]:
        """Trainable parameters split into the backbone (own lr multiplier in the solver) and the head."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        return [dict(params=backbone, name="backbone"), dict(params=head, name="head")]

    # ------------------------------------------------------------------ encoding an episode
    def encode_episode(self, episode: Episode) -> tuple[VideoFeatures, VideoFeatures]:
        """One backbone pass over cat(support, query) videos, or two (supports, then queries) while the backbone
        has training-mode BatchNorm: CLIP-FSAR encodes the two sets separately, so a fine-tuned RN50 normalises
        each with its own batch statistics, which one joint pass would mix."""
        with_boxes = self.uses_tracks and episode.has_tracks
        if self._backbone_uses_batch_statistics():
            support = self.encode_videos(episode.support_set, *(
                (episode.support_boxes, episode.support_box_mask) if with_boxes else (None, None)))
            query = self.encode_videos(episode.target_set, *(
                (episode.target_boxes, episode.target_box_mask) if with_boxes else (None, None)))
            return VideoFeatures(support), VideoFeatures(query)
        boxes = mask = None
        if with_boxes:
            boxes = torch.cat([episode.support_boxes, episode.target_boxes])
            mask = torch.cat([episode.support_box_mask, episode.target_box_mask])
        encoded = self.encode_videos(torch.cat([episode.support_set, episode.target_set]), boxes, mask)
        return VideoFeatures(encoded).split(episode.support_set.shape[0])

    def _backbone_uses_batch_statistics(self) -> bool:
        """True while training with BatchNorm layers in training mode in the backbone (RN50 not frozen)."""
        return self.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                                     for m in self.backbone.modules())
