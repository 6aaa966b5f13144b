"""AMCAP: adaptive multi-modal contextual alignment prompting (docs/design.md §6, steps 1-7).

Per episode: Shapley interactions between adjacent grid cells on a few key frames (no gradient, one shared set of
coalitions) -> regions by merging positively interacting cells -> region features (differentiable) -> attention
between regions and each class's name tokens -> top-k salient regions with their aligned tokens -> the prompt
generator's context -> "[ctx...] {name}." through the frozen text encoder = dynamic class text features.
Queries only ever see label-free anchors (a soft maximum over the episode's class texts); supports may use their
own class text.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.amcap.prompts import TOKEN_FEATURES, ClassText, PromptGenerator, build_class_text, encode_prompts
from models.amcap.regions import (
    MERGE_RULES,
    REGION_SCORES,
    aligned_tokens,
    attention_scores,
    keep_top_regions,
    masked_region_values,
    partition_cells,
    region_features,
    region_interactions,
    region_motion,
    region_values,
    select_salient,
    slot_masks,
)
from models.amcap.shapley import (
    EMPTY_VALUES,
    cell_index_map,
    cosine_game_interactions,
    enumerate_coalitions,
    grid_adjacent_pairs,
    pool_cells,
    sample_coalitions,
)
from models.text_cache import ClassTextCache
from utils.config import NON_NEGATIVE, POSITIVE, CfgNode, one_of, rules, section

QUERY_ANCHORS = ("mean_token", "global")
REGION_FEATURES = ("tokens", "masked")
SALIENCIES = ("tokens", "value", "motion")


def add_amcap_config(cfg: CfgNode) -> None:
    _A = section(cfg, "AMCAP")
    _A.ENABLE = False  # add AMCAP's dynamic class prompts to the head
    _A.GRID = 4  # players: the patch-token grid split into GRID x GRID cells
    _A.NUM_COALITIONS = 64  # Monte Carlo coalitions per episode (shared by all pairs, frames and videos)
    _A.EXACT = False  # enumerate all 2^(GRID^2) coalitions instead (small grids / checks only)
    _A.KEY_FRAMES = 2  # frames (segment centres of the clip) on which interactions are computed
    _A.EMPTY_VALUE = "zero"  # v(empty coalition): "zero" or "singleton_mean" (mean single-cell value)
    _A.MERGE_THRESHOLD = 0.0  # adjacent cells merge when their interaction (mean over key frames) exceeds this
    # Which interactions join adjacent cells: "synergy" (> MERGE_THRESHOLD; docs/design.md §6 step 5) or
    # "redundancy" (< -MERGE_THRESHOLD). Under the cosine game two cells of one object that both match the anchor
    # substitute for each other (negative interaction), so synergy splits objects and joins background; measured
    # with `runs/visualize.py region-stats` on the world (docs/world.md).
    _A.MERGE_ON = "synergy"
    # Rank regions by "value" (cosine with the anchor), "interaction" (cohesion) or "motion" (how much the region's
    # dense tokens change between consecutive frames: where something moves; docs/world.md).
    _A.REGION_SCORE = "value"
    # What a region is to the rest of AMCAP (its value for ranking, its feature for saliency, alignment and the
    # prompt): "tokens", the mean of its dense tokens over all frames (docs/design.md §6); "masked", the CLIP
    # embedding of each key frame with only the region's patches visible (models/clip.py:encode_masked), averaged
    # over key frames: in CLIP's joint space, where the class texts are (docs/world.md). Costs one
    # image-tower pass per (region of the partition, key frame) and keeps the key frames' images per video.
    _A.REGION_FEATURE = "tokens"
    _A.NUM_REGIONS = 4  # regions kept per video
    _A.TOP_K = 2  # salient regions per (video, class) passed to the prompt generator
    # Which kept regions are salient: "tokens", the best scores against each class's name tokens (the attention-score
    # matrix, docs/design.md §6 step 6), or "value", the kept regions' own ranking (AMCAP.REGION_SCORE; the same
    # regions for every class; docs/world.md), or "motion", the kept regions whose dense tokens change most over the
    # clip (label-free, the same for every class).
    _A.SALIENCY = "tokens"
    _A.N_CTX = 4  # generated context embeddings per prompt
    _A.NUM_HEADS = 4  # attention heads of the prompt generator (must divide the text width)
    _A.PER_CLASS = True  # support text per class (context averaged over shots) instead of per support video
    _A.SUPPORT_CLASS_ANCHOR = True  # supports use their class text as Shapley anchor (else the label-free one)
    _A.ANCHOR_TEMPERATURE = 0.07  # softmax temperature of the label-free anchor over class texts
    # What the label-free anchor compares with the class texts: "mean_token" (the key frame's mean dense token) or
    # "global" (the video's CLIP embedding, the one pretraining aligned with text; docs/world.md).
    _A.QUERY_ANCHOR = "mean_token"
    _A.TOKEN_TEMPERATURE = 0.07  # softmax temperature of region -> text-token alignment
    # The class-name tokens regions align to: "contextual", the class text's per-token outputs (docs/design.md §6
    # step 6), or "word", each name token's own text embedding ("a photo of red."), in the joint space where CLIP
    # compares texts with images (docs/world.md).
    _A.TOKEN_FEATURE = "contextual"
    _A.ALIGN_LOSS_WEIGHT = 0.0  # weight of the support region / class-token alignment loss (0 = off)
    _A.TEXT_TEMPLATE = "a photo of {}."  # class text for anchors and the tokens regions align to
    _A.SEED = 0  # seeds the coalitions when the caller passes no generator
    rules("AMCAP", GRID=POSITIVE, NUM_COALITIONS=POSITIVE, KEY_FRAMES=POSITIVE,
          EMPTY_VALUE=one_of("zero", "singleton_mean"), REGION_SCORE=one_of(*REGION_SCORES),
          MERGE_ON=one_of(*MERGE_RULES),
          NUM_REGIONS=POSITIVE, TOP_K=POSITIVE, N_CTX=POSITIVE, NUM_HEADS=POSITIVE, ANCHOR_TEMPERATURE=POSITIVE,
          QUERY_ANCHOR=one_of(*QUERY_ANCHORS), REGION_FEATURE=one_of(*REGION_FEATURES),
          TOKEN_FEATURE=one_of(*TOKEN_FEATURES), SALIENCY=one_of(*SALIENCIES),
          TOKEN_TEMPERATURE=POSITIVE, ALIGN_LOSS_WEIGHT=NON_NEGATIVE, SEED=NON_NEGATIVE)


@dataclass
class VideoTokens:
    """What AMCAP reads of a set of videos' dense token grids (`AMCAP.video_tokens`): the key frames' tokens and
    the tokens averaged over all frames. With 8 frames and 2 key frames that is 3/8 of the grids' memory, which
    matters where per-video features are cached or kept for the backward pass."""
    key: Tensor  # [V, K, h, w, D] the key frames' tokens (Shapley regions and their anchors)
    mean: Tensor  # [V, h, w, D] the tokens' mean over all frames (region features)
    # [V, K, D] what the label-free anchor is built around at each key frame with AMCAP.QUERY_ANCHOR global: the
    # video's CLIP embedding (the mean of its frames' normalised embeddings, as CLIP-FSAR's text rule reads a video)
    anchor_global: Tensor | None = None
    key_images: Tensor | None = None  # [V, K, 3, H, W] the key frames' tower input (AMCAP.REGION_FEATURE masked)
    # [V, h, w] each token's mean change between consecutive frames (L2; REGION_SCORE / SALIENCY motion)
    motion: Tensor | None = None


class AMCAP(nn.Module):
    """Dynamic class text features from Shapley regions of support and query videos."""

    def __init__(self, embed_dim: int, text_width: int, grid: int = 4, num_coalitions: int = 64,
                 key_frames: int = 2, num_regions: int = 4, top_k: int = 2, n_ctx: int = 4,
                 per_class: bool = True, anchor_temperature: float = 0.07, align_loss_weight: float = 0.0,
                 exact: bool = False, num_heads: int = 4, merge_threshold: float = 0.0, merge_on: str = "synergy",
                 region_score: str = "value", support_class_anchor: bool = True, token_temperature: float = 0.07,
                 text_template: str = "a photo of {}.", seed: int = 0, empty_value: str = "zero",
                 query_anchor: str = "mean_token", region_feature: str = "tokens", token_feature: str = "contextual",
                 saliency: str = "tokens", text_cache: ClassTextCache | None = None):
        super().__init__()
        choices_of = (("SALIENCY", saliency, SALIENCIES), ("TOKEN_FEATURE", token_feature, TOKEN_FEATURES),
                      ("REGION_FEATURE", region_feature, REGION_FEATURES),
                      ("QUERY_ANCHOR", query_anchor, QUERY_ANCHORS), ("EMPTY_VALUE", empty_value, EMPTY_VALUES),
                      ("REGION_SCORE", region_score, REGION_SCORES), ("MERGE_ON", merge_on, MERGE_RULES))
        for key, value, choices in choices_of:
            if value not in choices:
                raise ValueError(f"models/amcap/amcap.py: AMCAP.{key} must be one of {choices}, got '{value}'")
        self.saliency, self.token_feature, self.region_feature = saliency, token_feature, region_feature
        self.query_anchor = query_anchor
        for key, value in (("GRID", grid), ("KEY_FRAMES", key_frames), ("NUM_REGIONS", num_regions),
                           ("TOP_K", top_k), ("NUM_COALITIONS", num_coalitions)):
            if value < 1:
                raise ValueError(f"models/amcap/amcap.py: AMCAP.{key} must be >= 1, got {value}")
        self.grid, self.num_coalitions, self.exact = grid, num_coalitions, exact
        self.key_frames, self.num_regions, self.top_k = key_frames, num_regions, top_k
        self.per_class, self.support_class_anchor = per_class, support_class_anchor
        self.anchor_temperature, self.token_temperature = anchor_temperature, token_temperature
        self.align_loss_weight, self.merge_threshold = align_loss_weight, merge_threshold
        self.merge_on = merge_on
        self.region_score, self.text_template, self.seed = region_score, text_template, seed
        self.empty_value = empty_value
        self.prompt_generator = PromptGenerator(embed_dim, text_width, n_ctx=n_ctx, num_heads=num_heads)
        self.register_buffer("pairs", grid_adjacent_pairs(grid), persistent=False)
        # The class texts, cached while the text tower is frozen; a head hands in its own cache so that one cache
        # (cleared when weights are loaded) holds all of the model's class texts.
        self.text_cache = ClassTextCache() if text_cache is None else text_cache

    def clear_text_cache(self) -> None:
        self.text_cache.clear()

    def class_text(self, backbone, class_names: list[str]) -> ClassText:
        """The episode's class texts, through the shared class-text cache (models/text_cache.py)."""
        n_ctx = self.prompt_generator.n_ctx

        def encode(names: list[str]) -> dict[str, Tensor]:
            built = build_class_text(backbone, names, self.text_template, n_ctx, self.token_feature)
            return {f.name: getattr(built, f.name) for f in fields(built)}

        kind = "amcap" if self.token_feature == "contextual" else f"amcap/{self.token_feature}"
        return ClassText(**self.text_cache.lookup(backbone, kind, class_names, encode, backbone.device))

    @classmethod
    def from_config(cls, cfg: CfgNode, embed_dim: int, text_width: int) -> dict[str, Any]:
        a = cfg.AMCAP
        return dict(embed_dim=embed_dim, text_width=text_width, grid=a.GRID, num_coalitions=a.NUM_COALITIONS,
                    key_frames=a.KEY_FRAMES, num_regions=a.NUM_REGIONS, top_k=a.TOP_K, n_ctx=a.N_CTX,
                    per_class=a.PER_CLASS, anchor_temperature=a.ANCHOR_TEMPERATURE,
                    align_loss_weight=a.ALIGN_LOSS_WEIGHT, exact=a.EXACT, num_heads=a.NUM_HEADS,
                    merge_threshold=a.MERGE_THRESHOLD, merge_on=a.MERGE_ON, region_score=a.REGION_SCORE,
                    support_class_anchor=a.SUPPORT_CLASS_ANCHOR, token_temperature=a.TOKEN_TEMPERATURE,
                    text_template=a.TEXT_TEMPLATE, seed=a.SEED, empty_value=a.EMPTY_VALUE,
                    query_anchor=a.QUERY_ANCHOR, region_feature=a.REGION_FEATURE, token_feature=a.TOKEN_FEATURE,
                    saliency=a.SALIENCY)

    # ------------------------------------------------------------------ steps 2-5 (regions, no gradient)
    def key_frame_indices(self, num_frames: int) -> Tensor:
        """Segment centres of `KEY_FRAMES` equal segments (all frames when there are fewer)."""
        k = min(self.key_frames, num_frames)
        return ((torch.arange(k) * 2 + 1) * num_frames) // (2 * k)

    def video_tokens(self, tokens: Tensor, frame_global: Tensor | None = None,
                     images: Tensor | None = None) -> VideoTokens:
        """Dense tokens [V, T, h, w, D] (and the frames' CLIP embeddings [V, T, D], their tower input
        [V, T, 3, H, W]) -> the key frames' tokens (embeddings, images) and the mean token over all T frames."""
        frames = self.key_frame_indices(tokens.shape[1]).to(tokens.device)
        anchor_global = None
        if frame_global is not None:
            video = F.normalize(frame_global.float(), dim=-1).mean(dim=1)  # [V, D]
            anchor_global = video[:, None].expand(-1, len(frames), -1).to(frame_global.dtype)
        key_images = None if images is None or self.region_feature != "masked" else images[:, frames]
        motion = None
        if "motion" in (self.region_score, self.saliency):
            steps = tokens[:, 1:].float() - tokens[:, :-1].float()
            motion = steps.norm(dim=-1).mean(dim=1) if tokens.shape[1] > 1 else tokens.new_zeros(tokens.shape[:1]
                                                                                                 + tokens.shape[2:4])
        return VideoTokens(key=tokens[:, frames], mean=tokens.mean(dim=1), anchor_global=anchor_global,
                           key_images=key_images, motion=motion)

    def coalitions(self, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """One coalition set per episode, shared by all videos so no video's result depends on another's."""
        n = self.grid * self.grid
        if self.exact:
            return enumerate_coalitions(n)
        if generator is None:
            generator = torch.Generator().manual_seed(self.seed)
        return sample_coalitions(n, self.num_coalitions, generator)

    @staticmethod
    def label_free_anchor(frame_feats: Tensor, class_feats: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        """Soft maximum over class texts: frame features [..., D], class texts [C, D] -> (anchor [..., D], weights)."""
        texts = F.normalize(class_feats, dim=-1)
        weights = (F.normalize(frame_feats, dim=-1) @ texts.T / temperature).softmax(dim=-1)  # [..., C]
        return weights @ texts, weights

    def masked_slot_features(self, backbone, key_images: Tensor, labels: Tensor, token_hw: tuple[int, int]) -> Tensor:
        """CLIP embeddings of each key frame with only one partition slot's patches visible: key images
        [V, K, 3, H, W], labels [V, n] -> [V, K, n_slots, D] (zeros for unused slots)."""
        v, k = key_images.shape[:2]
        slots = slot_masks(labels)  # [V, n_slots, n]
        video, slot = slots.any(dim=-1).nonzero(as_tuple=True)  # the used slots
        keep = slots[video, slot][:, cell_index_map(*token_hw, self.grid).to(labels.device)]  # [U, h, w]
        images = key_images[video].flatten(0, 1)  # [U*K, 3, H, W]
        emb = backbone.encode_masked(images, keep.repeat_interleave(k, dim=0)).reshape(len(video), k, -1)
        out = emb.new_zeros(v, k, slots.shape[1], emb.shape[-1])
        out[video, :, slot] = emb
        return out

    @torch.no_grad()
    def find_regions(self, key_tokens: Tensor, anchor: Tensor, coalitions: tuple[Tensor, Tensor],
                     masked: Callable[[Tensor], Tensor] | None = None,
                     token_motion: Tensor | None = None) -> dict[str, Any]:
        """Key-frame tokens [V, K, h, w, D] and their anchors [V, K, D] -> kept regions and interactions; with
        `masked` (labels -> the slots' masked embeddings [V, K, n_slots, D]) regions are valued by those; with
        REGION_SCORE motion they are ranked by `token_motion` [V, h, w] (VideoTokens.motion). Every found region
        carries its motion ("motion" [V, R]) when `token_motion` is given."""
        v, k, h, w, d = key_tokens.shape
        key = key_tokens.float()
        anchor = anchor.float()
        cell_sums, _ = pool_cells(key.reshape(v * k, h, w, d), self.grid)  # [V*K, n, D]
        masks, weights = coalitions
        inter = cosine_game_interactions(cell_sums, anchor.reshape(v * k, d), self.pairs, masks, weights,
                                         self.empty_value)
        inter = inter.reshape(v, k, -1).mean(dim=1).float()  # [V, P]
        labels = partition_cells(inter, self.pairs, self.grid * self.grid, self.merge_threshold, self.merge_on)
        slot_feats = None
        if masked is not None:
            slot_feats = masked(labels)  # [V, K, n_slots, D]
        slot_motion = None
        if token_motion is not None:
            sums, counts = pool_cells(token_motion.float()[..., None], self.grid)  # [V, n, 1], [n]
            slot_motion = region_motion(labels, sums[..., 0] / counts.clamp_min(1.0))
        if self.region_score == "motion":
            if slot_motion is None:
                raise ValueError("models/amcap/amcap.py: AMCAP.REGION_SCORE motion needs the tokens' motion "
                                 "(VideoTokens.motion)")
            slot_scores = slot_motion
        elif slot_feats is not None and self.region_score == "value":
            slot_scores = masked_region_values(labels, slot_feats, anchor)
        elif self.region_score == "value":
            slot_scores = region_values(labels, cell_sums.reshape(v, k, *cell_sums.shape[1:]), anchor)
        else:
            slot_scores = region_interactions(labels, inter, self.pairs)
        regions = keep_top_regions(labels, slot_scores, self.num_regions, self.grid, (h, w))
        found = {"regions": regions, "interactions": inter}
        if slot_motion is not None:  # the kept slots' motion [V, R] (-inf for invalid slots)
            kept_motion = slot_motion.gather(1, regions.slots.clamp_min(0))
            found["motion"] = kept_motion.masked_fill(~regions.valid, float("-inf"))
        if slot_feats is not None:  # the kept slots' features, mean over key frames [V, R, D]
            kept = regions.slots.clamp_min(0)
            feats = slot_feats.mean(dim=1).gather(1, kept[..., None].expand(-1, -1, slot_feats.shape[-1]))
            found["features"] = feats * regions.valid[..., None].to(feats.dtype)
        return found

    def _anchors(self, tokens: VideoTokens, text: ClassText, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Shapley anchors [V, K, D] on the key frames: class text of `labels`, else the label-free soft maximum of
        the class texts around the key frame's mean token or CLIP embedding (AMCAP.QUERY_ANCHOR)."""
        class_feats = text.features.detach().float()
        if labels is not None:
            return F.normalize(class_feats, dim=-1)[labels][:, None].expand(-1, tokens.key.shape[1], -1), None
        if self.query_anchor == "mean_token":
            frame = tokens.key.detach().float().mean(dim=(2, 3))  # [V, K, D]
        elif tokens.anchor_global is None:
            raise ValueError("models/amcap/amcap.py: AMCAP.QUERY_ANCHOR global needs the video's CLIP "
                             "embedding (VideoTokens.anchor_global)")
        else:
            frame = tokens.anchor_global.detach().float()
        return self.label_free_anchor(frame, class_feats, self.anchor_temperature)

    # ------------------------------------------------------------------ steps 5-7 (differentiable)
    def describe(self, tokens: Tensor | VideoTokens, text: ClassText, labels: Tensor | None,
                 coalitions: tuple[Tensor, Tensor], backbone=None) -> dict[str, Any]:
        """Regions, region features and per-class salient regions of a set of videos (dense tokens [V, T, h, w, D]
        or their `video_tokens` summary); REGION_FEATURE masked needs the `backbone` and the key frames' images."""
        if not isinstance(tokens, VideoTokens):
            tokens = self.video_tokens(tokens)
        anchor, anchor_weights = self._anchors(tokens, text, labels)
        masked = None
        if self.region_feature == "masked":
            if backbone is None or tokens.key_images is None:
                raise ValueError("models/amcap/amcap.py: AMCAP.REGION_FEATURE masked needs the backbone and the key "
                                 "frames' images (VideoTokens.key_images)")
            hw = tuple(tokens.key.shape[2:4])
            masked = functools.partial(self.masked_slot_features, backbone, tokens.key_images, token_hw=hw)
        found = self.find_regions(tokens.key, anchor, coalitions, masked, tokens.motion)
        regions = found["regions"]
        if "features" in found:
            feats = found["features"].to(tokens.mean.dtype)  # [V, R, D] masked embeddings (no gradient)
        else:
            feats = region_features(tokens.mean[:, None], regions.token_masks)  # [V, R, D], mean over all frames
        scores = attention_scores(feats, text.token_features)  # [V, C, R, L]
        selected, saliency, selected_valid = select_salient(scores, regions.valid, text.name_mask, self.top_k)
        if self.saliency == "value":  # the kept regions' own ranking (their value under the game), for every class
            k = selected.shape[-1]
            selected = torch.arange(k, device=selected.device)[None, None].expand_as(selected)
            selected_valid = regions.valid[:, None, :k].expand_as(selected)
        elif self.saliency == "motion":  # the kept regions that change most over the clip, for every class
            k = selected.shape[-1]
            best, order = found["motion"].topk(k, dim=-1)  # [V, k]
            selected = order[:, None].expand_as(selected)
            selected_valid = torch.isfinite(best)[:, None].expand_as(selected)
        tokens_aligned, top_token = aligned_tokens(scores, selected, text.token_features, text.name_mask,
                                                   self.token_temperature)
        picked = feats[:, None].expand(-1, selected.shape[1], -1, -1).gather(
            2, selected[..., None].expand(-1, -1, -1, feats.shape[-1]))  # [V, C, K, D]
        return {"regions": regions, "interactions": found["interactions"], "anchor": anchor,
                "anchor_weights": anchor_weights,
                "features": feats, "scores": scores, "selected": selected, "saliency": saliency,
                "selected_valid": selected_valid, "picked": picked, "aligned": tokens_aligned,
                "top_token": top_token}

    def _context(self, info: dict[str, Any], cls: Tensor | None = None) -> Tensor:
        """Context for every (video, class) [V, C, n_ctx, W], or for one class per video [V, n_ctx, W]."""
        picked, aligned, valid = info["picked"], info["aligned"], info["selected_valid"]
        if cls is not None:
            rows = torch.arange(picked.shape[0], device=picked.device)
            return self.prompt_generator(picked[rows, cls], aligned[rows, cls], valid[rows, cls])
        v, c, k, d = picked.shape
        ctx = self.prompt_generator(picked.reshape(v * c, k, d), aligned.reshape(v * c, k, d), valid.reshape(v * c, k))
        return ctx.reshape(v, c, *ctx.shape[1:])

    def _encode_all_classes(self, backbone, ctx: Tensor, text: ClassText) -> Tensor:
        """ctx [V, C, n_ctx, W] -> text features [V, C, D] of each class's prompt with that video's context."""
        v, c = ctx.shape[:2]
        ids = text.prompt_ids[None].expand(v, -1, -1).reshape(v * c, -1)
        embeds = text.prompt_embeds[None].expand(v, -1, -1, -1).reshape(v * c, *text.prompt_embeds.shape[1:])
        return encode_prompts(backbone, ctx.reshape(v * c, *ctx.shape[2:]), ids, embeds).reshape(v, c, -1)

    def _align_loss(self, support: dict[str, Any], support_labels: Tensor) -> Tensor:
        """Cross-entropy of support videos over classes scored by their salient regions' best name-token cosine."""
        saliency = support["saliency"].gather(2, support["selected"])  # [S, C, K]
        valid = support["selected_valid"]
        score = (saliency.masked_fill(~valid, 0.0).sum(-1) / valid.sum(-1).clamp_min(1))  # [S, C]
        return F.cross_entropy(score / self.token_temperature, support_labels)

    def forward(self, backbone, support_tokens: Tensor | VideoTokens, query_tokens: Tensor | VideoTokens,
                class_names: list[str], support_labels: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Any]:
        """Dynamic class text for supports ([WAY, D] per class or [S, WAY, D]) and queries ([Q, WAY, D]).

        `align_loss` is already multiplied by ALIGN_LOSS_WEIGHT. Query outputs use no label of any video.
        """
        way = len(class_names)
        if bool((support_labels < 0).any()) or bool((support_labels >= way).any()):
            raise ValueError(f"models/amcap/amcap.py: support_labels must be in 0..{way - 1}")
        text = self.class_text(backbone, class_names)
        coalitions = self.coalitions(generator)
        support = self.describe(support_tokens, text, support_labels if self.support_class_anchor else None,
                                coalitions, backbone)
        query = self.describe(query_tokens, text, None, coalitions, backbone)
        if self.per_class:
            counts = torch.bincount(support_labels, minlength=way)
            if bool((counts == 0).any()):
                raise ValueError("models/amcap/amcap.py: PER_CLASS needs at least one support video per class")
            ctx = self._context(support, support_labels)  # [S, n_ctx, W]
            class_ctx = torch.zeros(way, *ctx.shape[1:], dtype=ctx.dtype, device=ctx.device)
            class_ctx = class_ctx.index_add(0, support_labels, ctx) / counts[:, None, None].to(ctx.dtype)
            support_text = encode_prompts(backbone, class_ctx, text.prompt_ids, text.prompt_embeds)  # [WAY, D]
        else:
            support_text = self._encode_all_classes(backbone, self._context(support), text)  # [S, WAY, D]
        query_text = self._encode_all_classes(backbone, self._context(query), text)  # [Q, WAY, D]
        if self.align_loss_weight > 0:
            align_loss = self.align_loss_weight * self._align_loss(support, support_labels)
        else:
            align_loss = query_text.new_zeros(())
        diagnostics = {"token_ids": text.token_ids, "name_mask": text.name_mask,
                       "support": _detach(support), "query": _detach(query)}
        return {"support_text": support_text, "query_text": query_text, "align_loss": align_loss,
                "regions": diagnostics}


def _detach(info: dict[str, Any]) -> dict[str, Any]:
    keep = ("interactions", "anchor_weights", "scores", "selected", "saliency", "selected_valid", "top_token")
    out = {key: info[key].detach() if info[key] is not None else None for key in keep}
    regions = info["regions"]
    out.update(labels=regions.labels, cell_masks=regions.cell_masks, token_masks=regions.token_masks,
               valid=regions.valid, region_scores=regions.scores)
    return out
