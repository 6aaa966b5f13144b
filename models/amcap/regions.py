"""Regions from Shapley interactions, region features, and region / text-token attention (AMCAP steps 5-6).

A video's cells are merged along adjacent pairs whose interaction (averaged over the key frames) exceeds a
threshold, by union-find; the resulting partition covers every cell exactly once. The top `num_regions` regions
by a no-gradient score are kept as boolean masks; region features are masked means of the (gradient-carrying)
tokens over all frames. Regions are then scored against a class prompt's text tokens; the `top_k` most salient
regions and their attention-weighted text tokens feed the prompt generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.amcap.shapley import cell_index_map

REGION_SCORES = ("value", "interaction", "motion")


@dataclass
class Regions:
    """Kept regions of a batch of videos (R = num_regions slots; unused slots are empty and invalid)."""

    labels: Tensor  # [V, n] long: full partition, region id per cell (ids 0.. in order of their first cell)
    cell_masks: Tensor  # [V, R, n] bool: cells of each kept region
    token_masks: Tensor  # [V, R, h, w] bool: the same on the token grid
    valid: Tensor  # [V, R] bool
    scores: Tensor  # [V, R] ranking score (-inf for unused slots)
    slots: Tensor  # [V, R] long: the partition slot (region id in `labels`) of each kept region, -1 if unused


MERGE_RULES = ("synergy", "redundancy")


def partition_cells(interactions: Tensor, pairs: Tensor, num_cells: int, threshold: float = 0.0,
                    merge_on: str = "synergy") -> Tensor:
    """Union-find over adjacent pairs: interactions [V, P] -> labels [V, n] long. "synergy" joins pairs with
    interaction > threshold; "redundancy" joins pairs with interaction < -threshold (cells that substitute for each
    other, as two cells of one object matching the anchor do under a cosine game)."""
    if merge_on not in MERGE_RULES:
        raise ValueError(f"models/amcap/regions.py: AMCAP.MERGE_ON must be one of {MERGE_RULES}, got '{merge_on}'")
    joined = interactions > threshold if merge_on == "synergy" else interactions < -threshold
    merge = joined.cpu().tolist()
    pair_list = pairs.tolist()
    labels = []
    for row in merge:
        parent = list(range(num_cells))

        def find(x: int, parent: list[int] = parent) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]  # path halving
                x = parent[x]
            return x

        for (i, j), joined in zip(pair_list, row, strict=True):
            if joined:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)  # the smaller cell id stays the root
        roots = [find(c) for c in range(num_cells)]
        ids = {root: k for k, root in enumerate(dict.fromkeys(roots))}  # number regions by first cell
        labels.append([ids[r] for r in roots])
    return torch.tensor(labels, dtype=torch.long, device=interactions.device)


def slot_masks(labels: Tensor) -> Tensor:
    """labels [V, n] -> [V, n_slots=n, n] bool: slot l holds the cells labelled l (empty for unused ids)."""
    n = labels.shape[1]
    return labels[:, None, :] == torch.arange(n, device=labels.device)[None, :, None]


def region_values(labels: Tensor, key_cell_sums: Tensor, anchor: Tensor) -> Tensor:
    """Coalition value of every region slot: labels [V,n], cell sums [V,K,n,D], anchor [V,K,D] -> [V, n_slots].

    The mean over key frames of cos(mean token of the region, anchor); -inf for unused slots.
    """
    slots = slot_masks(labels)
    feats = torch.einsum("vln,vknd->vkld", slots.to(key_cell_sums.dtype), key_cell_sums)
    cos = torch.einsum("vkld,vkd->vkl", F.normalize(feats, dim=-1), F.normalize(anchor, dim=-1)).mean(dim=1)
    return cos.masked_fill(~slots.any(dim=-1), float("-inf"))


def masked_region_values(labels: Tensor, slot_feats: Tensor, anchor: Tensor) -> Tensor:
    """Value of every region slot as the mean over key frames of cos(the frame's CLIP embedding with only the
    region visible, anchor): labels [V,n], slot_feats [V,K,n_slots,D], anchor [V,K,D] -> [V, n_slots]."""
    cos = torch.einsum("vkld,vkd->vkl", F.normalize(slot_feats, dim=-1), F.normalize(anchor, dim=-1)).mean(dim=1)
    return cos.masked_fill(~slot_masks(labels).any(dim=-1), float("-inf"))


def region_motion(labels: Tensor, cell_motion: Tensor) -> Tensor:
    """How much every region slot changes over the clip: labels [V,n], cell motion [V,n] (each cell's mean token
    change between consecutive frames) -> [V, n_slots], the mean over the slot's cells; -inf for unused slots."""
    slots = slot_masks(labels).to(cell_motion.dtype)  # [V, n_slots, n]
    mean = torch.einsum("vln,vn->vl", slots, cell_motion) / slots.sum(-1).clamp_min(1.0)
    return mean.masked_fill(slots.sum(-1) == 0, float("-inf"))


