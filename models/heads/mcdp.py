"""MCDP-FSAR head (MCDP_FSAR): CLIP-FSAR's parts with VFAM and AMCAP (docs/design.md §6).

A recipe of the prototype-modulation parts (models/heads/prototype.py), as CNN_OTAM_CLIPFSAR is, plus AMCAP's
dynamic class text and the fused query-vs-text logits (`DynamicClassText`).
- VFAM (VFAM.ENABLE, a part of every prototype head): tracked-entity context fused into the frame descriptors.
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
from models.clip import CLIPBackbone
from models.heads.base import VideoFeatures
from models.heads.parts_from_config import build_prototype_parts, build_vfam
from models.heads.prototype import ClassTerms, PrototypeHead
from models.text_cache import ClassTextCache
from utils.config import NON_NEGATIVE, CfgNode, rules, section
from utils.episode import Episode
from utils.seeding import episode_seed


def add_mcdp_config(cfg: CfgNode) -> None:
    _M = section(cfg, "MCDP")
    _M.FUSION_WEIGHT = 1.0  # weight of the query-vs-dynamic-text logits added to -OTAM distance (0: OTAM only)
    rules("MCDP", FUSION_WEIGHT=NON_NEGATIVE)


class DynamicClassText:
    """The MCDP part on top of AMCAP's output: each support's own dynamic class text, the query-vs-dynamic-text
    logits fused into the OTAM logits, and the per-video class texts of the video-text loss. No parameters (the
    fusion scale is the head's, under its checkpoint name)."""

    def __init__(self, fusion_weight: float):
        self.fusion_weight = fusion_weight

    @staticmethod
    def own_text(support_text: Tensor, support_labels: Tensor) -> Tensor:
        """[S, D] each support's class text, from [WAY, D] (per class) or [S, WAY, D] (per support video)."""
        if support_text.dim() == 2:
            return support_text[support_labels]
        return support_text[torch.arange(len(support_labels), device=support_labels.device), support_labels]

    def fusion_logits(self, scale: Tensor, query_video: Tensor, query_text: Tensor) -> Tensor | None:
        """[Q, WAY] weight * scale * cos(query video, its own label-free dynamic text per class); None at weight 0."""
        if not self.fusion_weight:
            return None
        cos = torch.einsum("qd,qcd->qc", F.normalize(query_video.float(), dim=-1),
                           F.normalize(query_text.float(), dim=-1))
        return self.fusion_weight * scale * cos

    @staticmethod
    def video_class_text(split_text: Tensor, support_text: Tensor, query_text: Tensor, support_labels: Tensor,
                         real_support_labels: Tensor) -> Tensor:
        """[S+Q, N_split, D]: the fixed prompt of every split class, with the episode's classes replaced by
        each video's dynamic text (supports: their class's / their own, queries: their own label-free one)."""
        num_support, way = len(support_labels), query_text.shape[1]
        if support_text.dim() == 2:
            support_text = support_text[None].expand(num_support, -1, -1)
        dynamic = torch.cat([support_text, query_text]).to(split_text.dtype)  # [S+Q, WAY, D]
        real_ids = torch.zeros(way, dtype=torch.long, device=split_text.device)
        real_ids[support_labels] = real_support_labels.long().to(split_text.device)
        texts = split_text[None].expand(dynamic.shape[0], -1, -1).clone()
        texts[:, real_ids] = dynamic
        return texts


@HEAD_REGISTRY.register()
class MCDP_FSAR(PrototypeHead):  # noqa: N801  (registered name)
    reads_sections = ("AMCAP", "MCDP")

    def __init__(self, *, amcap: AMCAP | None = None, dynamic_text: DynamicClassText | None = None, seed: int = 0,
                 **parts: Any):
        """The prototype parts (models/heads/prototype.py), AMCAP (None: off), its fusion (`dynamic_text`, default
        weight 1) and the seed of AMCAP's per-episode coalitions."""
        super().__init__(**parts)
        if amcap is not None:
            if not self.frame_encoder.keep_tokens:
                raise ValueError("models/heads/mcdp.py: AMCAP reads each video's dense token grid; build the frame "
                                 "encoder with keep_tokens=True")
            if self.class_text.cache is not amcap.text_cache:
                raise ValueError("models/heads/mcdp.py: the class-text source and AMCAP must share one class-text "
                                 "cache (loaded weights clear it once for both)")
        self.amcap, self.seed = amcap, seed
        self.dynamic_text = DynamicClassText(1.0) if dynamic_text is None else dynamic_text
        # Scale of the fused cosine logits (CLIP-FSAR's text scale starts at 1 too); trained only when used.
        self.fusion_logit_scale = nn.Parameter(
            torch.ones(()), requires_grad=amcap is not None and self.dynamic_text.fusion_weight != 0)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = CLIPBackbone(**CLIPBackbone.from_config(cfg))
        vfam = build_vfam(cfg, backbone)
        text_cache = ClassTextCache()  # shared by the head's class-text source and AMCAP
        amcap = None  # built before the prototype parts: the order a seeded init draws in (parts_from_config.py)
        if cfg.AMCAP.ENABLE:
            amcap = AMCAP(**AMCAP.from_config(cfg, backbone.embed_dim, backbone.text_width), text_cache=text_cache)
        parts = build_prototype_parts(cfg, backbone, vfam, keep_tokens=amcap is not None, text_cache=text_cache)
        return dict(parts, amcap=amcap, dynamic_text=DynamicClassText(cfg.MCDP.FUSION_WEIGHT), seed=cfg.RANDOM_SEED)

    def encode_videos(self, videos: Tensor, boxes: Tensor | None = None,
                      box_mask: Tensor | None = None) -> dict[str, Tensor]:
        """The CLIP-FSAR features (models/heads/parts.py:FrameEncoder); AMCAP's dense token grids are kept only as
        what it reads (key frames and the mean over frames: "amcap_key_tokens" [B,K,h,w,D], "amcap_mean_tokens"
        [B,h,w,D], the video's CLIP embedding per key frame "amcap_anchor_global" [B,K,D], for masked regions the key
        frames' images "amcap_key_images" [B,K,3,H,W], for motion-ranked regions "amcap_token_motion" [B,h,w])."""
        videos = self.backbone.normalise(videos)  # uint8 pixels (exact crops) -> the tower's input
        feats = self.frame_encoder.encode(self.backbone, self.vfam, videos, boxes, box_mask)
        if self.amcap is not None:
            frame_global = feats["frame_global"] if self.vfam is not None else feats.pop("frame_global")
            summary = self.amcap.video_tokens(feats.pop("tokens"), frame_global, videos)
            feats["amcap_key_tokens"], feats["amcap_mean_tokens"] = summary.key, summary.mean
            feats["amcap_anchor_global"] = summary.anchor_global
            if summary.key_images is not None:  # AMCAP.REGION_FEATURE masked
                feats["amcap_key_images"] = summary.key_images
            if summary.motion is not None:  # AMCAP.REGION_SCORE / SALIENCY motion
                feats["amcap_token_motion"] = summary.motion
        return feats

    def fixed_support_text(self, class_names: list[str]) -> Tensor | None:
        # AMCAP's support text depends on the episode's classes and coalitions.
        return self.class_text_features(class_names) if self.amcap is None else None

    def class_terms(self, support: VideoFeatures, query: VideoFeatures, episode: Episode) -> ClassTerms:
        support_labels = episode.support_labels.long()
        if self.amcap is None:
            return ClassTerms(support_text=self.class_text_features(episode.class_names)[support_labels])
        # Coalitions are drawn per episode, so an episode's output never depends on what ran before it.
        generator = torch.Generator().manual_seed(
            episode_seed(self.seed, f"amcap/{episode.split}", int(episode.episode_index)))
        support_tokens, query_tokens = (
            VideoTokens(key=f.encoded["amcap_key_tokens"], mean=f.encoded["amcap_mean_tokens"],
                        anchor_global=f.encoded["amcap_anchor_global"], key_images=f.encoded.get("amcap_key_images"),
                        motion=f.encoded.get("amcap_token_motion"))
            for f in (support, query))
        dynamic = self.amcap(self.backbone, support_tokens, query_tokens, episode.class_names, support_labels,
                             generator)
        support_text = dynamic["support_text"]  # [WAY, D] per class, or [S, WAY, D] per support video
        query_video = query.encoded["video_text"].float().mean(1)  # [Q, D]
        terms = ClassTerms(support_text=self.dynamic_text.own_text(support_text, support_labels),
                           extra_logits=self.dynamic_text.fusion_logits(self.fusion_logit_scale, query_video,
                                                                        dynamic["query_text"]),
                           outputs={"amcap_regions": dynamic["regions"]})
        if self.training and self.video_text_loss is not None:
            terms.video_class_text = self.dynamic_text.video_class_text(
                self.class_text_features(episode.split_class_names), support_text, dynamic["query_text"],
                support_labels, episode.real_support_labels)
        if self.training and self.amcap.align_loss_weight > 0:
            terms.losses["amcap_align"] = dynamic["align_loss"]
        return terms
