"""The fused score update: the same scores (and so the same masks) as scoring each weight on its own, for every
pattern and gradient criterion, at a number of ops that does not grow with the number of layers."""
import pytest
import torch
from torch import nn

from hf_prune import Pruner, PruningConfig
from hf_prune import score_buffers
from tests.conftest import ToyMLP, count_ops, tiny_bert_qa


def _steps(model, pruner, inputs, steps=3):
    for step in range(1, steps + 1):
        torch.manual_seed(step)
        model.zero_grad()
        if isinstance(inputs, dict):
            loss = sum(value.float().pow(2).mean() for value in model(**inputs).values()
                       if torch.is_tensor(value) and value.is_floating_point())
        else:
            loss = model(inputs).pow(2).mean()
        loss.backward()
        pruner.update_scores()
        pruner.step(step)


def _scored_one_by_one(monkeypatch):
    monkeypatch.setattr(score_buffers, "_fusable", lambda record: False)


CASES = [("toy", "4x1", "snip_momentum"), ("toy", "2x2", "snip"), ("toy", "1x4", "gradient"),
         ("toy", "2:4", "snip_momentum"), ("toy", "1x1", "snip"), ("bert", "head", "snip_momentum"),
         ("bert", "channel", "gradient"), ("gpt2", "4x1", "snip_momentum"), ("gpt2", "2:4", "gradient")]


def _model_and_inputs(kind):
    if kind == "toy":
        return ToyMLP(sizes=(32, 64, 32, 8)), torch.randn(8, 32)
    if kind == "bert":
        model = tiny_bert_qa()
    else:  # Conv1D layers: weights stored [in, out]
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=96, n_positions=32, bos_token_id=0, eos_token_id=0))
    return model, {"input_ids": torch.randint(0, 50, (2, 12)), "use_cache": False} if kind == "gpt2" else {
        "input_ids": torch.randint(0, 50, (2, 12))}


@pytest.mark.parametrize("kind,pattern,criterion", CASES)
def test_fused_scores_and_masks_equal_scoring_each_weight(kind, pattern, criterion, monkeypatch):
    selection = {"exclude": []} if kind == "toy" else {}
    config = PruningConfig(target_sparsity=0.5, pattern=pattern, criterion=criterion, start_step=2, end_step=4,
                           frequency=1, block_reduce="mean", **selection)
    torch.manual_seed(0)
    model, inputs = _model_and_inputs(kind)
    fused = Pruner(model, config)
    assert fused.score_buffers.buckets and not fused.score_buffers.separate
    _steps(model, fused, inputs)
    with monkeypatch.context() as patch:
        _scored_one_by_one(patch)
        torch.manual_seed(0)
        reference_model, reference_inputs = _model_and_inputs(kind)
        reference = Pruner(reference_model, config)
        assert not reference.score_buffers.buckets
        _steps(reference_model, reference, reference_inputs)
    assert set(fused.scores) == set(reference.scores) and fused.scores
    for name, scores in reference.scores.items():
        torch.testing.assert_close(fused.scores[name], scores, rtol=1e-6, atol=0)
    assert all(torch.equal(fused.masks[name], reference.masks[name]) for name in reference.masks)


def test_chunks_give_the_same_scores(monkeypatch):
    config = PruningConfig(target_sparsity=0.5, pattern="4x1", start_step=5, end_step=10, exclude=[])
    results = []
    for chunk in (score_buffers.CHUNK_ELEMENTS, 1000):
        monkeypatch.setattr(score_buffers, "CHUNK_ELEMENTS", chunk)
        model = ToyMLP(sizes=(32, 64, 32, 8))
        pruner = Pruner(model, config)
        results.append((pruner, len(pruner.score_buffers.buckets[0].chunks)))
        _steps(model, pruner, torch.randn(8, 32), steps=2)
    (whole, one_chunk), (split, chunks) = results
    assert one_chunk == 1 and chunks == 3  # each weight of 2048 elements is a chunk of its own
    assert all(torch.equal(whole.scores[name], split.scores[name]) for name in whole.scores)


def test_a_weight_without_gradient_keeps_its_scores():
    model = ToyMLP(sizes=(16, 16, 16, 16))
    pruner = Pruner(model, PruningConfig(pattern="1x1", momentum=0.5, start_step=5, end_step=10, exclude=[]))
    model(torch.randn(4, 16)).pow(2).mean().backward()
    pruner.update_scores()
    before = {name: scores.clone() for name, scores in pruner.scores.items()}
    model.layers[1].weight.grad = None  # as if the forward had skipped it
    pruner.update_scores()
    assert torch.equal(pruner.scores["layers.1"], before["layers.1"])
    assert torch.equal(pruner.scores["layers.0"], 0.5 * before["layers.0"] + before["layers.0"])


@pytest.mark.parametrize("pattern", ["4x1", "2:4", "1x1"])
def test_ops_a_step_adds_do_not_grow_with_depth(pattern):
    """Score update, finiteness check and masking of a 48-layer model dispatch as many ops as a 4-layer one (the
    per-layer code dispatched about 7 more ops per layer: 41 ops at 4 layers, 349 at 48)."""
    counts = {}
    for layers in (4, 48):
        model = ToyMLP(sizes=(32,) * (layers + 1))
        pruner = Pruner(model, PruningConfig(target_sparsity=0.5, pattern=pattern, start_step=1, end_step=20,
                                             frequency=1, exclude=[]))
        model(torch.randn(8, 32)).pow(2).mean().backward()
        pruner.update_scores()
        pruner.step(1)

        def optimizer_step_hooks():
            pruner.update_scores()
            pruner.mask_after_step(2)

        counts[layers] = count_ops(optimizer_step_hooks)
    assert counts[48] <= 1.2 * counts[4], counts


def test_a_custom_gradient_criterion_is_scored_by_its_own_method():
    from hf_prune.criteria import CRITERIA, Snip

    class Squared(Snip):
        def element_scores(self, weight, grad):
            return (weight.detach().float() * grad.detach().float()).pow(2)

    CRITERIA.register("squared_test_only", Squared)
    try:
        model = nn.Sequential(nn.Linear(4, 4, bias=False))
        pruner = Pruner(model, PruningConfig(pattern="1x1", criterion="squared_test_only", start_step=5,
                                             end_step=10, exclude=[]))
        model[0].weight.grad = torch.full((4, 4), 2.0)
        pruner.update_scores()
        assert pruner.score_buffers.separate and not pruner.score_buffers.buckets
        assert torch.equal(pruner.scores["0"], (model[0].weight.detach() * 2.0).pow(2))
    finally:
        CRITERIA._entries.pop("squared_test_only", None)


def test_bfloat16_scores_halve_the_bytes_and_stay_close():
    config = PruningConfig(target_sparsity=0.5, pattern="2:4", start_step=5, end_step=10, exclude=[])
    pruners = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = ToyMLP(sizes=(32, 64, 32, 8))
        pruners[dtype] = Pruner(model, PruningConfig(**{**config.to_dict(), "score_dtype": dtype}))
        _steps(model, pruners[dtype], torch.randn(8, 32), steps=3)
    full, half = pruners["float32"], pruners["bfloat16"]
    assert half.state_bytes()["scores"] * 2 == full.state_bytes()["scores"]
    for name, scores in full.scores.items():
        assert half.scores[name].dtype == torch.bfloat16
        torch.testing.assert_close(half.scores[name].float(), scores, rtol=2 ** -7, atol=0)
    with pytest.raises(ValueError, match=r"score_dtype must be one of \('float32', 'bfloat16'\), got 'float16'"):
        PruningConfig(score_dtype="float16")