def region_interactions(labels: Tensor, interactions: Tensor, pairs: Tensor) -> Tensor:
    """Total interaction inside every region slot (cohesion): labels [V,n], interactions [V,P] -> [V, n_slots]."""
    n = labels.shape[1]
    li, lj = labels[:, pairs[:, 0]], labels[:, pairs[:, 1]]  # [V, P]
    inside = torch.where(li == lj, interactions, torch.zeros_like(interactions))
    total = torch.zeros(labels.shape[0], n, dtype=interactions.dtype, device=labels.device)
    total.scatter_add_(1, li, inside)
    return total.masked_fill(~slot_masks(labels).any(dim=-1), float("-inf"))


def keep_top_regions(labels: Tensor, slot_scores: Tensor, num_regions: int, grid: int, token_hw: tuple[int, int]
                     ) -> Regions:
    """Keep the `num_regions` best-scored regions of each video (fewer exist: trailing slots invalid)."""
    n = labels.shape[1]
    k = min(num_regions, n)
    scores, slots = slot_scores.topk(k, dim=1)  # [V, k]
    cell_masks = slot_masks(labels).gather(1, slots[..., None].expand(-1, -1, n))  # [V, k, n]
    valid = torch.isfinite(scores)
    cell_masks = cell_masks & valid[..., None]
    slots = slots.masked_fill(~valid, -1)
    if k < num_regions:  # pad so every batch has exactly num_regions slots
        pad = num_regions - k
        cell_masks = F.pad(cell_masks, (0, 0, 0, pad), value=False)
        valid = F.pad(valid, (0, pad), value=False)
        scores = F.pad(scores, (0, pad), value=float("-inf"))
        slots = F.pad(slots, (0, pad), value=-1)
    cells = cell_index_map(*token_hw, grid).to(labels.device)  # [h, w]
    token_masks = cell_masks[:, :, cells]  # [V, R, h, w]
    return Regions(labels=labels, cell_masks=cell_masks, token_masks=token_masks, valid=valid, scores=scores,
                   slots=slots)


def region_features(tokens: Tensor, token_masks: Tensor) -> Tensor:
    """Masked mean over all frames: tokens [V, T, h, w, D], masks [V, R, h, w] -> [V, R, D] (zeros if empty)."""
    weights = token_masks.to(tokens.dtype)
    sums = torch.einsum("vrhw,vthwd->vrd", weights, tokens)
    count = weights.sum(dim=(2, 3)) * tokens.shape[1]  # tokens per region over all frames
    return sums / count.clamp_min(1.0)[..., None]


def attention_scores(region_feats: Tensor, text_tokens: Tensor) -> Tensor:
    """Cosine attention-score matrix: regions [V, R, D] x text tokens [C, L, D] -> [V, C, R, L]."""
    return torch.einsum("vrd,cld->vcrl", F.normalize(region_feats, dim=-1), F.normalize(text_tokens, dim=-1))


def select_salient(scores: Tensor, region_valid: Tensor, token_mask: Tensor, top_k: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k salient regions per (video, class).

    scores [V, C, R, L], region_valid [V, R], token_mask [C, L] (the tokens regions may align to) ->
    (selected region ids [V, C, K] long, saliency [V, C, R] = best token score, selected_valid [V, C, K] bool).
    """
    masked = scores.masked_fill(~token_mask[None, :, None, :], float("-inf"))
    saliency = masked.amax(dim=-1).masked_fill(~region_valid[:, None, :], float("-inf"))  # [V, C, R]
    k = min(top_k, saliency.shape[-1])
    best, selected = saliency.detach().topk(k, dim=-1)
    return selected, saliency, torch.isfinite(best)


def aligned_tokens(scores: Tensor, selected: Tensor, text_tokens: Tensor, token_mask: Tensor, temperature: float
                   ) -> tuple[Tensor, Tensor]:
    """Text tokens aligned with each selected region: softmax(score / temperature) over the class's tokens.

    scores [V, C, R, L], selected [V, C, K], text_tokens [C, L, D], token_mask [C, L] ->
    (aligned token features [V, C, K, D], best token position [V, C, K] long).
    """
    rows = scores.gather(2, selected[..., None].expand(-1, -1, -1, scores.shape[-1]))  # [V, C, K, L]
    rows = rows.masked_fill(~token_mask[None, :, None, :], float("-inf"))
    attn = (rows / temperature).softmax(dim=-1)
    feats = torch.einsum("vckl,cld->vckd", attn, text_tokens.to(attn.dtype))
    return feats, rows.argmax(dim=-1)
