"""OTAM: the vectorised recurrence equals a per-cell reference, has correct gradients, and is autocast safe."""
import math

import pytest
import torch

from models.otam import otam_cum_dist, otam_cum_dist_loop, otam_distance

SHAPES = [(2, 3, 4, 4), (3, 5, 6), (2, 1, 1), (4, 1, 5), (3, 5, 1), (2, 2, 8, 8)]


def reference_otam(dists: list[list[float]], lbda: float = 0.5) -> float:
    """CLIP-FSAR's recurrence on one [Lq][Ls] matrix, written cell by cell on Python floats."""
    rows = [[0.0] + list(r) + [0.0] for r in dists]  # one zero column on each side
    num_rows, num_cols = len(rows), len(rows[0])
    cum = [[0.0] * num_cols for _ in range(num_rows)]

    def softmin(*xs: float) -> float:
        return -lbda * math.log(sum(math.exp(-x / lbda) for x in xs))

    for m in range(1, num_cols):
        cum[0][m] = rows[0][m] + cum[0][m - 1]
    for line in range(1, num_rows):
        cum[line][1] = rows[line][1] + softmin(cum[line - 1][0], cum[line - 1][1], cum[line][0])
        for m in range(2, num_cols - 1):
            cum[line][m] = rows[line][m] + softmin(cum[line - 1][m - 1], cum[line][m - 1])
        last = num_cols - 1
        cum[line][last] = rows[line][last] + softmin(cum[line - 1][last - 1], cum[line - 1][last],
                                                     cum[line][last - 1])
    return cum[-1][-1]


def reference_batch(dists: torch.Tensor, lbda: float = 0.5) -> torch.Tensor:
    flat = dists.reshape(-1, *dists.shape[-2:]).tolist()
    return torch.tensor([reference_otam(d, lbda) for d in flat], dtype=torch.float64).reshape(dists.shape[:-2])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lbda", [0.5, 0.1])
def test_vectorised_otam_equals_per_cell_reference(shape, lbda):
    dists = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(len(shape))) * 2
    expected = reference_batch(dists, lbda)
    torch.testing.assert_close(otam_cum_dist(dists, lbda), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(otam_cum_dist_loop(dists, lbda), expected, rtol=1e-10, atol=1e-10)


def test_float32_values_match_loop_on_benchmark_shape():
    dists = torch.rand(25, 5, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    torch.testing.assert_close(otam_cum_dist(dists), otam_cum_dist_loop(dists), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_otam_gradcheck(shape):
    dists = (torch.rand(*shape, dtype=torch.float64) * 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: otam_cum_dist(d, 0.5), (dists,))
    assert torch.autograd.gradcheck(lambda d: otam_cum_dist(d, 0.2), (dists,))


def test_gradients_match_autograd_through_the_loop():
    dists = (torch.rand(3, 4, 8, 8, dtype=torch.float64) * 2).requires_grad_(True)
    weights = torch.rand(3, 4, dtype=torch.float64)
    (grad_fast,) = torch.autograd.grad((otam_cum_dist(dists) * weights).sum(), dists)
    (grad_loop,) = torch.autograd.grad((otam_cum_dist_loop(dists) * weights).sum(), dists)
    torch.testing.assert_close(grad_fast, grad_loop)


@pytest.mark.parametrize("shape", [(3, 5, 8, 6), (3, 5, 8, 8)])
def test_bidirectional_is_sum_of_both_directions(shape):
    dists = torch.rand(*shape, dtype=torch.float64)
    both = otam_distance(dists, 0.5)
    expected = reference_batch(dists) + reference_batch(dists.transpose(-1, -2))
    torch.testing.assert_close(both, expected)
    torch.testing.assert_close(otam_distance(dists, 0.5, bidirectional=False), reference_batch(dists))


def test_low_precision_inputs_are_accumulated_in_float32():
    dists = torch.rand(4, 5, 8, 8) * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = otam_cum_dist(dists.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, otam_cum_dist(dists.bfloat16().float()))
    x = dists.bfloat16().requires_grad_(True)
    otam_cum_dist(x).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


def test_rejects_inputs_without_two_sequence_axes():
    with pytest.raises(ValueError, match="Lq, Ls"):
        otam_cum_dist(torch.rand(5))
