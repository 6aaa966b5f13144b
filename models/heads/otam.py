"""The lineage's OTAM head (CNN_OTAM; Cao et al., "Few-shot video classification via temporal alignment", CVPR 2020),
as CLIP-FSAR's codebase computes it (models/base/few_shot.py: CNN_OTAM, OTAM_cum_dist, cos_sim).

Per episode: per-frame features of every support and query (models/heads/frame_head.py); frame distances
1 - x.y / (|x||y| + 0.01) between each query and each support video; the OTAM distance in both directions
(query -> support plus support -> query, soft minimum with lambda 0.1, the lineage's padded-column recurrence,
models/otam.py); each class's distance is the mean over its supports' distances (shots are not averaged into a
prototype first); logits = -distance. Training: cross-entropy of the logits over the episode's classes, nothing else
(the lineage's training loop with USE_CLASSIFICATION off; CNN_OTAM has no classification logits, so the lineage
cannot run it with USE_CLASSIFICATION on, and TRAIN.USE_CLASSIFICATION is not read here). Eval computes the same
logits. Only the loss reads the query labels.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from models.backbones import build_frame_backbone
from models.build import HEAD_REGISTRY
from models.heads.base import VideoFeatures
from models.heads.frame_head import FrameFeatureHead
from models.heads.parts import OTAMMatcher, class_means
from utils.config import NON_NEGATIVE, POSITIVE, CfgNode, rules, section
from utils.episode import Episode


def add_otam_config(cfg: CfgNode) -> None:
    _O = section(cfg, "OTAM")
    # Soft-minimum temperature of CNN_OTAM's alignment: the lineage's OTAM_cum_dist default 0.1, which CNN_OTAM calls
    # without a value (CNN_OTAM_CLIPFSAR's alignment reads VIDEO.HEAD.OTAM_LAMBDA, 0.5, its OTAM_cum_dist_v2 default).
    _O.LAMBDA = 0.1
    # CNN_OTAM's frame cosine x.y / (|x||y| + COSINE_EPS): the lineage's cos_sim, eps 0.01; 0 is the exact cosine.
    _O.COSINE_EPS = 0.01
    rules("OTAM", LAMBDA=POSITIVE, COSINE_EPS=NON_NEGATIVE)


@HEAD_REGISTRY.register()
class CNN_OTAM(FrameFeatureHead):  # noqa: N801  (the lineage's registered name)
    """Bidirectional OTAM between each query and each support video; class distance = mean over its supports."""

    reads_sections = ("OTAM",)

    def __init__(self, *, backbone: nn.Module, matcher: OTAMMatcher):
        super().__init__(backbone)
        self.matcher = matcher

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        return dict(backbone=build_frame_backbone(cfg),
                    matcher=OTAMMatcher(cfg.OTAM.LAMBDA, cfg.OTAM.COSINE_EPS, bidirectional=True))

    def forward(self, episode: Episode, features: tuple[VideoFeatures, VideoFeatures] | None = None) -> dict[str, Any]:
        support, query = self.episode_frames(episode, features)  # [S,T,D], [Q,T,D]
        video_dists = self.matcher(query, support)  # [Q, S]
        class_dists = class_means(video_dists.t(), episode.support_labels.long(), episode.way).t()  # [Q, WAY]
        logits = -class_dists
        output: dict[str, Any] = {"logits": logits, "losses": {}}
        if self.training:
            output["losses"] = {"otam_ce": F.cross_entropy(logits, episode.target_labels.long())}
            output["loss"] = output["losses"]["otam_ce"]
        return output
