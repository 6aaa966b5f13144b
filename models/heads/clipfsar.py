"""CLIP-FSAR head (CNN_OTAM_CLIPFSAR): CLIP frame features, text prototype modulation, bidirectional OTAM.

The recipe of parts (models/heads/prototype.py) whose support text token is the class's fixed prompt embedding.

Per episode: one backbone pass over support and query frames; a temporal transformer (CLIP-FSAR's Transformer_v1)
over each query's frames and over each support's frames plus one class-text token ("a photo of {name}" through the
frozen text encoder); shots averaged per class (before the transformer with MERGE_BEFORE); frame distances 1 - cos
with CLIP-FSAR's cos_sim, x.y / (|x||y| + 0.01); OTAM distance in both directions; logits = -distance. Training
adds USE_CLASSIFICATION_VALUE * CE of video-text logits over all classes of the split (learnable scale). At test
time EVAL_TEXT / COMBINE use the text logits as CLIP-FSAR does. Nothing computed for queries reads their labels:
only the loss uses target labels. CLIP-FSAR's own checkpoints load through models/heads/clipfsar_checkpoint.py
(`PrototypeHead.state_from_checkpoint`).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from models.build import HEAD_REGISTRY
from models.clip import CLIPBackbone
from models.heads.base import VideoFeatures
from models.heads.parts_from_config import build_prototype_parts, build_vfam
from models.heads.prototype import ClassTerms, PrototypeHead
from utils.config import CfgNode
from utils.episode import Episode


@HEAD_REGISTRY.register()
class CNN_OTAM_CLIPFSAR(PrototypeHead):  # noqa: N801  (the lineage's registered name)
    """CLIP-FSAR: each support's text token is its class's "a photo of {name}" embedding (frozen text encoder)."""

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = CLIPBackbone(**CLIPBackbone.from_config(cfg))
        return build_prototype_parts(cfg, backbone, build_vfam(cfg, backbone))

    def encode_videos(self, videos: Tensor, boxes: Tensor | None = None,
                      box_mask: Tensor | None = None) -> dict[str, Tensor]:
        """videos [B,T,3,H,W] (+ track boxes [B,T,K,4] / mask [B,T,K] for VFAM) -> "frames" [B,T,F] descriptors,
        "video_text" [B,T,D] joint-space embeddings and VFAM's inputs (models/heads/parts.py:FrameEncoder)."""
        videos = self.backbone.normalise(videos)  # uint8 pixels (exact crops) -> the tower's input
        return self.frame_encoder.encode(self.backbone, self.vfam, videos, boxes, box_mask)

    def class_terms(self, support: VideoFeatures, query: VideoFeatures, episode: Episode) -> ClassTerms:
        class_text = self.class_text_features(episode.class_names)  # [WAY, D]
        return ClassTerms(support_text=class_text[episode.support_labels.long()])

    def fixed_support_text(self, class_names: list[str]) -> Tensor:
        return self.class_text_features(class_names)
