"""Regions from interactions (models/amcap/regions.py): partition, kept masks, features, salient selection."""
import pytest
import torch

from models.amcap.regions import (
    aligned_tokens,
    attention_scores,
    keep_top_regions,
    partition_cells,
    region_features,
    region_interactions,
    region_values,
    select_salient,
)
from models.amcap.shapley import cell_index_map, grid_adjacent_pairs


def _connected_within(labels: list[int], merged: set[tuple[int, int]], region: int) -> bool:
    cells = [c for c, lab in enumerate(labels) if lab == region]
    seen, stack = {cells[0]}, [cells[0]]
    while stack:
        c = stack.pop()
        for i, j in merged:
            for a, b in ((i, j), (j, i)):
                if a == c and b not in seen and labels[b] == region:
                    seen.add(b)
                    stack.append(b)
    return seen == set(cells)


def test_union_find_merges_exactly_the_positive_pairs():
    pairs = grid_adjacent_pairs(3)
    positive = {(0, 1), (1, 2), (3, 6)}
    inter = torch.tensor([[0.3 if tuple(p) in positive else -0.1 for p in pairs.tolist()]])
    labels = partition_cells(inter, pairs, 9)
    assert labels.tolist() == [[0, 0, 0, 1, 2, 3, 1, 4, 5]]


def test_merging_on_redundancy_joins_exactly_the_pairs_below_minus_the_threshold():
    pairs = grid_adjacent_pairs(3)
    redundant = {(0, 1), (1, 2), (3, 6)}
    inter = torch.tensor([[-0.3 if tuple(p) in redundant else 0.1 for p in pairs.tolist()]])
    assert partition_cells(inter, pairs, 9, 0.0, "redundancy").tolist() == [[0, 0, 0, 1, 2, 3, 1, 4, 5]]
    assert partition_cells(inter, pairs, 9, 0.5, "redundancy").tolist() == [list(range(9))]  # -0.3 > -0.5
    with pytest.raises(ValueError, match="AMCAP.MERGE_ON"):
        partition_cells(inter, pairs, 9, 0.0, "both")


def test_random_partitions_cover_every_cell_once_with_connected_regions():
    gen = torch.Generator().manual_seed(0)
    pairs = grid_adjacent_pairs(4)
    inter = torch.randn(20, len(pairs), generator=gen)
    labels = partition_cells(inter, pairs, 16)
    for row, lab in zip(inter.tolist(), labels.tolist(), strict=True):
        merged = {tuple(p) for p, x in zip(pairs.tolist(), row, strict=True) if x > 0}
        for i, j in merged:  # a positive pair never straddles two regions
            assert lab[i] == lab[j]
        ids = sorted(set(lab))
        assert ids == list(range(len(ids)))  # every cell has exactly one id, ids dense from 0
        for region in ids:
            assert _connected_within(lab, merged, region)


def test_kept_regions_are_disjoint_parts_of_the_partition_ranked_by_score():
    gen = torch.Generator().manual_seed(1)
    pairs = grid_adjacent_pairs(4)
    labels = partition_cells(torch.randn(6, len(pairs), generator=gen), pairs, 16)
    key_cells, anchor = torch.randn(6, 2, 16, 8, generator=gen), torch.randn(6, 2, 8, generator=gen)
    scores = region_values(labels, key_cells, anchor)
    regions = keep_top_regions(labels, scores, num_regions=4, grid=4, token_hw=(8, 8))
    assert regions.cell_masks.shape == (6, 4, 16) and regions.token_masks.shape == (6, 4, 8, 8)
    assert int(regions.cell_masks.sum(dim=1).max()) <= 1  # disjoint
    for v in range(6):
        for r in range(4):
            cells = regions.cell_masks[v, r]
            if not regions.valid[v, r]:
                assert not cells.any()
                continue
            region_ids = labels[v][cells].unique()
            assert len(region_ids) == 1  # a kept region is one whole region of the partition
            assert torch.equal(cells, labels[v] == region_ids[0])
        kept = regions.scores[v][regions.valid[v]]
        assert bool((kept[:-1] >= kept[1:]).all())
        assert int(regions.valid[v].sum()) == min(4, int(labels[v].max()) + 1)
    cells = cell_index_map(8, 8, 4)
    assert torch.equal(regions.token_masks, regions.cell_masks[:, :, cells])  # token masks follow cell masks


def test_fewer_regions_than_slots_leave_invalid_padding():
    pairs = grid_adjacent_pairs(2)
    labels = partition_cells(torch.ones(1, len(pairs)), pairs, 4)  # everything merges into one region
    regions = keep_top_regions(labels, region_interactions(labels, torch.ones(1, len(pairs)), pairs), 3, 2, (4, 4))
    assert regions.valid.tolist() == [[True, False, False]]
    assert bool(regions.token_masks[0, 0].all()) and not regions.token_masks[0, 1:].any()


def test_region_features_are_masked_means_that_ignore_tokens_outside():
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 3, 4, 4, 5, generator=gen, requires_grad=True)
    masks = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True
    masks[1, 1, 1:, 3] = True
    feats = region_features(tokens, masks)
    assert torch.allclose(feats[0, 0], tokens[0, :, :2, :2].mean(dim=(0, 1, 2)))
    assert torch.allclose(feats[1, 1], tokens[1, :, 1:, 3].mean(dim=(0, 1)))
    assert feats[0, 1].abs().max() == 0  # an empty slot is zero, not NaN
    feats.sum().backward()
    grad_inside = tokens.grad[0, :, :2, :2]
    assert bool((grad_inside != 0).all())
    outside = ~(masks[:, 0] | masks[:, 1])[:, None, :, :, None].expand_as(tokens)
    assert tokens.grad[outside].abs().max() == 0  # differentiable, and only through the masked tokens


def test_salient_regions_use_only_valid_regions_and_unmasked_tokens():
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]])  # [V=1, R=3, D=2]
    text = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 5.0]]])  # [C=1, L=3, D=2]
    token_mask = torch.tensor([[True, True, False]])
    scores = attention_scores(regions, text)
    valid = torch.tensor([[True, False, True]])
    selected, saliency, selected_valid = select_salient(scores, valid, token_mask, top_k=2)
    assert set(selected[0, 0].tolist()) == {0, 2}  # region 1 is invalid even though it matches token 0 best
    assert saliency[0, 0, 1] == float("-inf") and bool(selected_valid.all())
    feats, best = aligned_tokens(scores, selected, text, token_mask, temperature=0.01)
    first = selected[0, 0].tolist().index(0)
    assert best[0, 0, first].item() == 1  # region 0 = (1, 0) aligns with token 1
    assert torch.allclose(feats[0, 0, first], text[0, 1], atol=1e-3)  # masked token 2 gets no weight


def test_top_k_larger_than_valid_regions_marks_the_rest_invalid():
    scores = torch.rand(2, 3, 4, 5)
    valid = torch.tensor([[True, False, False, False], [True, True, True, True]])
    selected, _, selected_valid = select_salient(scores, valid, torch.ones(3, 5, dtype=torch.bool), top_k=2)
    assert selected_valid[0].tolist() == [[True, False]] * 3 and bool(selected_valid[1].all())
    assert bool((selected[0, :, 0] == 0).all())
