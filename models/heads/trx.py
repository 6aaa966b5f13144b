"""The lineage's TRX head (CNN_TRX; Perrett et al., "Temporal-relational CrossTransformers for few-shot action
recognition", CVPR 2021), as CLIP-FSAR's codebase computes it (models/base/few_shot.py: CNN_TRX,
TemporalCrossTransformer, PositionalEncoding).

Per episode: per-frame features (models/heads/frame_head.py); for each tuple cardinality k (the lineage: pairs and
triples) one temporal cross transformer: a sinusoidal positional encoding scaled by 0.1 added to each video's frames,
then dropout (0.1; supports first, then queries); every ordered k-tuple of frames concatenated; keys
LayerNorm(Linear(tuple)) and values Linear(tuple) (1152 wide). For each class, each query tuple attends over every
tuple of every support of that class at once (one softmax of q.k / sqrt(1152)), which gives a query-specific
prototype; the class distance is |query values - prototype|^2 summed over tuples and channels, divided by the number
of tuples; logits = -distance, averaged over the cardinalities. Training: cross-entropy of the logits, nothing else
(TRAIN.USE_CLASSIFICATION is not read). The lineage builds a LayerNorm for the values that it never applies: kept
(frozen, it gets no gradient there either) so its checkpoints load. Only the loss reads the query labels.
"""
from __future__ import annotations

import math
import re
from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones import build_frame_backbone
from models.build import HEAD_REGISTRY
from models.heads.base import VideoFeatures
from models.heads.frame_head import FrameFeatureHead
from utils.config import NON_NEGATIVE, POSITIVE, PROBABILITY, CfgNode, ConfigError, Rule, both, each, rules, section
from utils.episode import Episode

# One item of the lineage's tuple list: transformers.{i}.tuples.{j}.
_TUPLE_ITEM = re.compile(r"transformers\.(?P<i>\d+)\.tuples\.(?P<j>\d+)")


def add_trx_config(cfg: CfgNode) -> None:
    _X = section(cfg, "TRX")
    # Width of the tuple keys and values (the lineage's trans_linear_out_dim, set to 1152 by CNN_TRX). Their input
    # width is k x the frame feature width; the lineage hard-codes that as 2048 for resnet50 and 512 for every other
    # name (the width of ResNet-18/34 and of CLIP ViT-B/16's embedding); here it is the backbone's width.
    _X.OUT_DIM = 1152
    _X.CARDINALITIES = [2, 3]  # frame-tuple sizes, one cross transformer each (the lineage's temp_set)
    _X.DROPOUT = 0.1  # dropout on the position-encoded frame features (the lineage's trans_dropout)
    # Factor on the sinusoidal positional encoding (the lineage's pe_scale_factor). The table is stored with the
    # weights, as the lineage stores it: a checkpoint's table wins over this key.
    _X.PE_SCALE = 0.1
    rules("TRX", OUT_DIM=POSITIVE, CARDINALITIES=both(Rule("a non-empty list", lambda v: len(v) > 0),
                                                      each(POSITIVE)),
          DROPOUT=PROBABILITY, PE_SCALE=NON_NEGATIVE)


