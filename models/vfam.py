"""VFAM: visual fine-grained attention over tracked entities (docs/design.md §6, this project's formulation).

Object tracks move attention from the whole scene to the entities in it:
  1. entity features per sampled frame, by RoIAlign on the dense CLIP token grid (`roi`) or by encoding the
     entity crops with the backbone (`crop`);
  2. optional attention along each track over time (slot k of every frame is the same entity; the data keeps
     identities across frames), then attention from each frame's global token to that frame's entities;
  3. gated residual fusion `frame_desc + gate * proj(context)` with the gate at 0, so an untrained VFAM returns
     the baseline's frame descriptor bit for bit.
With motion (issue 29; the world's main job): each entity token carries its track's step to the next frame
(ENTITY_MOTION), one weight per track for the whole video is scored from the track's motion (ATTEND motion), and the
weighted entity token becomes the descriptor (FUSION replace): which entity acts is learned from class labels alone.
Mode `crop_frames` instead crops every frame to the video's main track before the backbone; the entity attention
then sees no entities and the fusion is the identity.

Masked entities contribute nothing: their features are zeroed before any attention and are excluded as keys;
frames (and videos) without entities get a context of exactly 0, i.e. the baseline path.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from utils.config import NON_NEGATIVE, POSITIVE, PROBABILITY, CfgNode, one_of, rules, section

VFAM_MODES = ("roi", "crop", "crop_frames")
VFAM_ATTEND = ("frame", "motion")
VFAM_FUSION = ("residual", "replace")
MOTION_DIMS = 3  # a track's step to the next sampled frame: centre dx, dy and the change of sqrt(box area)
SCORE_HIDDEN = 32  # hidden width of the motion attention's track scorer


def add_vfam_config(cfg: CfgNode) -> None:
    _V = section(cfg, "VFAM")
    _V.ENABLE = False  # fuse tracked-entity context into the head's frame descriptors (needs DATA.TRACK_DIR)
    _V.MODE = "roi"  # roi (RoIAlign on CLIP tokens), crop (encode entity crops), crop_frames (crop to main track)
    _V.NUM_HEADS = 4  # heads of the temporal and frame-level entity attention (must divide the embedding dim)
    _V.ROI_SIZE = 2  # RoIAlign output size on the token grid (roi mode), averaged to one vector per entity
    _V.TEMPORAL = True  # attention along each track over the sampled frames before the frame-level attention
    _V.CROP_SIZE = 224  # entity crop size in crop mode; must equal the backbone's input image size
    _V.CROP_MARGIN = 0.1  # crop_frames: main-track box enlarged by this fraction of its size on every side
    _V.DROPOUT = 0.0  # dropout on the attention weights and on the fused context
    _V.GATE = "scalar"  # fusion gate: scalar (one number) or channel (one per descriptor channel); starts at 0
    # Which entity the context comes from (docs/design.md §6): frame (each frame's global token attends to that
    # frame's entities, the formulation so far) or motion (one weight per track for the whole video, scored by a
    # small MLP from the track's motion; "which entity acts" is learned from the class labels alone).
    _V.ATTEND = "frame"
    _V.ENTITY_MOTION = False  # add each entity's track motion to the next sampled frame (box centre, size) to its token
    _V.MOTION_SCALE = 30.0  # track motion (crop units per sampled frame) is multiplied by this before any layer
    _V.TRACK_TEMPERATURE = 1.0  # ATTEND motion: the track scores are divided by this before their softmax
    # How the context enters the descriptor: residual (frame descriptor + gate * proj(context), gate from 0: the
    # baseline at start) or replace (the descriptor is proj(context), proj starting as the identity: the acting
    # entity's joint-space token instead of the whole scene; frames without entities keep the scene's).
    _V.FUSION = "residual"
    rules("VFAM", MODE=one_of("roi", "crop", "crop_frames"), NUM_HEADS=POSITIVE, ROI_SIZE=POSITIVE,
          CROP_SIZE=POSITIVE, CROP_MARGIN=NON_NEGATIVE, DROPOUT=PROBABILITY, GATE=one_of("scalar", "channel"),
          ATTEND=one_of(*VFAM_ATTEND), MOTION_SCALE=POSITIVE, TRACK_TEMPERATURE=POSITIVE, FUSION=one_of(*VFAM_FUSION))


def _safe_key_padding(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Key-padding mask for `mask` ([R, L], True = real) whose all-padded rows are unmasked.

    A row with no real key would give softmax(-inf, ..., -inf) = NaN; those rows attend to (zeroed) padding
    instead and the caller discards their output via `has_key`.
    """
    has_key = mask.any(dim=-1)  # [R]
    padding = ~mask & has_key[:, None]
    return padding, has_key


