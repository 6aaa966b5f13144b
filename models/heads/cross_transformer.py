"""The lineage's CrossTransformer baseline (CNN_CrossTransformer; after Doersch et al., "CrossTransformers:
spatially-aware few-shot transfer", NeurIPS 2020, with a video's frames in the place of an image's positions), as
CLIP-FSAR's codebase computes it (models/base/few_shot.py: CNN_CrossTransformer).

Per episode: per-frame features (models/heads/frame_head.py); keys and values are bias-free 1x1 convolutions over
the frames to 1024 channels (the lineage's "v2" width); queries share the key projection. Each query frame attends,
with one softmax of q.k / sqrt(1024), over every frame of every support of a class together, which gives a
query-aligned prototype frame per query frame and class. Logits = sum over frames of the cosine between the query's
value frame and its prototype frame, divided by 8 (the lineage's hard-coded divisor, its frame count). No dropout:
train and eval compute the same logits (BatchNorm aside). Training: cross-entropy of the logits, nothing else
(TRAIN.USE_CLASSIFICATION is not read). Only the loss reads the query labels.

The lineage's module stores the shared projection twice (`key_head` and `query_head`, one tensor): its checkpoints
load here with `query_head` dropped when it is `key_head`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones import build_frame_backbone
from models.build import HEAD_REGISTRY
from models.heads.base import VideoFeatures
from models.heads.frame_head import FrameFeatureHead
from utils.config import POSITIVE, CfgNode, rules, section
from utils.episode import Episode


def add_cross_transformer_config(cfg: CfgNode) -> None:
    _C = section(cfg, "CROSS_TRANSFORMER")
    # Channels of the key and value projections: the lineage's hidden_dim, 1024 (its "v2"; 512 and 2048 commented
    # out). Their input is the backbone's width; the lineage hard-codes 2048, so only its resnet50 runs there.
    _C.HIDDEN_DIM = 1024
    # The summed per-frame cosines are divided by this: the lineage's hard-coded 8 (its DATA.NUM_INPUT_FRAMES),
    # whatever the frame count; set it to the frame count for a mean.
    _C.SIMILARITY_DIVISOR = 8.0
    rules("CROSS_TRANSFORMER", HIDDEN_DIM=POSITIVE, SIMILARITY_DIVISOR=POSITIVE)


@HEAD_REGISTRY.register()
class CNN_CrossTransformer(FrameFeatureHead):  # noqa: N801  (the lineage's registered name)
    """Query frames attend over a class's support frames; logits = summed cosine to the aligned prototype / 8."""

    reads_sections = ("CROSS_TRANSFORMER",)

    def __init__(self, *, backbone: nn.Module, hidden_dim: int = 1024, similarity_divisor: float = 8.0):
        super().__init__(backbone)
        dim = self.feature_dim
        self.key_head = nn.Conv1d(dim, hidden_dim, kernel_size=1, bias=False)  # also the queries' projection
        self.value_head = nn.Conv1d(dim, hidden_dim, kernel_size=1, bias=False)
        self.hidden_dim, self.similarity_divisor = hidden_dim, similarity_divisor

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        ct = cfg.CROSS_TRANSFORMER
        return dict(backbone=build_frame_backbone(cfg), hidden_dim=ct.HIDDEN_DIM,
                    similarity_divisor=ct.SIMILARITY_DIVISOR)

    @staticmethod
    def _project(conv: nn.Conv1d, frames: Tensor) -> Tensor:
        """[B,T,D] -> [B,T,hidden] through a 1x1 convolution over the frames."""
        return conv(frames.transpose(1, 2)).transpose(1, 2)

    def forward(self, episode: Episode, features: tuple[VideoFeatures, VideoFeatures] | None = None) -> dict[str, Any]:
        support, query = self.episode_frames(episode, features)  # [S,T,D], [Q,T,D]
        labels, way = episode.support_labels.long(), episode.way
        # Each class's support frames as one bag: [WAY, shot*T, hidden] (the order inside a bag does not matter).
        order = torch.sort(labels, stable=True).indices
        support_k = self._project(self.key_head, support[order]).reshape(way, -1, self.hidden_dim)
        support_v = self._project(self.value_head, support[order]).reshape(way, -1, self.hidden_dim)
        query_q = self._project(self.key_head, query)  # [Q, T, hidden]
        query_v = self._project(self.value_head, query)  # [Q, T, hidden]
        scores = torch.einsum("qtd,nvd->qntv", query_q, support_k) * self.hidden_dim ** -0.5  # [Q, WAY, T, shot*T]
        prototypes = torch.einsum("qntv,nvd->qntd", scores.softmax(dim=-1), support_v)  # [Q, WAY, T, hidden]
        cosines = (F.normalize(prototypes, dim=-1) * F.normalize(query_v, dim=-1)[:, None]).sum(-1)  # [Q, WAY, T]
        logits = cosines.sum(-1) / self.similarity_divisor  # [Q, WAY]
        output: dict[str, Any] = {"logits": logits, "losses": {}}
        if self.training:
            output["losses"] = {"cross_transformer_ce": F.cross_entropy(logits, episode.target_labels.long())}
            output["loss"] = output["losses"]["cross_transformer_ce"]
        return output

    def lineage_renames(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Drop the lineage's `query_head.weight`, its second name for `key_head.weight` (one that differs stays, to
        show in the key diff)."""
        query, key = state.get("query_head.weight"), state.get("key_head.weight")
        if query is None or key is None or not torch.equal(query, key):
            return state
        return {k: v for k, v in state.items() if k != "query_head.weight"}
