"""Width and depth compression to a stock checkpoint: exact removals, the hidden-channel rule, importance by hand,
size targets, and a stock load in a process that never imports hf_prune."""
import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from hf_prune.activation_importance import measure_importance
from hf_prune.llm_compression import compress, shrink_to_shape
from hf_prune.model_shape import ModelShape, candidate_shapes, count_parameters, ffn_only_shape

SIZES = dict(vocab_size=96, hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=6,
             num_key_value_heads=3, max_position_embeddings=64)   # head_dim 8, 2 query heads per KV group


def _llama(seed=0, **overrides):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**SIZES, "tie_word_embeddings": True, **overrides})).eval()


def _qwen2(seed=0):
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**SIZES, tie_word_embeddings=False)).eval()   # q/k/v biases, own lm_head


def _batches(count=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 96, (2, 12), generator=generator),
             "attention_mask": torch.ones(2, 12, dtype=torch.long)} for _ in range(count)]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.arange(24).view(2, 12) % 96


@pytest.mark.parametrize("build", [_llama, _qwen2])
def test_a_layer_whose_outputs_are_zero_is_removed_without_changing_the_logits(build):
    model = build()
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    importance = measure_importance(model, _batches(2))
    assert int(importance.layers.argmin()) == 2          # it does not turn the residual stream at all: cosine 1
    shape = ModelShape.of(model.config)
    small = shrink_to_shape(model, importance, ModelShape(3, *[getattr(shape, f) for f in (
        "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "head_dim")]))
    assert type(small) is type(model) and small.config.num_hidden_layers == 3
    torch.testing.assert_close(_logits(small, IDS), _logits(model, IDS), atol=1e-6, rtol=0)


def test_the_layer_map_pairs_each_kept_layer_with_the_layer_it_came_from():
    model = _llama()
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    shape = ModelShape.of(model.config)
    result = compress(model, _batches(2), shape=ModelShape(3, *[getattr(shape, f) for f in (
        "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "head_dim")]))
    assert result.layer_map() == [[1, 1], [2, 2], [3, 4]]   # layer 2 removed: the uniform map pairs [2, 3]
    with torch.no_grad():
        student = result.model(input_ids=IDS, output_hidden_states=True).hidden_states
        teacher = model(input_ids=IDS, output_hidden_states=True).hidden_states
    for student_index, teacher_index in result.layer_map():
        torch.testing.assert_close(student[student_index], teacher[teacher_index], atol=1e-5, rtol=0)


@pytest.mark.parametrize("build", [_llama, _qwen2])
def test_zero_heads_channels_and_hidden_channels_are_removed_exactly_by_the_documented_rule(build):
    """KV group 1, FFN channels 0..31 and hidden channels 8..19 carry nothing: removing them, with every RMSNorm
    weight times sqrt(d/d') and rms_norm_eps times d/d', leaves the logits unchanged."""
    model = build()
    dead_hidden = torch.arange(8, 20)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, dead_hidden] = 0
        for layer in model.model.layers:
            attention = layer.self_attn
            attention.o_proj.weight[dead_hidden] = 0
            attention.v_proj.weight[8:16] = 0                      # KV group 1 (head_dim 8): no values, and
            attention.o_proj.weight[:, 2 * 8: 4 * 8] = 0           # its query heads 2, 3 write nothing
            if attention.v_proj.bias is not None:
                attention.v_proj.bias[8:16] = 0
            layer.mlp.up_proj.weight[:32] = 0                      # FFN channels 0..31: no activation, no output
            layer.mlp.down_proj.weight[dead_hidden] = 0
            layer.mlp.down_proj.weight[:, :32] = 0
        if model.lm_head.weight is not model.model.embed_tokens.weight:
            model.lm_head.weight[:, dead_hidden] = 0
    importance = measure_importance(model, _batches(2))
    assert set(importance.hidden.topk(36).indices.tolist()).isdisjoint(dead_hidden.tolist())
    assert importance.kv_groups[:, 1].max() == 0 and importance.ffn_channels[:, :32].max() == 0
    shape = ModelShape(4, 36, 4, 2, 64, 8)
    small = shrink_to_shape(model, importance, shape)
    assert small.config.rms_norm_eps == pytest.approx(model.config.rms_norm_eps * 48 / 36)
    torch.testing.assert_close(_logits(small, IDS), _logits(model, IDS), atol=2e-5, rtol=1e-4)


def test_importance_matches_a_hand_computation():
    model = _llama()
    batches = _batches(2)
    batches[1]["attention_mask"][1, 8:] = 0   # padding is left out
    captured = {}
    layer = model.model.layers[1]
    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: captured.setdefault("o", []).append(a[0])),
             layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.setdefault("d", []).append(a[0])),
             model.lm_head.register_forward_pre_hook(lambda m, a: captured.setdefault("h", []).append(a[0]))]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for hook in hooks:
        hook.remove()
    keep = torch.cat([batch["attention_mask"].reshape(-1).bool() for batch in batches])
    attention = torch.cat([a.reshape(-1, a.shape[-1]) for a in captured["o"]])[keep]
    heads = attention.view(len(attention), 6, -1).norm(dim=-1)               # per token, per query head
    by_hand = heads.pow(2).mean(0).sqrt().view(3, 2).sum(-1)                   # RMS over tokens, 2 heads per group
    ffn = torch.cat([a.reshape(-1, a.shape[-1]) for a in captured["d"]])[keep].pow(2).mean(0).sqrt()
    final = torch.cat([a.reshape(-1, a.shape[-1]) for a in captured["h"]])[keep].abs().mean(0)
    importance = measure_importance(model, batches)
    torch.testing.assert_close(importance.kv_groups[1], by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(importance.ffn_channels[1], ffn, atol=1e-5, rtol=1e-5)
    mean_importance = measure_importance(model, batches, aggregation="mean")
    assert torch.all(mean_importance.hidden >= final - 1e-6)   # the final norm's share is one of the summed terms
    losses = measure_importance(model, batches, layer_method="loss").layers
    assert losses.shape == (4,) and torch.isfinite(losses).all()
    # unit_score="output": what each unit writes to the residual stream, by hand
    output_weight = layer.self_attn.o_proj.weight.detach()
    written = torch.stack([(attention.view(len(attention), 6, -1)[:, h] @ output_weight[:, h * 8:(h + 1) * 8].T)
                           .norm(dim=-1) for h in range(6)], dim=1)              # [tokens, heads]
    by_hand = written.pow(2).mean(0).sqrt().view(3, 2).sum(-1)
    channels = torch.cat([a.reshape(-1, a.shape[-1]) for a in captured["d"]])[keep]
    channel_writes = (channels.pow(2).mean(0).sqrt() * layer.mlp.down_proj.weight.detach().norm(dim=0))
    output = measure_importance(model, batches, unit_score="output")
    torch.testing.assert_close(output.kv_groups[1], by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.ffn_channels[1], channel_writes, atol=1e-5, rtol=1e-5)
    assert output.unit_score == "output" and not torch.allclose(output.ffn_channels[1], importance.ffn_channels[1])
    with pytest.raises(ValueError, match="unit_score must be one of \\('activation', 'output', 'fisher'\\), got 'weights'"):
        measure_importance(model, batches, unit_score="weights")


@pytest.mark.parametrize("fraction", [0.55, 0.7, 0.85])
def test_target_params_lands_within_one_percent_below(fraction):
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True, head_dim=32)
    target = fraction * count_parameters(config)
    shapes = candidate_shapes(config, target, hidden_multiple=32, ffn_multiple=8)
    sizes = [count_parameters(config, shape) for shape in shapes]
    assert all(size <= target for size in sizes)
    assert max(sizes) >= 0.99 * target
    assert any(s.num_hidden_layers == 8 for s in shapes) and any(s.hidden_size == 256 for s in shapes)
    assert ffn_only_shape(config, target, ffn_multiple=8) in shapes     # every head and hidden channel kept


@pytest.mark.parametrize("depth", [None, 6])
def test_ffn_only_shape_keeps_hidden_and_heads_and_takes_the_widest_ffn_that_fits(depth):
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True, head_dim=32)
    target = 0.7 * count_parameters(config)
    shape = ffn_only_shape(config, target, depth=depth, ffn_multiple=32)
    original = ModelShape.of(config)
    assert (shape.num_hidden_layers, shape.hidden_size, shape.num_key_value_heads) == (
        depth or 8, 256, original.num_key_value_heads)
    assert shape.intermediate_size % 32 == 0 and count_parameters(config, shape) <= target
    wider = ModelShape(**{**shape.__dict__, "intermediate_size": shape.intermediate_size + 32})
    assert count_parameters(config, wider) > target
    assert ffn_only_shape(config, 0.2 * count_parameters(config)) is None   # the embedding alone is more
    with pytest.raises(ValueError, match=r"depth=9: must be an integer in \[1, 8\]"):
        ffn_only_shape(config, target, depth=9)
    with pytest.raises(ValueError, match=r"target_params must be a positive number of parameters, got nan"):
        ffn_only_shape(config, float("nan"))


def test_the_search_reports_every_shape_tried_and_returns_the_best():
    model = _llama()
    target = 0.6 * count_parameters(model.config)
    result = compress(model, _batches(6), target_params=target, max_batches=4, score_batches=2)
    assert result.parameters <= target and len(result.candidates) >= 2
    assert result.candidates[0][0] == result.shape and result.candidates[0][2] == min(c[2] for c in result.candidates)
    assert result.parameters_before == count_parameters(model.config)


def test_what_is_not_supported_is_refused_by_name():
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32))
    with pytest.raises(ValueError, match=r"supports the Llama family .* got model_type 'bert'"):
        measure_importance(bert, _batches(1))
    model = _llama()
    with pytest.raises(ValueError, match="give exactly one of target_params"):
        compress(model, _batches(2))
    with pytest.raises(ValueError, match=r"target_params must be a number below the model's"):
        compress(model, _batches(2), target_params=1e12)
    original = ModelShape.of(model.config)
    with pytest.raises(ValueError, match=r"num_attention_heads=5: a KV group keeps its 2 query heads"):
        shrink_to_shape(model, measure_importance(model, _batches(1)),
                        ModelShape(4, 48, 5, 2, 96, original.head_dim))
    with pytest.raises(ValueError, match=r"hidden_size=80: must be an integer in \[1, 48\]"):
        shrink_to_shape(model, measure_importance(model, _batches(1)), ModelShape(4, 80, 6, 3, 96, original.head_dim))
    with pytest.raises(ValueError, match=r"is not a valid LlamaConfig: .*hidden size \(40\) is not a multiple"):
        shrink_to_shape(model, measure_importance(model, _batches(1)), ModelShape(4, 40, 6, 3, 96, original.head_dim))


LOAD_WITHOUT_HF_PRUNE = r'''
import json, sys
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.arange(24).view(2, 12) % 96
with torch.no_grad():
    logits = model(input_ids=ids).logits
generated = model.generate(ids[:1], max_new_tokens=5, do_sample=False, pad_token_id=0)
assert "hf_prune" not in sys.modules
print(json.dumps({"class": type(model).__name__, "config": type(model.config).__name__, "logits": logits.tolist(),
                  "generated": generated.tolist()}))
'''


@pytest.mark.parametrize("build", [_llama, _qwen2])
def test_the_compressed_model_is_a_stock_checkpoint_loaded_without_hf_prune(tmp_path, build):
    model = build()
    result = compress(model, _batches(6), target_params=0.6 * count_parameters(model.config), max_batches=4,
                      score_batches=2)
    small = result.model
    assert type(small) is type(model) and type(small.config) is type(model.config)
    small.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["head_dim"] == result.shape.head_dim == 8
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers"):
        assert config[key] == getattr(result.shape, key)
    run = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_HF_PRUNE, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded["class"] == type(model).__name__
    torch.testing.assert_close(torch.tensor(loaded["logits"]), _logits(small, IDS), atol=1e-5, rtol=1e-5)
    expected = small.generate(IDS[:1], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert loaded["generated"] == expected.tolist()
    assert not math.isnan(result.candidates[0][2])


def test_uniform_head_and_channel_pruning_slims_to_a_stock_config(tmp_path):
    """The mask path: heads (KV groups) and FFN channels pruned with scope 'local' keep the same widths in every
    layer, so slim() gives a stock LlamaConfig that a process without hf_prune loads."""
    from hf_prune import Pruner, PruningConfig, slim
    from hf_prune.slimming import SLIM_LAYOUT_KEY

    model = _llama()
    config = PruningConfig(target_sparsity=1 / 3, pattern="head", criterion="magnitude", scope="local", start_step=0,
                           end_step=0, include=["self_attn"],
                           groups=[{"include": ["mlp"], "pattern": "channel", "target_sparsity": 0.5}])
    Pruner(model, config).step(0)
    masked = _logits(model, IDS)
    slim(model)
    assert type(model.config) is LlamaConfig and not hasattr(model.config, SLIM_LAYOUT_KEY)
    assert (model.config.num_key_value_heads, model.config.num_attention_heads, model.config.intermediate_size,
            model.config.head_dim) == (2, 4, 48, 8)
    torch.testing.assert_close(_logits(model, IDS), masked, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    run = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_HF_PRUNE, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(json.loads(run.stdout.strip().splitlines()[-1])["logits"]), masked,
                               atol=1e-5, rtol=1e-5)
