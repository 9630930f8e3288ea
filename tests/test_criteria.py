import pytest
import torch

from hf_prune.criteria import CRITERIA, get_criterion


def test_registered_names():
    assert CRITERIA.names() == ["gradient", "magnitude", "snip", "snip_momentum", "wanda"]


def test_element_scores_by_hand():
    weight = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    grad = torch.tensor([[-3.0, 0.5], [2.0, 7.0]])
    assert torch.equal(get_criterion("magnitude").element_scores(weight, None), torch.tensor([[1.0, 2.0], [0.5, 0.0]]))
    assert torch.equal(get_criterion("gradient").element_scores(weight, grad), torch.tensor([[3.0, 0.5], [2.0, 7.0]]))
    expected_snip = torch.tensor([[3.0, 1.0], [1.0, 0.0]])
    assert torch.equal(get_criterion("snip").element_scores(weight, grad), expected_snip)
    assert torch.equal(get_criterion("snip_momentum").element_scores(weight, grad), expected_snip)


def test_only_snip_momentum_accumulates_and_magnitude_and_wanda_skip_gradients():
    assert [n for n in CRITERIA if get_criterion(n).uses_momentum] == ["snip_momentum"]
    assert [n for n in CRITERIA if not get_criterion(n).needs_gradient] == ["magnitude", "wanda"]


def test_unknown_criterion():
    with pytest.raises(ValueError, match="unknown pruning criterion 'taylor'"):
        get_criterion("taylor")