def roi_entity_features(tokens: Tensor, boxes: Tensor, mask: Tensor, roi_size: int) -> Tensor:
    """Entity features by RoIAlign on dense tokens [N,h,w,D] with normalised boxes [N,K,4] -> [N,K,D].

    Token (i, j) covers the cell [j/w, (j+1)/w] x [i/h, (i+1)/h] of the frame; `aligned=True` samples at cell
    centres. The roi_size x roi_size bins are averaged; masked entities get zeros.
    """
    n, h, w, d = tokens.shape
    k = boxes.shape[1]
    # Masked boxes may hold anything (even NaN); a harmless placeholder keeps NaN out of forward and backward.
    placeholder = boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    safe = torch.where(mask[..., None], boxes.clamp(0.0, 1.0), placeholder)  # [N,K,4]
    scale = boxes.new_tensor([w, h, w, h])
    index = torch.arange(n, device=boxes.device, dtype=boxes.dtype).repeat_interleave(k)[:, None]
    rois = torch.cat([index, (safe * scale).reshape(n * k, 4)], dim=1)  # [N*K, 5]
    fmap = tokens.permute(0, 3, 1, 2).float()  # [N,D,h,w]; float32 so box coordinates keep their precision
    pooled = roi_align(fmap, rois.float(), output_size=roi_size, spatial_scale=1.0, sampling_ratio=-1,
                       aligned=True)  # [N*K, D, r, r]
    feats = pooled.mean(dim=(2, 3)).reshape(n, k, d).to(tokens.dtype)
    return torch.where(mask[..., None], feats, torch.zeros_like(feats))


def crop_entities(frames: Tensor, boxes: Tensor, mask: Tensor, size: int) -> Tensor:
    """Crops [N,K,3,size,size] of frames [N,3,H,W] at normalised boxes [N,K,4] (RoIAlign on pixels).

    Masked entities give zero crops (a normalised frame's mean colour).
    """
    n, c, h, w = frames.shape
    k = boxes.shape[1]
    placeholder = boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    safe = torch.where(mask[..., None], boxes.clamp(0.0, 1.0), placeholder)
    scale = boxes.new_tensor([w, h, w, h])
    index = torch.arange(n, device=boxes.device, dtype=boxes.dtype).repeat_interleave(k)[:, None]
    rois = torch.cat([index, (safe * scale).reshape(n * k, 4)], dim=1)
    crops = roi_align(frames.float(), rois.float(), output_size=size, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=True).reshape(n, k, c, size, size).to(frames.dtype)
    return torch.where(mask[..., None, None, None], crops, torch.zeros_like(crops))


