"""Pairwise Shapley interaction index between adjacent cells of a g x g patch grid (AMCAP steps 2-4).

Players are the g*g cells of a frame's patch-token grid. The value of a coalition S is the cosine between the
mean token feature of S and an anchor vector; v(empty) is 0 ("zero") or the mean single-cell value
("singleton_mean", which makes identical cells non-interacting instead of redundant). For a pair (i, j) the
Shapley interaction index is

    I_ij = sum_{S subset of N minus {i,j}} s!(n-s-2)!/(n-1)! * [v(S+ij) - v(S+i) - v(S+j) + v(S)].

Estimator: draw coalitions T of all n players with |T| uniform on 0..n and T uniform given its size, and use
S = T minus {i, j} for every pair. That S has exactly the Shapley-interaction weights above for every pair at once
(sum over |T cap {i,j}| of the size probabilities telescopes), so one shared set of coalitions gives an unbiased
weighted mean for all pairs (sizes are stratified, see `sample_coalitions`); exact enumeration is the same sum over
all 2^n coalitions weighted by P(T) = 1 / ((n+1) * C(n, |T|)).

Because the cosine is scale free, the mean of S's tokens can be replaced by the sum of its cell sums, and every
value the index needs follows from the cell Gram matrix G = F F^T and the anchor projections p = F a: one batched
matrix product [videos*frames, coalitions, n] x [n, n] per chunk of coalitions, independent of the feature width.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

EMPTY_VALUES = ("zero", "singleton_mean")
# Coalitions are processed in chunks so exact enumeration of a 4 x 4 grid (65,536 coalitions) fits in memory.
_CHUNK = 4096


def grid_adjacent_pairs(grid: int) -> Tensor:
    """[P, 2] long cell-index pairs of 4-neighbours on a grid x grid layout (row-major cells), P = 2g(g-1)."""
    if grid < 1:
        raise ValueError(f"models/amcap/shapley.py: grid must be >= 1, got {grid}")
    idx = torch.arange(grid * grid).reshape(grid, grid)
    horizontal = torch.stack([idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)], dim=1)
    vertical = torch.stack([idx[:-1, :].reshape(-1), idx[1:, :].reshape(-1)], dim=1)
    return torch.cat([horizontal, vertical], dim=0)


def cell_index_map(height: int, width: int, grid: int) -> Tensor:
    """[height, width] long: the cell (row-major, 0..grid*grid-1) each token belongs to (near-equal bands)."""
    if grid > min(height, width):
        raise ValueError(f"models/amcap/shapley.py: AMCAP.GRID {grid} exceeds the token grid {height}x{width}")
    rows = torch.arange(height) * grid // height  # token row -> cell row
    cols = torch.arange(width) * grid // width
    return rows[:, None] * grid + cols[None, :]


def pool_cells(tokens: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """tokens [B, h, w, D] -> (cell sums [B, n, D], token counts per cell [n]); differentiable in tokens."""
    b, h, w, d = tokens.shape
    cells = cell_index_map(h, w, grid).to(tokens.device).reshape(-1)  # [h*w]
    n = grid * grid
    onehot = torch.zeros(n, h * w, dtype=tokens.dtype, device=tokens.device)
    onehot[cells, torch.arange(h * w, device=tokens.device)] = 1.0
    sums = torch.einsum("nk,bkd->bnd", onehot, tokens.reshape(b, h * w, d))
    return sums, onehot.sum(dim=1)


def sample_coalitions(num_players: int, num: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Monte Carlo coalitions (masks bool [num, n], weights [num]); |T| on 0..n with P = 1/(n+1), T uniform given size.

    Sizes are stratified when num >= n+1 (every size drawn about num/(n+1) times, the remainder at random, each
    draw weighted 1/((n+1) * count of its size)): unbiased and, measured on 4 x 4 cosine games, about half the
    error of independent sizes at 64 coalitions. Drawn on the CPU from `generator`, so a seed fixes them anywhere.
    """
    if num < 1:
        raise ValueError(f"models/amcap/shapley.py: AMCAP.NUM_COALITIONS must be >= 1, got {num}")
    num_sizes = num_players + 1
    if num >= num_sizes:
        counts = torch.full((num_sizes,), num // num_sizes)
        counts[torch.randperm(num_sizes, generator=generator)[:num % num_sizes]] += 1
        sizes = torch.repeat_interleave(torch.arange(num_sizes), counts)
        weights = 1.0 / (num_sizes * counts[sizes].to(torch.float64))
    else:
        sizes = torch.randint(0, num_sizes, (num,), generator=generator)
        weights = torch.full((num,), 1.0 / num, dtype=torch.float64)
    keys = torch.rand(num, num_players, generator=generator)
    ranks = keys.argsort(dim=1).argsort(dim=1)  # a uniform random rank per player
    return ranks < sizes[:, None], weights


def enumerate_coalitions(num_players: int) -> tuple[Tensor, Tensor]:
    """All 2^n coalitions: (masks bool [2^n, n], weights P(T) = 1/((n+1) C(n,|T|)) [2^n]); weights sum to 1."""
    if num_players > 20:
        raise ValueError(f"models/amcap/shapley.py: exact enumeration of {num_players} players (2^{num_players} "
                         f"coalitions) is too large; set AMCAP.EXACT False")
    codes = torch.arange(2 ** num_players)
    masks = (codes[:, None] >> torch.arange(num_players)[None, :]) & 1 == 1
    sizes = masks.sum(dim=1)
    binom = torch.tensor([math.comb(num_players, k) for k in range(num_players + 1)], dtype=torch.float64)
    return masks, 1.0 / ((num_players + 1) * binom[sizes])


def _pair_onehots(pairs: Tensor, num_players: int) -> tuple[Tensor, Tensor]:
    eye = torch.eye(num_players, dtype=torch.bool, device=pairs.device)
    return eye[pairs[:, 0]], eye[pairs[:, 1]]  # [P, n] each


def interactions_from_game(value_fn: Callable[[Tensor], Tensor], masks: Tensor, weights: Tensor,
                           pairs: Tensor) -> Tensor:
    """Generic pairwise interaction index of any game: `value_fn(bool [..., n]) -> [*batch, ...]` values.

    Evaluates v on T-minus-{i,j} plus each subset of {i,j} for every coalition T and pair; returns [*batch, P].
    Slow but obviously correct: the reference for tests and for games that are not cosine games.
    """
    n = masks.shape[1]
    on_i, on_j = _pair_onehots(pairs.to(masks.device), n)
    base = masks[:, None, :] & ~(on_i | on_j)[None]  # [C, P, n]
    four = torch.stack([base, base | on_i, base | on_j, base | on_i | on_j], dim=2)  # [C, P, 4, n]
    values = value_fn(four).to(torch.float64)  # [*batch, C, P, 4]
    delta = values[..., 3] - values[..., 1] - values[..., 2] + values[..., 0]
    return torch.einsum("...cp,c->...p", delta, weights.to(values.device))


def empty_coalition_value(cell_sums: Tensor, anchor: Tensor, empty_value: str = "zero") -> Tensor:
    """v(empty) per frame [B]: 0, or the mean over cells of the single-cell values ("singleton_mean")."""
    if empty_value not in EMPTY_VALUES:
        raise ValueError(f"models/amcap/shapley.py: AMCAP.EMPTY_VALUE must be one of {EMPTY_VALUES}, "
                         f"got '{empty_value}'")
    if empty_value == "zero":
        return cell_sums.new_zeros(cell_sums.shape[0])
    a = torch.nn.functional.normalize(anchor, dim=-1)
    return torch.einsum("bnd,bd->bn", torch.nn.functional.normalize(cell_sums, dim=-1), a).mean(dim=1)


def cosine_values(cell_sums: Tensor, anchor: Tensor, masks: Tensor, empty_value: str = "zero") -> Tensor:
    """v(T) = cos(mean token of T, anchor) for cell sums [B, n, D], anchor [B, D], masks [..., n] -> [B, ...]."""
    flat = masks.reshape(-1, masks.shape[-1]).to(cell_sums.dtype)  # [M, n]
    feats = torch.einsum("mn,bnd->bmd", flat, cell_sums)
    anchor = torch.nn.functional.normalize(anchor, dim=-1)
    norm = feats.norm(dim=-1)
    values = torch.einsum("bmd,bd->bm", feats, anchor) / norm.clamp_min(1e-12)
    empty = empty_coalition_value(cell_sums, anchor, empty_value)[:, None]
    values = torch.where(flat.sum(dim=1) > 0, values, empty)
    return values.reshape(cell_sums.shape[0], *masks.shape[:-1])


def _cosine(dot: Tensor, sq_norm: Tensor) -> Tensor:
    """<sum, a> / ||sum|| from the dot product and the squared norm (clamped: rounding can push it below 0)."""
    return dot / sq_norm.clamp_min(1e-24).sqrt()


def cosine_game_interactions(cell_sums: Tensor, anchor: Tensor, pairs: Tensor, masks: Tensor,
                             weights: Tensor, empty_value: str = "zero") -> Tensor:
    """Interaction index of the cosine game for all pairs: cell sums [B, n, D], anchor [B, D] -> [B, P] (float64).

    Every coalition value is assembled from G = F F^T and p = F a, so the only heavy step is M @ G per chunk.
    """
    feats = cell_sums.detach().to(torch.float64)
    a = torch.nn.functional.normalize(anchor.detach().to(torch.float64), dim=-1)
    v_empty = empty_coalition_value(feats, a, empty_value)[:, None, None]  # [B, 1, 1]
    gram = feats @ feats.transpose(1, 2)  # [B, n, n]
    proj = torch.einsum("bnd,bd->bn", feats, a)  # [B, n]
    pi, pj = pairs[:, 0].to(feats.device), pairs[:, 1].to(feats.device)
    g_ii, g_jj, g_ij = gram[:, pi, pi][:, None], gram[:, pj, pj][:, None], gram[:, pi, pj][:, None]  # [B, 1, P]
    p_i, p_j = proj[:, None, pi], proj[:, None, pj]  # [B, 1, P]
    out = feats.new_zeros(feats.shape[0], pairs.shape[0])
    for start in range(0, masks.shape[0], _CHUNK):
        m = masks[start:start + _CHUNK].to(device=feats.device, dtype=torch.float64)  # [C, n]
        w = weights[start:start + _CHUNK].to(device=feats.device, dtype=torch.float64)
        gm = torch.matmul(m, gram)  # [B, C, n]: (G m) for every coalition
        sq = (gm * m).sum(-1, keepdim=True)  # [B, C, 1]: ||sum of T||^2
        dot = (proj @ m.T)[..., None]  # [B, C, 1]: <sum of T, a>
        m_i, m_j = m[:, pi], m[:, pj]  # [C, P]: whether i / j are in T
        # Remove i and j from T to get S (per pair), then add them back in the four combinations.
        dot_s = dot - m_i * p_i - m_j * p_j
        sq_s = sq - 2 * m_i * gm[..., pi] - 2 * m_j * gm[..., pj] + m_i * g_ii + m_j * g_jj + 2 * m_i * m_j * g_ij
        gs_i = gm[..., pi] - m_i * g_ii - m_j * g_ij  # (G m_S)_i
        gs_j = gm[..., pj] - m_i * g_ij - m_j * g_jj
        size_s = (m.sum(-1, keepdim=True) - m_i - m_j).expand_as(dot_s)
        v00 = torch.where(size_s > 0.5, _cosine(dot_s, sq_s), v_empty)
        v10 = _cosine(dot_s + p_i, sq_s + 2 * gs_i + g_ii)
        v01 = _cosine(dot_s + p_j, sq_s + 2 * gs_j + g_jj)
        v11 = _cosine(dot_s + p_i + p_j, sq_s + 2 * gs_i + 2 * gs_j + g_ii + g_jj + 2 * g_ij)
        out += torch.einsum("bcp,c->bp", v11 - v10 - v01 + v00, w)
    return out


@torch.no_grad()
def shapley_interactions(tokens: Tensor, anchor: Tensor, grid: int, num_coalitions: int = 64, exact: bool = False,
                         generator: torch.Generator | None = None, empty_value: str = "zero") -> Tensor:
    """Adjacent-cell interaction index of frames: tokens [B, h, w, D], anchor [B, D] -> [B, P] (no gradient).

    Pairs follow `grid_adjacent_pairs(grid)`; the same coalitions serve every pair and every frame, so the
    result of a frame does not depend on the other frames in the batch.
    """
    cell_sums, _ = pool_cells(tokens.detach(), grid)
    n = grid * grid
    masks, weights = enumerate_coalitions(n) if exact else sample_coalitions(n, num_coalitions, generator)
    return cosine_game_interactions(cell_sums, anchor, grid_adjacent_pairs(grid), masks, weights, empty_value)
