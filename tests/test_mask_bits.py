"""Masks held as bits: exact round trip, masking that does not grow with depth, an eighth of a byte per weight."""
import pytest
import torch

from hf_prune import Pruner, PruningConfig
from hf_prune import mask_bits
from hf_prune.mask_bits import MaskStore, pack_bits, unpack_bits
from tests.conftest import ToyMLP


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5), (16, 32), (2, 3, 11)])
def test_pack_and_unpack_are_exact(shape):
    mask = torch.rand(shape) > 0.5
    bits = pack_bits(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_bits(bits, mask.numel()).view(shape), mask)


def test_store_reads_back_what_was_written_and_masks_exactly():
    shapes = {"a": ((4, 6), "cpu"), "b": ((3, 3), "cpu"), "c": ((5,), "cpu")}
    store = MaskStore(shapes)
    assert all(bool(store[name].all()) for name in shapes)  # every mask starts as keep-everything
    masks = {name: torch.rand(shape) > 0.3 for name, (shape, _) in shapes.items()}
    for name, mask in masks.items():
        store[name] = mask
    assert all(torch.equal(store[name], masks[name]) for name in shapes)
    assert store.pruned_count("a") == int((~masks["a"]).sum()) and store.nbytes == 3 + 2 + 1
    params = {name: torch.full(shape, float("nan")) for name, (shape, _) in shapes.items()}
    store.apply(params, finite=False)  # NaN x 0 would be NaN: masked entries must still be exactly zero
    assert all(bool((params[name][~masks[name]] == 0).all()) for name in shapes)
    with pytest.raises(ValueError, match=r"mask of 'a' has shape \(2, 2\), expected \(4, 6\)"):
        store["a"] = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(KeyError, match="no place"):
        store["d"] = torch.ones(2, dtype=torch.bool)


def test_chunked_masking_equals_whole(monkeypatch):
    monkeypatch.setattr(mask_bits, "CHUNK_ELEMENTS", 100)
    shapes = {f"w{i}": ((8, 16), "cpu") for i in range(5)}
    store = MaskStore(shapes)
    assert len(next(iter(store._layouts.values())).chunks) == 5
    masks = {name: torch.rand(8, 16) > 0.5 for name in shapes}
    for name, mask in masks.items():
        store[name] = mask
    params = {name: torch.randn(8, 16) for name in shapes}
    expected = {name: params[name] * masks[name] for name in shapes}
    store.apply(params, finite=True)
    assert all(torch.equal(params[name], expected[name]) for name in shapes)


def test_state_bytes_per_weight_during_and_after_the_schedule():
    """2:4 with snip-momentum: fp32 scores (4 bytes) + bits during the schedule; bits alone after it."""
    model = ToyMLP(sizes=(64, 64, 64, 64))
    pruner = Pruner(model, PruningConfig(target_sparsity=0.5, pattern="2:4", start_step=1, end_step=2,
                                         frequency=1, exclude=[]))
    weights = sum(layer.weight.numel() for layer in model.layers)
    model(torch.randn(4, 64)).pow(2).mean().backward()
    pruner.update_scores()
    pruner.step(1)
    during = pruner.state_bytes()
    assert during["masks"] == weights // 8 and during["scores"] == 4 * weights
    pruner.update_scores()
    pruner.step(2)
    after = pruner.state_bytes()
    assert after == {"masks": weights // 8, "bias_masks": 0, "scores": 0, "input_sums": 0}
