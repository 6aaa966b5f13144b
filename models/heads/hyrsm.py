"""The lineage's HyRSM head (Wang et al., "Hybrid relation guided set matching for few-shot action recognition",
CVPR 2022), as CLIP-FSAR's codebase computes it (models/base/few_shot.py: CNN_HyRSM_1shot, CNN_HyRSM_5shot,
PositionalEncoder, PreNormattention + Attention, MultiHeadAttention).

Per episode: per-frame features (models/heads/frame_head.py), scaled by sqrt(D / 10), plus a sinusoidal positional
encoding, dropout 0.1; a pre-norm self-attention over each video's frames (8 heads, dropout 0.2 on its output) and a
ReLU (intra-relation; supports, then queries). For each query, the set of its support videos' mean frames (the
lineage's 1-shot class; its 5-shot class first averages each class's shots into one) and its own mean frame goes
through a post-norm multi-head attention (dropout 0.1 on the attention weights, 0.05 on the output) and a ReLU
(inter-relation); each video's frames are concatenated with its set output and mapped back by a 1x1 convolution.
Frame distances are 1 - cosine; a video pair's distance is the bidirectional mean Hausdorff sum, sum over support
frames of the nearest query frame plus the reverse; a class's distance is the mean over its set members; logits =
-distance. Training: CE of the logits plus USE_CLASSIFICATION_VALUE x CE of a linear classifier on every
intra-related frame of every support and query over the training split's classes (each frame labelled with its
video's class; the lineage needs TRAIN.USE_LOCAL for those per-frame labels). Only the losses read query labels.

One head, parametrised by shot handling: `CNN_HyRSM_1shot` (every support video in the set, distances averaged per
class) and `CNN_HyRSM_5shot` (class prototypes in the set) register the lineage's two classes; on 1-shot episodes they
compute the same.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones import build_frame_backbone
from models.build import HEAD_REGISTRY
from models.heads.base import VideoFeatures
from models.heads.frame_head import FrameFeatureHead
from models.heads.parts import TemporalAttention, class_means
from utils.config import POSITIVE, CfgNode, ConfigError, rules, section
from utils.episode import Episode

# The lineage's hard-coded dropouts.
PE_DROPOUT, FRAME_ATTENTION_DROPOUT, SET_ATTENTION_WEIGHT_DROPOUT, SET_ATTENTION_DROPOUT = 0.1, 0.2, 0.1, 0.05
PE_MAX_LEN = 20  # rows of the lineage's positional-encoding table (stored with the weights)


def add_hyrsm_config(cfg: CfgNode) -> None:
    _Y = section(cfg, "HYRSM")
    _Y.HEADS = 8  # heads of both attention layers (the lineage's TRAIN.HEAD; 8 where absent)
    _Y.POSITION_A = 10.0  # frames are scaled by sqrt(D / POSITION_A) before the encoding (TRAIN.POSITION_A; 10)
    _Y.POSITION_B = 1.0  # factor on the positional encoding (the lineage's TRAIN.POSITION_B; 1 where absent)
    rules("HYRSM", HEADS=POSITIVE, POSITION_A=POSITIVE)
    _T = section(cfg, "TRAIN")
    # Classes of the training split: the width of the frame classifier of the heads with a classification loss
    # (HyRSM); the lineage's TRAIN.NUM_CLASS, 64 where absent. A split with more classes stops at the first step.
    _T.NUM_CLASS = 64
    rules("TRAIN", NUM_CLASS=POSITIVE)


class HyRSMPositionalEncoding(nn.Module):
    """x * sqrt(d / a) + b * pe[:T], then dropout (the lineage's PositionalEncoder). Its table keeps the lineage's
    formula: even channel i holds sin(pos / 10000^(2i/d)), odd channel i+1 cos(pos / 10000^(2(i+1)/d))."""

    def __init__(self, dim: int, a_scale: float = 10.0, b_scale: float = 1.0, max_len: int = PE_MAX_LEN,
                 dropout: float = PE_DROPOUT):
        super().__init__()
        self.dim, self.a_scale, self.b_scale = dim, a_scale, b_scale
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len, dtype=torch.float64)[:, None]
        even = torch.arange(0, dim, 2, dtype=torch.float64)
        table = torch.zeros(max_len, dim, dtype=torch.float64)
        table[:, 0::2] = torch.sin(position / 10000 ** (2 * even / dim))
        table[:, 1::2] = torch.cos(position / 10000 ** (2 * (even + 1) / dim))[:, :dim // 2]
        self.register_buffer("pe", table.float()[None])

    def forward(self, x: Tensor) -> Tensor:  # [B, T, d]
        x = x * math.sqrt(self.dim / self.a_scale)
        return self.dropout(x + self.b_scale * self.pe[:, :x.shape[1]])


class PreNormSelfAttention(nn.Module):
    """x + attention(LayerNorm(x)) (the lineage's PreNormattention(Attention): fused q/k/v without bias, output
    projection with dropout; models/heads/parts.py:TemporalAttention computes it)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = TemporalAttention(dim, heads, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(self.norm(x)) + x


class SetAttention(nn.Module):
    """LayerNorm(x + dropout(out_proj(attention(x)))) with dropout on the attention weights (the lineage's
    MultiHeadAttention as self-attention, its initialisation included). Heads are laid out head-major, as the
    lineage's, so that its dropout draws fall on the same weights."""

    def __init__(self, dim: int, heads: int, weight_dropout: float = SET_ATTENTION_WEIGHT_DROPOUT,
                 dropout: float = SET_ATTENTION_DROPOUT):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"HYRSM.HEADS: the frame width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.normal_(proj.weight, mean=0, std=math.sqrt(2.0 / (dim + self.head_dim)))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.out_proj.weight)
        self.norm = nn.LayerNorm(dim)
        self.weight_dropout, self.dropout = nn.Dropout(weight_dropout), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # [B, L, dim]
        batch, length, dim = x.shape

        def split(t: Tensor) -> Tensor:  # [B, L, dim] -> [heads, B, L, head_dim]
            return t.view(batch, length, self.heads, self.head_dim).permute(2, 0, 1, 3)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        weights = self.weight_dropout((q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)).softmax(dim=-1))
        out = (weights @ v).permute(1, 2, 0, 3).reshape(batch, length, dim)  # heads concatenated per position
        return self.norm(self.dropout(self.out_proj(out)) + x)


class CNN_HyRSM(FrameFeatureHead):  # noqa: N801  (the lineage's naming)
    """Hybrid relation module and bidirectional mean Hausdorff set matching; registered as its two lineage classes."""

    reads_sections = ("HYRSM",)
    merge_shots = False  # the set holds class prototypes (the lineage's 5-shot class) instead of support videos

    def __init__(self, *, backbone: nn.Module, heads: int = 8, position_a: float = 10.0, position_b: float = 1.0,
                 num_classes: int = 64, classification_weight: float = 0.0):
        super().__init__(backbone)
        dim = self.feature_dim
        if dim % heads:  # before TemporalAttention, whose own check names the prototype heads' key
            raise ConfigError(f"HYRSM.HEADS: the frame width {dim} is not divisible by {heads} heads")
        self.pe = HyRSMPositionalEncoding(dim, position_a, position_b)
        self.frame_attention = PreNormSelfAttention(dim, heads, FRAME_ATTENTION_DROPOUT)
        self.set_attention = SetAttention(dim, heads)
        self.fuse = nn.Conv1d(2 * dim, dim, kernel_size=1)  # a video's frames with its set output, back to dim
        self.frame_classifier = nn.Linear(dim, num_classes)
        self.classification_weight = classification_weight
        # Only the classification loss trains the classifier: frozen without it, so no parameter lacks a gradient.
        self.frame_classifier.requires_grad_(classification_weight != 0)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        hyrsm, train = cfg.HYRSM, cfg.TRAIN
        if cfg.DATA.NUM_INPUT_FRAMES > PE_MAX_LEN:
            raise ConfigError(f"DATA.NUM_INPUT_FRAMES {cfg.DATA.NUM_INPUT_FRAMES}: HyRSM's positional table has "
                              f"{PE_MAX_LEN} rows (the lineage's); use at most {PE_MAX_LEN} frames")
        weight = train.USE_CLASSIFICATION_VALUE if train.USE_CLASSIFICATION else 0.0
        return dict(backbone=build_frame_backbone(cfg), heads=hyrsm.HEADS, position_a=hyrsm.POSITION_A,
                    position_b=hyrsm.POSITION_B, num_classes=train.NUM_CLASS, classification_weight=weight)

    def intra_relation(self, frames: Tensor) -> Tensor:
        """[B,T,D] -> [B,T,D]: each video's frames related to each other."""
        return F.relu(self.frame_attention(self.pe(frames)))

    def set_matching(self, members: Tensor, query: Tensor) -> Tensor:
        """members [n,T,D], query [Q,T,D] -> video distances [Q, n] after the inter-relation of each query's set."""
        num_queries, num_members = query.shape[0], members.shape[0]
        members_per_query = members[None].expand(num_queries, *members.shape)  # [Q, n, T, D]
        sets = torch.cat([members_per_query.mean(2), query.mean(1)[:, None]], dim=1)  # [Q, n+1, D]
        related = F.relu(self.set_attention(sets))  # [Q, n+1, D]
        members = self.fused(members_per_query, related[:, :num_members])  # [Q, n, T, D]
        query = self.fused(query, related[:, num_members])  # [Q, T, D]
        similarity = torch.einsum("qntd,qjd->qntj", F.normalize(members, dim=-1), F.normalize(query, dim=-1))
        dists = 1 - similarity  # [Q, n, T_member, T_query]
        return dists.min(dim=3).values.sum(dim=2) + dists.min(dim=2).values.sum(dim=2)

    def fused(self, frames: Tensor, context: Tensor) -> Tensor:
        """frames [..., T, D] with one context vector [..., D] each -> [..., T, D] through the 1x1 convolution."""
        joined = torch.cat([frames, context[..., None, :].expand_as(frames)], dim=-1)  # [..., T, 2D]
        flat = joined.reshape(-1, *joined.shape[-2:]).transpose(1, 2)  # [N, 2D, T]
        return self.fuse(flat).transpose(1, 2).reshape(frames.shape)

    def forward(self, episode: Episode, features: tuple[VideoFeatures, VideoFeatures] | None = None) -> dict[str, Any]:
        support, query = self.episode_frames(episode, features)  # [S,T,D], [Q,T,D]
        support, query = self.intra_relation(support), self.intra_relation(query)
        labels, way = episode.support_labels.long(), episode.way
        members, member_labels = support, labels
        if self.merge_shots:
            members, member_labels = class_means(support, labels, way), torch.arange(way, device=labels.device)
        video_dists = self.set_matching(members, query)  # [Q, n]
        logits = -class_means(video_dists.t(), member_labels, way).t()  # [Q, WAY]
        output: dict[str, Any] = {"logits": logits, "losses": {}}
        if self.training:
            output["losses"] = self.losses(logits, support, query, episode)
            output["loss"] = sum(output["losses"].values())
        return output

    def losses(self, logits: Tensor, support: Tensor, query: Tensor, episode: Episode) -> dict[str, Tensor]:
        losses = {"hyrsm_ce": F.cross_entropy(logits, episode.target_labels.long())}
        if self.classification_weight:
            frames = torch.cat([support, query])  # [S+Q, T, D]
            real = torch.cat([episode.real_support_labels, episode.real_target_labels]).long()
            num_classes = self.frame_classifier.out_features
            if int(real.max()) >= num_classes:
                raise ConfigError(f"TRAIN.NUM_CLASS {num_classes}: the {episode.split} split has "
                                  f"{len(episode.split_class_names)} classes (set it to that)")
            frame_logits = self.frame_classifier(frames).flatten(0, 1)  # [(S+Q)*T, NUM_CLASS]
            frame_labels = real.repeat_interleave(frames.shape[1])  # each frame labelled with its video's class
            losses["frame_class_ce"] = self.classification_weight * F.cross_entropy(frame_logits, frame_labels)
        return losses

    # The lineage's names (CNN_HyRSM_*) -> ours.
    _LINEAGE_PREFIXES = (
        ("temporal_atte_before.fn.to_qkv.", "frame_attention.attn.qkv."),
        ("temporal_atte_before.fn.to_out.0.", "frame_attention.attn.to_out."),
        ("temporal_atte_before.norm.", "frame_attention.norm."),
        ("temporal_atte.w_qs.", "set_attention.q_proj."), ("temporal_atte.w_ks.", "set_attention.k_proj."),
        ("temporal_atte.w_vs.", "set_attention.v_proj."), ("temporal_atte.fc.", "set_attention.out_proj."),
        ("temporal_atte.layer_norm.", "set_attention.norm."), ("layer2.0.", "fuse."),
        ("classification_layer.", "frame_classifier."))

    def lineage_renames(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for key, value in state.items():
            for theirs, ours in self._LINEAGE_PREFIXES:
                if key.startswith(theirs):
                    key = ours + key[len(theirs):]
                    break
            out[key] = value
        return out


@HEAD_REGISTRY.register()
class CNN_HyRSM_1shot(CNN_HyRSM):  # noqa: N801
    """The lineage's 1-shot class: every support video is a set member; a class's distance is its members' mean."""


@HEAD_REGISTRY.register()
class CNN_HyRSM_5shot(CNN_HyRSM):  # noqa: N801
    """The lineage's 5-shot class: each class's shots averaged into one set member first."""

    merge_shots = True
