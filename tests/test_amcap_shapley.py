"""Pairwise Shapley interaction index (models/amcap/shapley.py): exactness, estimator, vectorised cosine game."""
import math

import numpy as np
import pytest
import torch

from models.amcap.shapley import (
    cell_index_map,
    cosine_game_interactions,
    cosine_values,
    enumerate_coalitions,
    grid_adjacent_pairs,
    interactions_from_game,
    pool_cells,
    sample_coalitions,
    shapley_interactions,
)

N9 = 9  # a 3 x 3 grid: 512 coalitions under enumeration


def _cosine_game(seed: int, frames: int = 3, dim: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randn(frames, N9, dim, generator=gen, dtype=torch.float64) + 0.3
    anchor = torch.randn(frames, dim, generator=gen, dtype=torch.float64)
    return cells, anchor


def test_grid_adjacent_pairs_are_the_4_neighbours():
    pairs = grid_adjacent_pairs(4)
    assert pairs.shape == (2 * 4 * 3, 2)
    rows, cols = pairs // 4, pairs % 4
    manhattan = (rows[:, 0] - rows[:, 1]).abs() + (cols[:, 0] - cols[:, 1]).abs()
    assert bool((manhattan == 1).all())
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)


def test_cells_cover_uneven_token_grids():
    cells = cell_index_map(7, 7, 4)  # RN50's 7 x 7 grid
    assert sorted(cells.unique().tolist()) == list(range(16))
    tokens = torch.randn(2, 7, 7, 5)
    sums, counts = pool_cells(tokens, 4)
    assert int(counts.sum()) == 49
    assert torch.allclose(sums.sum(dim=1), tokens.sum(dim=(1, 2)), atol=1e-5)


def test_enumeration_weights_are_a_distribution():
    masks, weights = enumerate_coalitions(N9)
    assert masks.shape == (2 ** N9, N9)
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-12)


def test_additive_game_has_zero_interaction():
    player_values = torch.randn(N9, dtype=torch.float64)
    pairs = grid_adjacent_pairs(3)
    game = lambda m: m.to(torch.float64) @ player_values
    exact = interactions_from_game(game, *enumerate_coalitions(N9), pairs)
    sampled = interactions_from_game(game, *sample_coalitions(N9, 64, torch.Generator().manual_seed(0)), pairs)
    assert exact.abs().max() < 1e-12
    assert sampled.abs().max() < 1e-12


def test_known_pair_synergy_is_returned_exactly_under_enumeration():
    player_values = torch.randn(N9, dtype=torch.float64)
    pairs = grid_adjacent_pairs(3)
    synergy_pair, bonus = 4, 1.75  # pairs[4] gets an extra 1.75 when both of its cells are in the coalition
    i, j = pairs[synergy_pair].tolist()
    game = lambda m: m.to(torch.float64) @ player_values + bonus * (m[..., i] & m[..., j]).to(torch.float64)
    result = interactions_from_game(game, *enumerate_coalitions(N9), pairs)
    expected = torch.zeros(len(pairs), dtype=torch.float64)
    expected[synergy_pair] = bonus
    assert torch.allclose(result, expected, atol=1e-12)


def test_unanimity_game_of_four_players_has_pair_index_one_third():
    # The Shapley interaction index of u_T (v = 1 iff T is inside the coalition) is 1/(|T|-1) for pairs in T:
    # this checks the size weights, which a pure pair synergy cannot (uniform weights would give 1/4).
    pairs = grid_adjacent_pairs(3)
    team = (0, 1, 3, 4)  # the top-left 2 x 2 block: pairs (0,1), (3,4), (0,3), (1,4) lie inside it
    game = lambda m: m[..., list(team)].all(dim=-1).to(torch.float64)
    result = interactions_from_game(game, *enumerate_coalitions(N9), pairs)
    for k, (i, j) in enumerate(pairs.tolist()):
        expected = 1 / 3 if i in team and j in team else 0.0
        assert result[k].item() == pytest.approx(expected, abs=1e-12), (i, j)


