"""Prototype-modulation heads composed of parts (models/heads/parts.py): the episode flow CLIP-FSAR defines and
every recipe here shares. The head is handed its parts (built from config in models/heads/parts_from_config.py); a
recipe (models/heads/clipfsar.py, models/heads/mcdp.py) says where each support's class-text token comes from
(`class_terms`); nothing in this class exists for one recipe only. Checkpoints of the flow in CLIP-FSAR's own format
load through `state_from_checkpoint` (models/heads/clipfsar_checkpoint.py).

Flow: encode the videos (or take the feature cache's); the recipe's class terms (support text tokens, optional
extra logits and losses); queries through the temporal transformer, supports with their class-text token through
it (prototype modulation), shots averaged per class; OTAM distances; logits = extra - distance. Only the support
labels enter any of this: the query labels are read by the losses alone.
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.clip import CLIPBackbone
from models.heads.base import FewShotHead, VideoFeatures
from models.heads.clipfsar_checkpoint import convert_lineage_state
from models.heads.parts import (
    ClassTextSource,
    FrameEncoder,
    OTAMMatcher,
    TemporalModulator,
    TextEvalRule,
    VideoTextLoss,
    class_codes,
    class_means,
)
from models.text_cache import ClassTextCache
from models.vfam import VFAM
from utils.episode import Episode

# The names under which `per_video_outputs` stores a video's eval-time outputs, read back from VideoFeatures.cached.
QUERY_TOKENS, SUPPORT_TOKENS = "query_tokens", "support_tokens"


@dataclass
class ClassTerms:
    """What a recipe adds to the shared flow for one episode."""
    support_text: Tensor  # [S, D] each support's class-text token (before text_proj)
    extra_logits: Tensor | None = None  # [Q, WAY] added to -OTAM distance
    video_class_text: Tensor | None = None  # [S+Q, N_split, D] per-video class texts for the video-text loss
    losses: dict[str, Tensor] = field(default_factory=dict)  # the recipe's own losses (training)
    outputs: dict[str, Any] = field(default_factory=dict)  # diagnostics returned with the logits


def _clear_text_cache_after_load(module: PrototypeHead, incompatible_keys: Any) -> None:
    module.clear_text_cache()


class PrototypeHead(FewShotHead):
    supports_feature_cache = True  # every video is encoded on its own (FrameEncoder)

    def __init__(self, *, backbone: CLIPBackbone, frame_encoder: FrameEncoder, temporal: TemporalModulator,
                 class_text: ClassTextSource, matcher: OTAMMatcher, text_eval: TextEvalRule,
                 video_text_loss: VideoTextLoss | None = None, frame_proj: nn.Module | None = None,
                 text_proj: nn.Module | None = None, vfam: VFAM | None = None):
        """The parts (built from config by models/heads/parts_from_config.py:build_prototype_parts). `frame_proj`
        maps the frame encoder's descriptors to the transformer's width and `text_proj` a class text to it (None:
        as they are, the lineage's case); `vfam` fuses tracked-entity context into the descriptors (VFAM.ENABLE; its
        gate starts at 0); `video_text_loss` None trains without it (USE_CLASSIFICATION off or weight 0)."""
        super().__init__()
        # Modules in the order of the recorded checkpoints (their keys, and the optimizer's parameter order).
        self.backbone = backbone
        self.frame_proj = nn.Identity() if frame_proj is None else frame_proj
        self.vfam = vfam
        self.text_proj = nn.Identity() if text_proj is None else text_proj
        self.temporal = temporal
        self.frame_encoder, self.class_text, self.matcher = frame_encoder, class_text, matcher
        self.text_eval, self.video_text_loss = text_eval, video_text_loss
        # CLIP-FSAR's learnable `scale` (init 1). Only the video-text loss trains it; frozen otherwise so that
        # no trainable parameter goes without a gradient.
        self.text_logit_scale = nn.Parameter(torch.ones(()), requires_grad=video_text_loss is not None)
        # Loaded weights may change the text tower; cached class texts would then be stale.
        self.register_load_state_dict_post_hook(_clear_text_cache_after_load)

    @property
    def model_dim(self) -> int:
        """Width of the temporal transformer (the frame descriptors after `frame_proj`)."""
        return self.temporal.dim

    @property
    def uses_tracks(self) -> bool:
        return self.vfam is not None

    @property
    def may_leave_parameters_unused(self) -> bool:
        """Every trainable parameter of these heads gets a gradient each step (text_logit_scale and
        fusion_logit_scale are frozen where their term is off), except one case: a ResNet tower with the patch-map
        descriptor reads its attention pool's value path only, so the pool's q/k projections (trainable unless the
        tower is frozen) get none. tests/test_head_contract.py checks the declaration against a backward pass."""
        if self.frame_encoder.frame_feature != "patch_map" or self.backbone.is_vit:
            return False
        return any(p.requires_grad for p in self.backbone.model.visual.attnpool.parameters())

    @property
    def text_cache(self) -> ClassTextCache:
        return self.class_text.cache

    def clear_text_cache(self) -> None:
        self.text_cache.clear()

    def class_text_features(self, names: list[str]) -> Tensor:
        """[N, D] fixed class-text features of `names` (the class-text source's, on the head's device)."""
        return self.class_text.features(self.backbone, list(names), self.text_logit_scale.device)

    def state_from_checkpoint(self, checkpoint: Mapping, source: str) -> Mapping[str, Tensor]:
        """Ours as stored, or CLIP-FSAR's own `.pyth` with its names mapped to ours (the flow's parameters are its
        head's); a checkpoint of our temporal block from before it was CLIP-FSAR's is refused (retrain)."""
        converted = convert_lineage_state(checkpoint, self, source)
        return super().state_from_checkpoint(checkpoint, source) if converted is None else converted

    # ------------------------------------------------------------------ what a recipe supplies
    @abstractmethod
    def class_terms(self, support: VideoFeatures, query: VideoFeatures, episode: Episode) -> ClassTerms:
        """Each support's class-text token and the recipe's extra logits / losses for one episode."""

    @abstractmethod
    def fixed_support_text(self, class_names: list[str]) -> Tensor | None:
        """[S, D] the supports' class-text tokens given each one's class, when they depend on nothing else (the
        feature cache may then keep modulated supports); None when they depend on the episode."""

    # ------------------------------------------------------------------ the shared flow
    def frame_descriptors(self, encoded: dict[str, Tensor]) -> Tensor:
        """[B,T,d] transformer inputs: descriptors with VFAM's entity context fused in, with their change to the next
        frame (FRAME_MOTION difference), then projected."""
        frames = encoded["frames"]
        if self.vfam is not None:
            frames = self.vfam(encoded["frame_global"], frames, encoded["entity_feats"], encoded["entity_mask"],
                               encoded.get("entity_motion"))
        return self.frame_proj(self.frame_encoder.add_motion(frames))

    def forward(self, episode: Episode, features: tuple[VideoFeatures, VideoFeatures] | None = None) -> dict[str, Any]:
        support, query = features if features is not None else self.encode_episode(episode)
        terms = self.class_terms(support, query, episode)
        logits, dists = self.match(support, query, episode.support_labels.long(), episode.way, terms)
        if not self.training and self.text_eval.active:
            query_text = query.encoded["video_text"].float().mean(1)  # [Q, D]
            logits = self.text_eval(self.text_logit_scale, dists, query_text,
                                    self.class_text_features(episode.class_names), query.encoded["frames"].shape[1])
        output: dict[str, Any] = {"logits": logits, "losses": {}, **terms.outputs}
        if self.training:
            output["losses"] = {**self.losses(logits, support, query, episode, terms.video_class_text), **terms.losses}
            output["loss"] = sum(output["losses"].values())
        return output

    def match(self, support: VideoFeatures, query: VideoFeatures, support_labels: Tensor, way: int,
              terms: ClassTerms) -> tuple[Tensor, Tensor]:
        """(logits, OTAM distances) [Q, WAY] from the supports, their labels and the class terms: the queries
        enter through their features only."""
        queries = query.cached.get(QUERY_TOKENS)
        if queries is None:
            queries = self.temporal(self.frame_descriptors(query.encoded))
        if SUPPORT_TOKENS in support.cached:
            prototypes = class_means(support.cached[SUPPORT_TOKENS], support_labels, way)
        else:
            frames = self.frame_descriptors(support.encoded)
            text_tokens = None
            if self.temporal.text_token:
                text_tokens = self.text_proj(terms.support_text.to(frames.dtype))  # [S, d]
            prototypes = self.temporal.prototypes(frames, text_tokens, support_labels, way)
        dists = self.matcher(queries, prototypes)  # [Q, WAY]
        logits = -dists if terms.extra_logits is None else terms.extra_logits - dists
        return logits, dists

    def losses(self, logits: Tensor, support: VideoFeatures, query: VideoFeatures, episode: Episode,
               video_class_text: Tensor | None = None) -> dict[str, Tensor]:
        """CE of the logits over the episode's classes, plus the video-text loss (split classes, real labels)."""
        losses = {"otam_ce": F.cross_entropy(logits, episode.target_labels.long())}
        if self.video_text_loss is not None:
            video_text = torch.cat([support.encoded["video_text"], query.encoded["video_text"]]).float().mean(1)
            class_text = video_class_text
            if self.video_text_loss.targets == "orthogonal":  # one code per split class, by split index (a QR of N x D)
                class_text = class_codes(len(episode.split_class_names), video_text.shape[1]).to(video_text.device)
            elif class_text is None:
                class_text = self.class_text_features(episode.split_class_names)  # [N_split, D]
            real_labels = torch.cat([episode.real_support_labels, episode.real_target_labels])
            losses["video_text_ce"] = self.video_text_loss(self.text_logit_scale, video_text, class_text, real_labels)
        return losses

    # ------------------------------------------------------------------ per-video outputs (eval feature cache)
    @torch.no_grad()
    def per_video_outputs(self, encoded: dict[str, Tensor], class_names: list[str] | None = None) -> dict[str, Tensor]:
        """Videos as queries (`class_names` None): their frames after the temporal transformer. Videos as supports
        (`class_names`: each one's own class): their frames modulated by their class's text token, when that token
        is fixed and shots are merged after the transformer; else nothing."""
        if self.training:
            raise RuntimeError("models/heads/prototype.py: per_video_outputs is for eval mode (trainable graph)")
        if class_names is None:
            return {QUERY_TOKENS: self.temporal(self.frame_descriptors(encoded))}
        if self.temporal.merge_before:
            return {}
        frames = self.frame_descriptors(encoded)
        if not self.temporal.text_token:
            return {SUPPORT_TOKENS: self.temporal.modulate(frames, None)}
        support_text = self.fixed_support_text(class_names)
        if support_text is None:
            return {}
        return {SUPPORT_TOKENS: self.temporal.modulate(frames, self.text_proj(support_text.to(frames.dtype)))}