def main_track_boxes(boxes: Tensor, mask: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """Per video, the crop box around its main track: ([B,4] normalised box, [B] bool has_track).

    The main track is the slot present in most frames (ties go to the lower slot: the data ranks slot 0 highest).
    The box is the union of that track's boxes over the video, not per frame, so the crop does not jitter and
    the entity's motion stays visible; it is enlarged by `margin` of its size on each side, then made square in
    normalised coordinates (= the frame's aspect ratio, so resizing back does not distort) and shifted inside the
    frame.
    """
    counts = mask.sum(dim=1)  # [B,K]
    has_track = counts.max(dim=1).values > 0  # [B]
    main = counts.argmax(dim=1)  # first maximum = lowest slot
    b, t = mask.shape[:2]
    idx = main[:, None, None, None].expand(b, t, 1, 4)
    track = boxes.gather(2, idx).squeeze(2).clamp(0.0, 1.0)  # [B,T,4]
    present = mask.gather(2, main[:, None, None].expand(b, t, 1)).squeeze(2)  # [B,T]
    big = torch.full_like(track[..., 0], 2.0)
    x1 = torch.where(present, track[..., 0], big).amin(dim=1)
    y1 = torch.where(present, track[..., 1], big).amin(dim=1)
    x2 = torch.where(present, track[..., 2], -big).amax(dim=1)
    y2 = torch.where(present, track[..., 3], -big).amax(dim=1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = (torch.maximum(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)).clamp(1e-3, 1.0)
    cx = cx.clamp(side / 2, 1.0 - side / 2)
    cy = cy.clamp(side / 2, 1.0 - side / 2)
    crop = torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1)
    full = crop.new_tensor([0.0, 0.0, 1.0, 1.0]).expand_as(crop)
    return torch.where(has_track[:, None], crop, full), has_track


def crop_frames_to_main_track(frames: Tensor, boxes: Tensor, mask: Tensor, margin: float) -> Tensor:
    """Crop videos [B,T,3,H,W] to their main track (see `main_track_boxes`), resized back to H x W.

    Videos without tracks are returned unchanged.
    """
    b, t, c, h, w = frames.shape
    crop, has_track = main_track_boxes(boxes, mask, margin)
    scale = crop.new_tensor([w, h, w, h])
    index = torch.arange(b * t, device=frames.device, dtype=crop.dtype)[:, None]
    rois = torch.cat([index, (crop * scale).repeat_interleave(t, dim=0)], dim=1)  # [B*T,5]
    cropped = roi_align(frames.flatten(0, 1).float(), rois.float(), output_size=(h, w), sampling_ratio=-1,
                        aligned=True).reshape(b, t, c, h, w).to(frames.dtype)
    return torch.where(has_track[:, None, None, None, None], cropped, frames)


def track_motion(boxes: Tensor, mask: Tensor) -> Tensor:
    """[B,T,K,3] each entity's step to the next sampled frame: its box centre's (dx, dy) and the change of the square
    root of its area, in crop units (boxes [B,T,K,4] normalised x0,y0,x1,y1; mask [B,T,K]). The last frame repeats
    the step before it; a step is 0 where the entity is absent in either frame."""
    centre = torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], dim=-1)
    size = ((boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)).sqrt()
    state = torch.cat([centre, size[..., None]], dim=-1).float()  # [B,T,K,3]
    if state.shape[1] < 2:
        return torch.zeros_like(state)
    both = (mask[:, 1:] & mask[:, :-1])[..., None]
    step = torch.where(both, state[:, 1:] - state[:, :-1], torch.zeros_like(state[:, 1:]))
    return torch.cat([step, step[:, -1:]], dim=1)


