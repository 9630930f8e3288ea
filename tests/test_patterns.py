import pytest
import torch

from hf_prune.patterns import BlockPattern, SemiStructuredPattern, StructuredPattern, get_pattern


@pytest.mark.parametrize("name,rows,cols", [("4x1", 4, 1), ("2x2", 2, 2), ("1x4", 1, 4), ("1x1", 1, 1)])
def test_block_mask_structure(name, rows, cols):
    pattern = get_pattern(name)
    assert isinstance(pattern, BlockPattern) and (pattern.rows, pattern.cols) == (rows, cols)
    shape = (8, 8)
    scores = torch.arange(64, dtype=torch.float32).view(shape)
    block_scores = pattern.reduce(scores, "sum")
    assert block_scores.shape == pattern.score_shape(shape) == (8 // rows, 8 // cols)
    pruned = torch.zeros(block_scores.numel(), dtype=torch.bool)
    pruned[::3] = True
    mask = pattern.build_mask(block_scores, pruned, shape)
    blocks = mask.view(8 // rows, rows, 8 // cols, cols)
    # every block is all kept or all pruned, and exactly the chosen blocks are pruned
    per_block = blocks.sum(dim=(1, 3))
    assert set(per_block.unique().tolist()) <= {0, rows * cols}
    assert torch.equal(per_block.reshape(-1) == 0, pruned)


def test_4x1_orientation_is_four_output_rows_by_one_input_column():
    pattern = get_pattern("4x1")
    block_scores = torch.ones(2, 3)
    pruned = torch.zeros(6, dtype=torch.bool)
    pruned[1] = True  # block row 0, column 1
    mask = pattern.build_mask(block_scores, pruned, (8, 3))
    expected = torch.ones(8, 3, dtype=torch.bool)
    expected[0:4, 1] = False
    assert torch.equal(mask, expected)


def test_block_reduce_sum_and_mean():
    pattern = get_pattern("2x2")
    scores = torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 4.0, 0.0, 8.0]])
    assert torch.equal(pattern.reduce(scores, "sum"), torch.tensor([[10.0, 8.0]]))
    assert torch.equal(pattern.reduce(scores, "mean"), torch.tensor([[2.5, 2.0]]))


@pytest.mark.parametrize("name,n,m", [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8)])
def test_semi_structured_every_group(name, n, m):
    pattern = get_pattern(name)
    assert isinstance(pattern, SemiStructuredPattern) and pattern.max_sparsity == pytest.approx(1 - n / m)
    torch.manual_seed(0)
    scores = torch.rand(6, 4 * m)
    all_groups = torch.ones(6 * 4, dtype=torch.bool)
    mask = pattern.build_mask(scores, all_groups, scores.shape)
    groups = mask.view(6, 4, m)
    assert torch.all(groups.sum(-1) == n)  # exactly N kept in every group
    # the kept ones are the N highest scores of their group
    kept_scores = torch.where(groups, scores.view(6, 4, m), torch.tensor(float("inf"))).min(-1).values
    dropped_scores = torch.where(~groups, scores.view(6, 4, m), torch.tensor(-1.0)).max(-1).values
    assert torch.all(kept_scores >= dropped_scores)


def test_semi_structured_groups_run_along_input_dimension_and_cost_is_lowest_sum():
    pattern = get_pattern("2:4")
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 9.0, 9.0, 0.5, 0.25]])
    assert torch.equal(pattern.unit_costs(scores), torch.tensor([3.0, 0.75]))
    mask = pattern.build_mask(scores, torch.tensor([True, False]), (1, 8))
    assert mask.tolist() == [[True, False, True, False, True, True, True, True]]


def test_ties_break_toward_lower_index():
    pattern = get_pattern("2:4")
    mask = pattern.build_mask(torch.zeros(1, 4), torch.tensor([True]), (1, 4))
    assert mask.tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("bad", ["4x", "3:2", "0x1", "4:4", "dense", "", None, "2-4"])
def test_unknown_pattern_is_refused(bad):
    with pytest.raises(ValueError, match="pattern"):
        get_pattern(bad)


def test_shape_not_divisible_names_layer_and_shape():
    with pytest.raises(ValueError, match=r"layer 'enc\.fc' has weight shape \(6, 8\).*'4x1'"):
        get_pattern("4x1").check_shape("enc.fc", (6, 8))
    with pytest.raises(ValueError, match=r"\(8, 6\).*'2:4'"):
        get_pattern("2:4").check_shape("enc.fc", (8, 6))


@pytest.mark.parametrize("name,kind", [("head", "head"), ("channel", "channel"), ("channelx1", "channel")])
def test_structured_names(name, kind):
    pattern = get_pattern(name)
    assert isinstance(pattern, StructuredPattern) and pattern.structured and pattern.kind == kind


def test_structured_unit_scores_and_masks():
    pattern = get_pattern("head")
    scores = torch.arange(24, dtype=torch.float32).view(6, 4)  # 3 units of 2 rows (or of 2 columns of a 4x6)
    assert pattern.unit_scores(scores, "rows", 2).tolist() == [28.0, 92.0, 156.0]  # 0..7, 8..15, 16..23
    columns = scores.t().contiguous()  # [4, 6]: unit u = columns 2u, 2u+1
    assert pattern.unit_scores(columns, "columns", 2).tolist() == [28.0, 92.0, 156.0]
    keep = torch.tensor([True, False, True])
    assert pattern.unit_mask(keep, "rows", 2, (6, 4))[:, 0].tolist() == [True, True, False, False, True, True]
    mask = pattern.unit_mask(keep, "columns", 2, (4, 6))
    assert mask.is_contiguous() and mask[0].tolist() == [True, True, False, False, True, True]
    assert torch.equal(mask, mask[0].expand(4, 6))
