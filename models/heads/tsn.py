"""The lineage's TSN baseline (CNN_TSN; Wang et al., "Temporal segment networks", ECCV 2016, as a few-shot
baseline), as CLIP-FSAR's codebase computes it (models/base/few_shot.py: CNN_TSN, cos_sim).

Per episode: per-frame features (models/heads/frame_head.py) averaged over each video's frames (the segmental
consensus); logits = each query's similarity x.y / (|x||y| + 0.01) to each support video, averaged over a class's
supports (the lineage's `norm_sq_dist = False`, hard-coded). The lineage's other branch, never taken there, is a key
here: minus the squared distance to each class's prototype (its mean support). No parameter beyond the backbone, no
dropout: train and eval compute the same logits (BatchNorm aside). Training: cross-entropy of the logits, nothing
else (TRAIN.USE_CLASSIFICATION is not read). Only the loss reads the query labels.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from models.backbones import build_frame_backbone
from models.build import HEAD_REGISTRY
from models.heads.base import VideoFeatures
from models.heads.frame_head import FrameFeatureHead
from models.heads.parts import class_means, lineage_cosine
from utils.config import NON_NEGATIVE, CfgNode, one_of, rules, section
from utils.episode import Episode

DISTANCES = ("cosine", "squared_euclidean")


def add_tsn_config(cfg: CfgNode) -> None:
    _S = section(cfg, "TSN")
    # How a query's mean frame is compared with a class: "cosine", its similarity to each support's mean frame,
    # averaged over the class's supports (the lineage's CNN_TSN, whose `norm_sq_dist` is hard-coded False);
    # "squared_euclidean", minus |query - class prototype|^2 (the lineage's branch for norm_sq_dist True).
    _S.DISTANCE = "cosine"
    # The cosine's x.y / (|x||y| + COSINE_EPS): the lineage's cos_sim, eps 0.01; 0 is the exact cosine.
    _S.COSINE_EPS = 0.01
    rules("TSN", DISTANCE=one_of(*DISTANCES), COSINE_EPS=NON_NEGATIVE)


@HEAD_REGISTRY.register()
class CNN_TSN(FrameFeatureHead):  # noqa: N801  (the lineage's registered name)
    """Frame-averaged video features; logits = mean cosine to a class's supports (or -squared prototype distance)."""

    reads_sections = ("TSN",)

    def __init__(self, *, backbone: nn.Module, distance: str = "cosine", cosine_eps: float = 0.01):
        super().__init__(backbone)
        self.distance, self.cosine_eps = distance, cosine_eps

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        return dict(backbone=build_frame_backbone(cfg), distance=cfg.TSN.DISTANCE, cosine_eps=cfg.TSN.COSINE_EPS)

    def forward(self, episode: Episode, features: tuple[VideoFeatures, VideoFeatures] | None = None) -> dict[str, Any]:
        support, query = self.episode_frames(episode, features)  # [S,T,D], [Q,T,D]
        support, query = support.mean(1), query.mean(1)  # [S, D], [Q, D]
        labels, way = episode.support_labels.long(), episode.way
        if self.distance == "cosine":
            similarity = lineage_cosine(query, support, self.cosine_eps)  # [Q, S]
            logits = class_means(similarity.t(), labels, way).t()  # [Q, WAY]
        else:
            prototypes = class_means(support, labels, way)  # [WAY, D]
            logits = -(query[:, None] - prototypes[None]).pow(2).sum(-1)  # [Q, WAY]
        output: dict[str, Any] = {"logits": logits, "losses": {}}
        if self.training:
            output["losses"] = {"tsn_ce": F.cross_entropy(logits, episode.target_labels.long())}
            output["loss"] = output["losses"]["tsn_ce"]
        return output
