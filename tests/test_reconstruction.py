"""The least-squares refit of output projections: the solve against a hand computation, exactness when removed
channels are combinations of kept ones, the Grams against the hooked inputs, and compress(refit=True) on a tiny
Llama reproducing the original layer's FFN output better than copying the kept columns."""
import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_prune.activation_importance import measure_importance
from hf_prune.llm_compression import compress, shrink_to_shape
from hf_prune.model_shape import ModelShape
from hf_prune.reconstruction import input_grams, refit_columns

SIZES = dict(vocab_size=96, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
             num_key_value_heads=3, max_position_embeddings=64, tie_word_embeddings=True)


def _llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**SIZES)).eval()


def _batches(count=4, seed=1, padded=False):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        mask = torch.ones(2, 12, dtype=torch.long)
        if padded:
            mask[1, 8:] = 0
        batches.append({"input_ids": torch.randint(0, 96, (2, 12), generator=generator), "attention_mask": mask})
    return batches


def test_refit_is_the_least_squares_solution_of_the_kept_columns():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    kept = torch.tensor([0, 2, 5])
    by_hand = torch.linalg.lstsq(inputs[:, kept], inputs @ weight.T).solution.T   # min ||X_S V^T - X W^T||
    refit = refit_columns(weight, inputs.T @ inputs, kept, damping=0.0)
    torch.testing.assert_close(refit, by_hand, atol=1e-10, rtol=0)


def test_refit_is_exact_when_removed_channels_are_combinations_of_kept_ones():
    generator = torch.Generator().manual_seed(1)
    kept_inputs = torch.randn(300, 4, generator=generator, dtype=torch.float64)
    mixing = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    inputs = torch.cat([kept_inputs, kept_inputs @ mixing], dim=1)            # channels 4 and 5 depend on 0-3
    weight = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    kept = torch.arange(4)
    refit = refit_columns(weight, inputs.T @ inputs, kept, damping=1e-12)
    torch.testing.assert_close(kept_inputs @ refit.T, inputs @ weight.T, atol=1e-8, rtol=0)
    copied_error = (kept_inputs @ weight[:, kept].T - inputs @ weight.T).abs().max()
    assert copied_error > 0.1                                                 # plain removal is not


def test_refit_keeps_the_weights_dtype_and_refuses_bad_arguments():
    weight = torch.randn(3, 5, dtype=torch.bfloat16)
    gram = torch.eye(5)
    assert refit_columns(weight, gram, torch.tensor([0, 1])).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="damping must be a number >= 0, got -1"):
        refit_columns(weight, gram, torch.tensor([0]), damping=-1)
    with pytest.raises(ValueError, match=r"gram has shape \(4, 4\); the weight's 5 input columns need \(5, 5\)"):
        refit_columns(weight, torch.eye(4), torch.tensor([0]))


@pytest.mark.parametrize("weighting", ["none", "residual"])
def test_grams_are_the_projection_inputs_products_without_padding(weighting):
    model = _llama()
    batches = _batches(2, padded=True)
    layer = model.model.layers[1]
    seen = {"o_proj": [], "down_proj": [], "o_proj residual": [], "down_proj residual": []}
    modules = {"o_proj": layer.self_attn.o_proj, "down_proj": layer.mlp.down_proj,
               "o_proj residual": layer.input_layernorm, "down_proj residual": layer.post_attention_layernorm}
    handles = [module.register_forward_pre_hook(lambda m, a, key=key: seen[key].append(a[0]))
               for key, module in modules.items()]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for handle in handles:
        handle.remove()

    def tokens(key):
        return torch.cat([x.reshape(-1, x.shape[-1])[b["attention_mask"].reshape(-1).bool()]
                          for x, b in zip(seen[key], batches)])

    grams = input_grams(model, batches, weighting=weighting)
    assert len(grams) == 3
    for name in ("o_proj", "down_proj"):
        inputs = tokens(name)
        assert inputs.shape[0] == 2 * (12 + 8)
        weights = (1 / tokens(name + " residual").pow(2).mean(dim=-1) if weighting == "residual"
                   else torch.ones(inputs.shape[0]))   # 1 / mean(h^2) of the residual the output is added to
        by_hand = (inputs * weights[:, None]).T @ inputs
        torch.testing.assert_close(grams[1][name], by_hand, atol=1e-4, rtol=1e-4)


def test_input_grams_refuses_an_unknown_weighting():
    with pytest.raises(ValueError, match="weighting must be one of \\('residual', 'none'\\), got 'rms'"):
        input_grams(_llama(), _batches(1), weighting="rms")


def test_refit_ffn_reproduces_the_first_layers_output_better_than_copying():
    model = _llama()
    batches = _batches(4)
    shape = dataclasses.replace(ModelShape.of(model.config), intermediate_size=48)   # every head, hidden, layer kept
    copied = compress(model, batches, shape=shape, max_batches=4).model
    refit = compress(model, batches, shape=shape, max_batches=4, refit=True, damping=0.0).model
    captured = []
    handle = model.model.layers[0].mlp.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        for batch in batches:
            model(**batch)
        handle.remove()
        inputs = torch.cat([x.reshape(-1, 48) for x in captured])   # the same in all three models at layer 0
        target = model.model.layers[0].mlp(inputs)
        errors = {name: float((small.model.layers[0].mlp(inputs) - target).pow(2).sum())
                  for name, small in (("copied", copied), ("refit", refit))}
    assert errors["refit"] < 0.5 * errors["copied"]
    # every head kept: o_proj is copied unchanged, not refit (a damped fit of all columns would move it)
    torch.testing.assert_close(refit.model.layers[0].self_attn.o_proj.weight,
                               model.model.layers[0].self_attn.o_proj.weight, atol=0, rtol=0)


def test_refit_o_proj_when_heads_are_removed_and_shapes_stay_stock():
    model = _llama()
    batches = _batches(4)
    importance = measure_importance(model, batches)
    shape = dataclasses.replace(ModelShape.of(model.config), num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=64, hidden_size=40)
    grams = input_grams(model, batches)
    small = shrink_to_shape(model, importance, shape, grams, damping=0.01)
    plain = shrink_to_shape(model, importance, shape)
    assert type(small.config) is type(model.config) and small.config.hidden_size == 40
    assert small.model.layers[0].self_attn.o_proj.weight.shape == (40, 32)
    assert not torch.equal(small.model.layers[0].self_attn.o_proj.weight, plain.model.layers[0].self_attn.o_proj.weight)
    for name in ("q_proj", "k_proj", "gate_proj"):   # the input sides are copied alike
        module = "self_attn" if name != "gate_proj" else "mlp"
        torch.testing.assert_close(getattr(getattr(small.model.layers[1], module), name).weight,
                                   getattr(getattr(plain.model.layers[1], module), name).weight, atol=0, rtol=0)


@pytest.mark.parametrize("arguments, message", [
    (dict(refit="yes"), "refit must be True or False, got 'yes'"),
    (dict(refit=True, damping=-0.5), "damping must be a number >= 0, got -0.5"),
])
def test_compress_refuses_bad_refit_arguments_before_measuring(arguments, message, monkeypatch):
    import hf_prune.llm_compression as llm_compression

    monkeypatch.setattr(llm_compression, "measure_importance", lambda *a, **k: pytest.fail("measured first"))
    model = _llama()
    with pytest.raises(ValueError, match=message):
        compress(model, _batches(2), shape=ModelShape.of(model.config), **arguments)