@pytest.mark.parametrize("empty_value", ["zero", "singleton_mean"])
def test_vectorised_cosine_game_matches_the_generic_definition(empty_value):
    cells, anchor = _cosine_game(seed=1)
    pairs = grid_adjacent_pairs(3)
    game = lambda m: cosine_values(cells, anchor, m, empty_value)
    for masks, weights in (enumerate_coalitions(N9), sample_coalitions(N9, 37, torch.Generator().manual_seed(3))):
        fast = cosine_game_interactions(cells, anchor, pairs, masks, weights, empty_value)
        slow = interactions_from_game(game, masks, weights, pairs)
        assert torch.allclose(fast, slow, atol=1e-12)


def test_identical_cells_are_redundant_with_zero_empty_value_and_neutral_with_singleton_mean():
    cells = torch.randn(1, 1, 8, dtype=torch.float64).expand(1, N9, 8)
    anchor = torch.randn(1, 8, dtype=torch.float64)
    pairs = grid_adjacent_pairs(3)
    masks, weights = enumerate_coalitions(N9)
    value = torch.nn.functional.cosine_similarity(cells[0, 0], anchor[0], dim=0)
    zero = cosine_game_interactions(cells, anchor, pairs, masks, weights, "zero")
    # Only S = {} contributes: v(ij) - v(i) - v(j) + 0 = -v, with weight 1/(n-1).
    assert torch.allclose(zero, torch.full_like(zero, -value.item() / (N9 - 1)), atol=1e-12)
    neutral = cosine_game_interactions(cells, anchor, pairs, masks, weights, "singleton_mean")
    assert neutral.abs().max() < 1e-12


def test_estimator_converges_to_exact_values_for_9_players():
    """Stated tolerance: 16,384 shared coalitions give every pair within 1e-3 of the exact index (about 2% of the
    largest |I| here), and at least 4x less error than 64 coalitions."""
    cells, anchor = _cosine_game(seed=2)
    pairs = grid_adjacent_pairs(3)
    exact = cosine_game_interactions(cells, anchor, pairs, *enumerate_coalitions(N9))
    errors = {}
    for num in (64, 16384):
        masks, weights = sample_coalitions(N9, num, torch.Generator().manual_seed(0))
        errors[num] = (cosine_game_interactions(cells, anchor, pairs, masks, weights) - exact).abs().max().item()
    assert errors[16384] < 1e-3
    assert errors[16384] < errors[64] / 4
    assert exact.abs().max() > 0.02  # the check is not vacuous


def test_matches_shapiq_exact_computer():
    shapiq = pytest.importorskip("shapiq")
    cells, anchor = _cosine_game(seed=4, frames=1)
    pairs = grid_adjacent_pairs(3)
    ours = cosine_game_interactions(cells, anchor, pairs, *enumerate_coalitions(N9))[0]

    def game(coalitions: np.ndarray) -> np.ndarray:
        return cosine_values(cells, anchor, torch.from_numpy(coalitions.astype(bool)))[0].numpy()

    theirs = shapiq.ExactComputer(game, n_players=N9)("SII", order=2)
    for k, (i, j) in enumerate(pairs.tolist()):
        assert ours[k].item() == pytest.approx(theirs[(i, j)], abs=1e-10), (i, j)


def test_sampled_coalitions_are_seeded_and_cover_every_size():
    a = sample_coalitions(16, 64, torch.Generator().manual_seed(7))
    b = sample_coalitions(16, 64, torch.Generator().manual_seed(7))
    c = sample_coalitions(16, 64, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    sizes = a[0].sum(dim=1)
    assert set(sizes.tolist()) == set(range(17))  # stratified: every size 0..n appears
    per_size = torch.zeros(17, dtype=torch.float64).index_add(0, sizes, a[1])
    assert torch.allclose(per_size, torch.full((17,), 1 / 17, dtype=torch.float64))  # P(|T| = k) = 1/(n+1)


def test_frames_do_not_influence_each_other():
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randn(4, 8, 8, 16, generator=gen)
    anchor = torch.randn(4, 16, generator=gen)
    together = shapley_interactions(tokens, anchor, 4, 64, generator=torch.Generator().manual_seed(1))
    alone = shapley_interactions(tokens[2:3], anchor[2:3], 4, 64, generator=torch.Generator().manual_seed(1))
    assert together.shape == (4, 24)
    assert torch.allclose(together[2:3], alone, atol=1e-10)


def test_interactions_carry_no_gradient():
    tokens = torch.randn(2, 8, 8, 16, requires_grad=True)
    out = shapley_interactions(tokens, torch.randn(2, 16), 2, exact=True)
    assert not out.requires_grad