class VFAM(nn.Module):
    """Entity context fused into the head's frame descriptors: chosen by each frame's global token (ATTEND frame) or
    by one learned weight per track from its motion (ATTEND motion), added through a zero gate (FUSION residual) or
    taking the descriptor's place (FUSION replace)."""

    def __init__(self, dim: int, out_dim: int, num_heads: int = 4, temporal: bool = True, dropout: float = 0.0,
                 roi_size: int = 2, mode: str = "roi", crop_size: int = 224, crop_margin: float = 0.1,
                 gate: str = "scalar", attend: str = "frame", entity_motion: bool = False,
                 motion_scale: float = 30.0, fusion: str = "residual", track_temperature: float = 1.0) -> None:
        super().__init__()
        if attend not in VFAM_ATTEND:
            raise ValueError(f"VFAM.ATTEND must be one of {', '.join(VFAM_ATTEND)}, got '{attend}'")
        if fusion not in VFAM_FUSION:
            raise ValueError(f"VFAM.FUSION must be one of {', '.join(VFAM_FUSION)}, got '{fusion}'")
        if mode not in VFAM_MODES:
            raise ValueError(f"VFAM.MODE must be one of {', '.join(VFAM_MODES)}, got '{mode}'")
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"VFAM.NUM_HEADS={num_heads} must divide the embedding dim {dim}")
        if gate not in ("scalar", "channel"):
            raise ValueError(f"VFAM.GATE must be scalar or channel, got '{gate}'")
        if roi_size < 1:
            raise ValueError(f"VFAM.ROI_SIZE must be >= 1, got {roi_size}")
        self.mode, self.roi_size, self.crop_size, self.crop_margin = mode, roi_size, crop_size, crop_margin
        self.temporal = temporal
        if temporal:
            self.time_norm = nn.LayerNorm(dim)
            self.time_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.attend, self.fusion, self.motion_scale = attend, fusion, motion_scale
        self.track_temperature = track_temperature
        # ENTITY_MOTION: a track's step, embedded into the token space and added to the entity's token.
        self.motion_embed = nn.Linear(MOTION_DIMS, dim, bias=False) if entity_motion else None
        if attend == "frame":
            self.query_norm = nn.LayerNorm(dim)
            self.entity_norm = nn.LayerNorm(dim)
            self.frame_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        else:  # a track's score from its mean absolute and mean signed step over the frames where it moves
            self.track_score = nn.Sequential(nn.Linear(2 * MOTION_DIMS, SCORE_HIDDEN), nn.ReLU(),
                                             nn.Linear(SCORE_HIDDEN, 1))
        self.proj = nn.Linear(dim, out_dim)
        self.drop = nn.Dropout(dropout)
        if fusion == "residual":
            # Zero gate: the fused descriptor equals the baseline's until training moves it (docs/design.md §6).
            self.gate = nn.Parameter(torch.zeros(1 if gate == "scalar" else out_dim))
        else:
            self.gate = None
            if out_dim == dim:  # the acting entity's own token at start
                with torch.no_grad():
                    self.proj.weight.copy_(torch.eye(dim))
                    self.proj.bias.zero_()

    @classmethod
    def from_config(cls, cfg: CfgNode, dim: int, out_dim: int) -> dict[str, Any]:
        """Keyword arguments of `VFAM(...)` from `cfg.VFAM`; `dim` = token dim, `out_dim` = descriptor dim."""
        v = cfg.VFAM
        return {"dim": dim, "out_dim": out_dim, "num_heads": v.NUM_HEADS, "temporal": v.TEMPORAL,
                "dropout": v.DROPOUT, "roi_size": v.ROI_SIZE, "mode": v.MODE, "crop_size": v.CROP_SIZE,
                "crop_margin": v.CROP_MARGIN, "gate": v.GATE, "attend": v.ATTEND, "entity_motion": v.ENTITY_MOTION,
                "motion_scale": v.MOTION_SCALE, "fusion": v.FUSION, "track_temperature": v.TRACK_TEMPERATURE}

    def _attend_along_tracks(self, entities: Tensor, mask: Tensor) -> Tensor:
        """Each slot attends over the frames where it is present: [B,T,K,D] -> [B,T,K,D] (masked = 0).

        No time embedding: this pools a track's appearance evidence; temporal order is the head's business.
        """
        b, t, k, d = entities.shape
        seq = entities.permute(0, 2, 1, 3).reshape(b * k, t, d)  # one sequence per track
        seq_mask = mask.permute(0, 2, 1).reshape(b * k, t)
        padding, _ = _safe_key_padding(seq_mask)
        x = self.time_norm(seq)
        attended, _ = self.time_attn(x, x, x, key_padding_mask=padding, need_weights=False)
        seq = seq + attended
        out = seq.reshape(b, k, t, d).permute(0, 2, 1, 3)
        return torch.where(mask[..., None], out, torch.zeros_like(out))

    def _entities(self, entity_feats: Tensor, entity_mask: Tensor,
                  entity_motion: Tensor | None) -> tuple[Tensor, Tensor]:
        """The entity tokens the context is made of [B,T,K,D] (masked = 0) and the mask as bool: unit length under
        ATTEND motion, with their motion embedded (ENTITY_MOTION), pooled along tracks (TEMPORAL)."""
        mask = entity_mask.bool()
        entities = torch.where(mask[..., None], entity_feats, torch.zeros_like(entity_feats))
        if self.attend == "motion":
            entities = F.normalize(entities, dim=-1)
        if self.motion_embed is not None:
            step = self._motion(entity_motion, "VFAM.ENTITY_MOTION")
            entities = entities + torch.where(mask[..., None], self.motion_embed(step).to(entities.dtype), 0.0)
        if self.temporal:
            entities = self._attend_along_tracks(entities, mask)
        return entities, mask

    def _motion(self, entity_motion: Tensor | None, key: str) -> Tensor:
        if entity_motion is None:
            raise ValueError(f"{key} needs the entities' track motion (VFAM.encode's 'entity_motion')")
        return self.motion_scale * entity_motion.float()

    def _track_weights(self, entity_mask: Tensor, entity_motion: Tensor | None) -> Tensor:
        """ATTEND motion: [B,T,K] each frame's weights over its entities: one softmax over the video's tracks,
        scored from each track's mean absolute and mean signed step, renormalised over the entities in view."""
        mask = entity_mask.bool()
        step = self._motion(entity_motion, "VFAM.ATTEND motion")  # [B,T,K,3]
        present = mask[..., None].float()
        frames = present.sum(1).clamp_min(1.0)  # [B,K,1]
        summary = torch.cat([(step.abs() * present).sum(1), (step * present).sum(1)], dim=-1) / frames
        scores = self.track_score(summary.to(self.proj.weight.dtype)).squeeze(-1).float() / self.track_temperature
        scores = scores.masked_fill(~mask.any(1), float("-inf"))
        track = torch.softmax(scores.masked_fill(~mask.any(1).any(1, keepdim=True), 0.0), dim=-1)  # [B,K]
        weights = track[:, None, :] * mask.float()  # [B,T,K]
        return weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)

    def _context(self, frame_global: Tensor, entity_feats: Tensor, entity_mask: Tensor, entity_motion: Tensor | None,
                 need_weights: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """(context [B,T,D], has_entity [B,T], weights [B,T,K] over each frame's entities, mean over heads; None
        under ATTEND frame unless `need_weights`)."""
        b, t, k, d = entity_feats.shape
        entities, mask = self._entities(entity_feats, entity_mask, entity_motion)
        if self.attend == "motion":
            weights = self._track_weights(mask, entity_motion)
            context = torch.einsum("btk,btkd->btd", weights.to(entities.dtype), entities)
            return context, mask.any(-1), weights
        query = self.query_norm(frame_global).reshape(b * t, 1, d)
        keys = self.entity_norm(entities).reshape(b * t, k, d)
        padding, has_entity = _safe_key_padding(mask.reshape(b * t, k))
        context, weights = self.frame_attn(query, keys, keys, key_padding_mask=padding, need_weights=need_weights)
        weights = weights.reshape(b, t, k) if weights is not None else None
        return context.reshape(b, t, d), has_entity.reshape(b, t), weights

    def attention(self, frame_global: Tensor, entity_feats: Tensor, entity_mask: Tensor,
                  entity_motion: Tensor | None = None) -> Tensor:
        """[B,T,K]: each frame's attention over its entity slots (mean over heads; 0 for masked slots), the weights
        the fused context is made of (`runs/visualize.py vfam-stats`)."""
        _, has_entity, weights = self._context(frame_global, entity_feats, entity_mask, entity_motion, True)
        return weights * entity_mask.bool() * has_entity[..., None]

    def forward(self, frame_global: Tensor, frame_desc: Tensor, entity_feats: Tensor, entity_mask: Tensor,
                entity_motion: Tensor | None = None) -> Tensor:
        """[B,T,D] global tokens, [B,T,F] descriptors, [B,T,K,D] entities, [B,T,K] mask (+ [B,T,K,3] track motion,
        needed by ATTEND motion and ENTITY_MOTION) -> [B,T,F] descriptors."""
        context, has_entity, _ = self._context(frame_global, entity_feats, entity_mask, entity_motion)
        context = self.drop(self.proj(context))  # [B,T,F]
        has_entity = has_entity[..., None]
        if self.gate is None:  # FUSION replace: frames without entities keep the scene's descriptor
            return torch.where(has_entity, context.to(frame_desc.dtype), frame_desc)
        # Frames without entities get exactly 0 (not proj's bias), so they keep the baseline descriptor.
        context = torch.where(has_entity, context, torch.zeros_like(context))
        return frame_desc + (self.gate * context).to(frame_desc.dtype)

    def encode(self, backbone: nn.Module, videos: Tensor, boxes: Tensor | None, mask: Tensor | None,
               dense: bool = True) -> dict[str, Tensor]:
        """Run the backbone on videos [B,T,3,H,W] and extract entity features for this module's mode.

        Returns {"global": [B,T,D], "tokens": [B,T,h,w,D] (dense only), "entity_feats": [B,T,K,D],
        "entity_mask": [B,T,K], "entity_motion": [B,T,K,3] (`track_motion`)}. `boxes` [B,T,K,4] (normalised) /
        `mask` [B,T,K] may be None (no tracks).
        """
        b, t = videos.shape[:2]
        if boxes is None or mask is None:
            boxes = videos.new_zeros(b, t, 1, 4)
            mask = torch.zeros(b, t, 1, dtype=torch.bool, device=videos.device)
        mask = mask.bool()
        if self.mode == "crop_frames":
            videos = crop_frames_to_main_track(videos, boxes, mask, self.crop_margin)
        dense = dense or self.mode == "roi"
        out = backbone.encode_frames(videos.flatten(0, 1), dense=dense)
        result = {"global": out["global"].reshape(b, t, -1)}
        if dense:
            result["tokens"] = out["tokens"].reshape(b, t, *out["tokens"].shape[1:])
        flat_boxes, flat_mask = boxes.flatten(0, 1), mask.flatten(0, 1)  # [N,K,4], [N,K]
        if self.mode == "roi":
            entities = roi_entity_features(out["tokens"], flat_boxes, flat_mask, self.roi_size)
        elif self.mode == "crop":
            entities = self._encode_crops(backbone, videos.flatten(0, 1), flat_boxes, flat_mask)
        else:  # crop_frames: the crop already focused the backbone; no entity attention on top of it
            flat_mask = torch.zeros_like(flat_mask)
            entities = out["global"].new_zeros(*flat_mask.shape, out["global"].shape[-1])
        result["entity_feats"] = entities.reshape(b, t, *entities.shape[1:])
        result["entity_mask"] = flat_mask.reshape(b, t, -1)
        result["entity_motion"] = track_motion(boxes, result["entity_mask"])  # no parameters: cacheable
        return result

    def _encode_crops(self, backbone: nn.Module, frames: Tensor, boxes: Tensor, mask: Tensor) -> Tensor:
        """Crop mode: encode only the real entities' crops with the backbone -> [N,K,D] (masked = 0)."""
        h, w = frames.shape[-2:]
        if (h, w) != (self.crop_size, self.crop_size):
            raise ValueError(f"VFAM.CROP_SIZE={self.crop_size} must equal the backbone input size {h}x{w}")
        crops = crop_entities(frames, boxes, mask, self.crop_size)  # [N,K,3,s,s]
        real = crops[mask]  # [M,3,s,s]: masked slots are never encoded
        dim = backbone.embed_dim
        feats = frames.new_zeros(*mask.shape, dim)
        if real.shape[0]:
            feats = feats.masked_scatter(mask[..., None], backbone.encode_frames(real)["global"].to(feats.dtype))
        return feats
