"""MCDP-FSAR head (MCDP_FSAR): the CLIP-FSAR head with VFAM and AMCAP (docs/design.md §6).

- VFAM (VFAM.ENABLE, inherited from CNN_OTAM_CLIPFSAR): tracked-entity context fused into the frame descriptors.
- AMCAP (AMCAP.ENABLE): dynamic class text from Shapley regions. The supports' dynamic class text is the
  prototype-modulation token; each query's own label-free dynamic text gives query-vs-text logits added to the
  OTAM logits with weight MCDP.FUSION_WEIGHT; in the video-text loss the episode's classes use the dynamic texts.
With both modules off the head computes exactly what CNN_OTAM_CLIPFSAR computes.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.amcap import AMCAP, VideoTokens
from models.build import HEAD_REGISTRY
from models.heads.clipfsar import CNN_OTAM_CLIPFSAR
from utils.config import NON_NEGATIVE, CfgNode, rules, section
from utils.seeding import episode_seed


def add_mcdp_config(cfg: CfgNode) -> None:
    _M = section(cfg, "MCDP")
    _M.FUSION_WEIGHT = 1.0  # weight of the query-vs-dynamic-text logits added to -OTAM distance (0: OTAM only)
    rules("MCDP", FUSION_WEIGHT=NON_NEGATIVE)


@HEAD_REGISTRY.register()
class MCDP_FSAR(CNN_OTAM_CLIPFSAR):  # noqa: N801  (registered name)
    def __init__(self, *, amcap: AMCAP | None = None, fusion_weight: float = 1.0, seed: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.amcap, self.fusion_weight, self.seed = amcap, fusion_weight, seed
        self.needs_tokens = amcap is not None  # AMCAP reads each video's dense token grid
        # Scale of the fused cosine logits (CLIP-FSAR's text scale starts at 1 too); trained only when used.
        self.fusion_logit_scale = nn.Parameter(torch.ones(()), requires_grad=amcap is not None and fusion_weight != 0)

    def clear_text_cache(self) -> None:
        super().clear_text_cache()
        if getattr(self, "amcap", None) is not None:  # also called from loading hooks
            self.amcap.clear_text_cache()

    @property
    def static_support_text(self) -> bool:
        return self.amcap is None  # AMCAP's support text depends on the episode's classes and coalitions

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        kwargs = super().from_config(cfg)
        backbone = kwargs["backbone"]
        amcap = None
        if cfg.AMCAP.ENABLE:
            amcap = AMCAP(**AMCAP.from_config(cfg, backbone.embed_dim, backbone.text_width))
        return dict(kwargs, amcap=amcap, fusion_weight=cfg.MCDP.FUSION_WEIGHT, seed=cfg.RANDOM_SEED)

    def encode_videos(self, videos: Tensor, boxes: Tensor | None = None,
                      box_mask: Tensor | None = None) -> dict[str, Tensor]:
        """The CLIP-FSAR head's per-video features; AMCAP's dense token grids are kept only as what it reads
        (key frames and the mean over frames: "amcap_key_tokens" [B,K,h,w,D], "amcap_mean_tokens" [B,h,w,D])."""
        feats = super().encode_videos(videos, boxes, box_mask)
        if self.amcap is not None:
            summary = self.amcap.video_tokens(feats.pop("tokens"))
            feats["amcap_key_tokens"], feats["amcap_mean_tokens"] = summary.key, summary.mean
        return feats

    def forward_features(self, support_feats: dict[str, Tensor], target_feats: dict[str, Tensor],
                         episode: dict) -> dict[str, Any]:
        if self.amcap is None:
            return super().forward_features(support_feats, target_feats, episode)
        support_labels = episode["support_labels"].long()
        class_names = list(episode["class_names"])
        # Coalitions are drawn per episode, so an episode's output never depends on what ran before it.
        generator = torch.Generator().manual_seed(
            episode_seed(self.seed, f"amcap/{episode['split']}", int(episode["episode_index"])))
        support_tokens, query_tokens = (VideoTokens(key=f["amcap_key_tokens"], mean=f["amcap_mean_tokens"])
                                        for f in (support_feats, target_feats))
        dynamic = self.amcap(self.backbone, support_tokens, query_tokens, class_names, support_labels, generator)
        support_text = dynamic["support_text"]  # [WAY, D] per class, or [S, WAY, D] per support video
        if support_text.dim() == 2:
            own_text = support_text[support_labels]
        else:
            own_text = support_text[torch.arange(len(support_labels), device=support_labels.device), support_labels]
        query_video = target_feats["video_text"].float().mean(1)  # [Q, D]
        text_logits = torch.einsum("qd,qcd->qc", F.normalize(query_video, dim=-1),
                                   F.normalize(dynamic["query_text"].float(), dim=-1))  # [Q, WAY]
        extra = self.fusion_weight * self.fusion_logit_scale * text_logits if self.fusion_weight else None
        video_class_text = self._video_class_text(support_text, dynamic["query_text"], episode) \
            if self.training and self.use_text_loss else None
        output = self.episode_outputs(support_feats, target_feats, episode, own_text, extra, video_class_text)
        if self.training and self.amcap.align_loss_weight > 0:
            output["losses"]["amcap_align"] = dynamic["align_loss"]
            output["loss"] = sum(output["losses"].values())
        output["amcap_regions"] = dynamic["regions"]
        return output

    def _video_class_text(self, support_text: Tensor, query_text: Tensor, episode: dict) -> Tensor:
        """[S+Q, N_split, D]: the fixed prompt of every split class, with the episode's classes replaced by
        each video's dynamic text (supports: their class's / their own, queries: their own label-free one)."""
        split_text = self.class_text_features(list(episode["split_class_names"]))  # [N_split, D]
        support_labels = episode["support_labels"].long()
        num_support, way = len(support_labels), query_text.shape[1]
        if support_text.dim() == 2:
            support_text = support_text[None].expand(num_support, -1, -1)
        dynamic = torch.cat([support_text, query_text]).to(split_text.dtype)  # [S+Q, WAY, D]
        real_ids = torch.zeros(way, dtype=torch.long, device=split_text.device)
        real_ids[support_labels] = episode["real_support_labels"].long().to(split_text.device)
        texts = split_text[None].expand(dynamic.shape[0], -1, -1).clone()
        texts[:, real_ids] = dynamic
        return texts
