"""OTAM (ordered temporal alignment) cumulative distance with CLIP-FSAR's padded-column recurrence.

For frame distances D [..., Lq, Ls], pad one zero column on each side of the support axis (columns 0 and Ls+1)
and fill a table C row by row:
  - column 0 stays 0 in every row;
  - row 0 is the running sum of the padded row;
  - later rows: column 1 takes softmin(up-left, up, left), columns 2..Ls softmin(up-left, left), and the last
    padded column softmin(up-left, up, left), each plus the cell's distance;
with softmin(x) = -lbda * log(sum(exp(-x / lbda))). The result is the bottom-right cell.

`otam_cum_dist` computes it in log space, one row at a time: inside a row the middle columns form the linear
recurrence a[m] = p[m] + logaddexp(u[m], a[m-1]) (a = -C / lbda, p = -D / lbda, u = the up-left values), whose
closed form is a prefix log-sum-exp (`torch.logcumsumexp`), so the only Python loop is over the Lq rows. The
gradient has the same structure (a reverse prefix log-sum-exp per row); a custom autograd function computes it
directly instead of replaying the forward graph, which is what makes forward+backward several times cheaper than
the per-cell loop.
`otam_cum_dist_loop` is the per-cell version of the same recurrence, kept as the reference for tests/benchmarks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOG2 = 0.6931471805599453


def _as_float32(dists: Tensor) -> Tensor:
    # Log-space scans in bf16/fp16 lose the small differences OTAM ranks by; always accumulate in fp32 (or fp64).
    return dists.float() if dists.dtype in (torch.float16, torch.bfloat16) else dists


def _forward_table(p: Tensor) -> tuple[Tensor, Tensor]:
    """Log-space table a = -C / lbda for p = -D / lbda: ([..., Lq, Ls] real columns, [..., Lq] last padded column)."""
    s = torch.cumsum(p, dim=-1)  # [..., Lq, Ls] running sums along each row
    table = torch.empty_like(p)
    last = torch.empty_like(p[..., 0])  # [..., Lq]
    a = s[..., 0, :]  # row 0 is a plain running sum
    table[..., 0, :], last[..., 0] = a, a[..., -1]
    head = torch.full_like(a[..., :1], LOG2)
    for row in range(1, p.shape[-2]):
        s_row = s[..., row, :]
        # a[m] = S[m] + logsumexp_{k<=m}(u[k] - S[k-1]) with u the incoming up-left values; column 1's incoming
        # value is logsumexp(0, a_prev[1], 0) (two zero padded cells), hence the log 2 head.
        w = torch.cat([head, a[..., :1], (a - s_row)[..., :-1]], dim=-1)  # [..., Ls + 1]
        new_a = s_row + torch.logcumsumexp(w, dim=-1)[..., 1:]
        # Last padded column (distance 0): up-left a_prev[Ls], up last_prev, left new_a[Ls].
        up_left_up = torch.logaddexp(a[..., -1], last[..., row - 1])
        last[..., row] = torch.logaddexp(up_left_up, new_a[..., -1])
        table[..., row, :] = a = new_a
    return table, last


def _reverse_logcumsumexp(x: Tensor) -> Tensor:
    return torch.flip(torch.logcumsumexp(torch.flip(x, dims=(-1,)), dim=-1), dims=(-1,))


def _backward_table(p: Tensor, table: Tensor, last: Tensor) -> Tensor:
    """d(result)/dD for every real cell, [..., Lq, Ls], by the reverse recurrence in log space.

    With g = log dF/dC and each softmin weight exp(a_pred - (a - p)), the row recurrence for h = g - a is
    h[m] = logaddexp(h[m+1] + p[m+1], b[m]) (b: contributions from the next row and the row's last column),
    again a prefix log-sum-exp; row 0 (plain running sum) has unit weights instead.
    """
    num_rows = p.shape[-2]
    grads = torch.empty_like(p)
    g_last = last - last[..., -1:]  # the last padded column feeds only "up": a telescoping product of weights
    h_next = None
    for row in range(num_rows - 1, -1, -1):
        b = torch.full_like(p[..., row, :], float("-inf"))  # [..., Ls]
        if row < num_rows - 1:
            q = h_next + p[..., row + 1, :]
            b[..., :-1] = q[..., 1:]  # next row's cell m+1 through its up-left edge
            b[..., 0] = torch.logaddexp(b[..., 0], q[..., 0])  # next row's column 1 through its up edge
            b[..., -1] = torch.logaddexp(b[..., -1], g_last[..., row + 1] - last[..., row + 1])  # next row's last
        if row > 0:
            b[..., -1] = torch.logaddexp(b[..., -1], g_last[..., row] - last[..., row])  # this row's last column
            cum = torch.cumsum(p[..., row, :], dim=-1)
            h_next = _reverse_logcumsumexp(b + cum) - cum
            grads[..., row, :] = torch.exp(h_next + table[..., row, :])
        else:
            b = b + table[..., 0, :]
            b[..., -1] = torch.logaddexp(b[..., -1], g_last[..., 0])  # row 0's last column copies its left cell
            grads[..., 0, :] = torch.exp(_reverse_logcumsumexp(b))
    return grads


class _OTAMCumDist(torch.autograd.Function):
    """Forward without an autograd graph (one table), backward by the closed-form reverse recurrence."""

    @staticmethod
    def forward(ctx, dists: Tensor, lbda: float) -> Tensor:
        p = -dists / lbda
        table, last = _forward_table(p)
        ctx.save_for_backward(p, table, last)
        return -lbda * last[..., -1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        p, table, last = ctx.saved_tensors
        return grad_out[..., None, None] * _backward_table(p, table, last), None


def otam_cum_dist(dists: Tensor, lbda: float = 0.5) -> Tensor:
    """OTAM distance of each query/support pair in one direction: [..., Lq, Ls] -> [...]."""
    if dists.dim() < 2 or dists.shape[-1] < 1 or dists.shape[-2] < 1:
        raise ValueError(f"models/otam.py: dists must be [..., Lq, Ls] with Lq, Ls >= 1, got {tuple(dists.shape)}")
    with torch.autocast(device_type=dists.device.type, enabled=False):
        return _OTAMCumDist.apply(_as_float32(dists), lbda)


def otam_cum_dist_loop(dists: Tensor, lbda: float = 0.5) -> Tensor:
    """Per-cell reference implementation of `otam_cum_dist` (slow; for tests and benchmarks)."""
    dists = F.pad(_as_float32(dists), (1, 1))  # [..., Lq, Ls + 2]
    num_rows, num_cols = dists.shape[-2], dists.shape[-1]
    zero = dists.new_zeros(dists.shape[:-2])
    rows = []

    def softmin(*values: Tensor) -> Tensor:
        return -lbda * torch.logsumexp(torch.stack([-v / lbda for v in values], dim=-1), dim=-1)

    row = [zero]
    for m in range(1, num_cols):
        row.append(dists[..., 0, m] + row[m - 1])
    rows.append(row)
    for line in range(1, num_rows):
        up, row = rows[-1], [zero]
        row.append(dists[..., line, 1] + softmin(up[0], up[1], row[0]))
        for m in range(2, num_cols - 1):
            row.append(dists[..., line, m] + softmin(up[m - 1], row[m - 1]))
        row.append(dists[..., line, -1] + softmin(up[-2], up[-1], row[-1]))
        rows.append(row)
    return rows[-1][-1]


def otam_distance(dists: Tensor, lbda: float = 0.5, bidirectional: bool = True) -> Tensor:
    """CLIP-FSAR's OTAM distance: otam(D) + otam(D^T) (query->support and support->query), or otam(D) only."""
    if not bidirectional:
        return otam_cum_dist(dists, lbda)
    if dists.shape[-1] == dists.shape[-2]:  # both directions in one batched pass (half the row loop overhead)
        return otam_cum_dist(torch.stack([dists, dists.transpose(-1, -2)]), lbda).sum(0)
    return otam_cum_dist(dists, lbda) + otam_cum_dist(dists.transpose(-1, -2), lbda)