class TRXPositionalEncoding(nn.Module):
    """x + scale * [sin, cos](position * 10000^(-2i/d)) interleaved over channels, then dropout (the lineage's
    PositionalEncoding; its table `pe` [1, max_len, d] is kept under the lineage's name)."""

    def __init__(self, dim: int, dropout: float, max_len: int, scale: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len)[:, None]  # [L, 1]
        frequency = torch.exp(torch.arange(0, dim, 2) * -(math.log(10000.0) / dim))  # [ceil(d/2)]
        table = torch.zeros(max_len, dim)
        table[:, 0::2] = torch.sin(position * frequency) * scale
        table[:, 1::2] = torch.cos(position * frequency[:dim // 2]) * scale
        self.register_buffer("pe", table[None])

    def forward(self, x: Tensor) -> Tensor:  # [B, T, d]
        return self.dropout(x + self.pe[:, :x.shape[1]])


class TemporalCrossTransformer(nn.Module):
    """One tuple cardinality: queries' k-frame tuples against each class's support tuples -> logits [Q, WAY]."""

    def __init__(self, in_dim: int, out_dim: int, num_frames: int, cardinality: int, dropout: float,
                 pe_scale: float = 0.1):
        super().__init__()
        if not 0 < cardinality <= num_frames:
            raise ConfigError(f"TRX.CARDINALITIES: a {cardinality}-frame tuple does not fit DATA.NUM_INPUT_FRAMES "
                              f"{num_frames} (use sizes from 1 to {num_frames})")
        self.out_dim = out_dim
        self.pe = TRXPositionalEncoding(in_dim, dropout, int(num_frames * 1.5), pe_scale)
        self.k_linear = nn.Linear(in_dim * cardinality, out_dim)
        self.v_linear = nn.Linear(in_dim * cardinality, out_dim)
        self.norm_k = nn.LayerNorm(out_dim)
        self.norm_v = nn.LayerNorm(out_dim).requires_grad_(False)  # built, never applied (the lineage's)
        # Every ordered k-tuple of frame indices, in itertools order (the lineage's `tuples`): [n, k].
        self.register_buffer("tuples", torch.tensor(list(combinations(range(num_frames), cardinality))))

    def tuple_features(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """frames [B,T,d] -> (keys, values) [B, n, out_dim] of its frame tuples."""
        tuples = self.pe(frames)[:, self.tuples].flatten(2)  # [B, n, k*d], frames concatenated in tuple order
        return self.norm_k(self.k_linear(tuples)), self.v_linear(tuples)

    def forward(self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int) -> Tensor:
        support_k, support_v = self.tuple_features(support)  # [S, n, o]
        query_k, query_v = self.tuple_features(queries)  # [Q, n, o]
        num_tuples = query_k.shape[1]
        logits = []
        for label in range(way):
            members = support_labels == label
            class_k, class_v = support_k[members], support_v[members]  # [K, n, o]
            scores = torch.einsum("qid,kjd->qikj", query_k, class_k) / math.sqrt(self.out_dim)  # [Q, n, K, n]
            # each query tuple's softmax runs over every tuple of every support of the class together
            attention = scores.flatten(2).softmax(dim=-1).view_as(scores)
            prototype = torch.einsum("qikj,kjd->qid", attention, class_v)  # [Q, n, o] query-specific prototypes
            logits.append(-(query_v - prototype).pow(2).sum(dim=(1, 2)) / num_tuples)
        return torch.stack(logits, dim=1)  # [Q, WAY]


@HEAD_REGISTRY.register()
class CNN_TRX(FrameFeatureHead):  # noqa: N801  (the lineage's registered name)
    """Temporal cross transformers over frame tuples of several cardinalities; logits averaged over them."""

    reads_sections = ("TRX",)

    def __init__(self, *, backbone: nn.Module, transformers: list[TemporalCrossTransformer]):
        super().__init__(backbone)
        self.transformers = nn.ModuleList(transformers)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone, trx = build_frame_backbone(cfg), cfg.TRX
        transformers = [TemporalCrossTransformer(int(backbone.embed_dim), trx.OUT_DIM, cfg.DATA.NUM_INPUT_FRAMES,
                                                 size, trx.DROPOUT, trx.PE_SCALE) for size in trx.CARDINALITIES]
        return dict(backbone=backbone, transformers=transformers)

    def forward(self, episode: Episode, features: tuple[VideoFeatures, VideoFeatures] | None = None) -> dict[str, Any]:
        support, query = self.episode_frames(episode, features)  # [S,T,D], [Q,T,D]
        labels = episode.support_labels.long()
        logits = torch.stack([t(support, labels, query, episode.way) for t in self.transformers]).mean(0)
        output: dict[str, Any] = {"logits": logits, "losses": {}}
        if self.training:
            output["losses"] = {"trx_ce": F.cross_entropy(logits, episode.target_labels.long())}
            output["loss"] = output["losses"]["trx_ce"]
        return output

    def lineage_renames(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The lineage keeps each transformer's tuples as an nn.ParameterList (`transformers.{i}.tuples.{j}`, one
        index tensor each); ours is one [n, k] buffer `transformers.{i}.tuples`."""
        out: dict[str, Tensor] = {}
        lists: dict[str, dict[int, Tensor]] = {}
        for key, value in state.items():
            match = _TUPLE_ITEM.fullmatch(key)
            if match is None:
                out[key] = value
            else:
                lists.setdefault(match["i"], {})[int(match["j"])] = value
        for i, items in lists.items():
            if sorted(items) == list(range(len(items))):
                out[f"transformers.{i}.tuples"] = torch.stack([items[j] for j in range(len(items))])
            else:  # gaps: left as they are, to show in the key diff
                out.update({f"transformers.{i}.tuples.{j}": v for j, v in items.items()})
        return out
