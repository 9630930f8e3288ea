"""Structured pruning of the Llama family under grouped-query attention: a head unit is one key/value head with
the query heads that share it, a channel is a row of gate_proj and up_proj with the column of down_proj; slim
removes them, and the slim model (also reloaded) computes and generates what the masked one did."""
import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from hf_prune import Pruner, PruningConfig, from_pretrained, slim
from hf_prune.architectures import find_blocks

FAMILIES = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config),
            "mistral": (MistralForCausalLM, MistralConfig)}


def _model(family, seed=0):
    cls, config_cls = FAMILIES[family]
    torch.manual_seed(seed)
    return cls(config_cls(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=32,
                          head_dim=8)).eval()


def test_units_follow_grouped_query_attention():
    model = _model("llama")
    head = find_blocks(model, "head")[0]
    assert head.num_units == 3                                             # key/value heads
    assert head.size_of("model.layers.0.self_attn.q_proj") == 16           # 2 query heads x head_dim 8
    assert head.size_of("model.layers.0.self_attn.k_proj") == 8
    assert head.size_of("model.layers.0.self_attn.o_proj") == 16
    channel = find_blocks(model, "channel")[0]
    assert channel.rows == ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj") and channel.num_units == 64


@pytest.mark.parametrize("family", list(FAMILIES))
def test_slim_equals_masked_and_reloads(family, tmp_path):
    model = _model(family)
    config = PruningConfig(target_sparsity=0.34, pattern="head", criterion="magnitude", scope="local",
                           start_step=0, end_step=0,
                           groups=[{"name": "ffn", "include": [r"mlp\."], "pattern": "channel",
                                    "target_sparsity": 0.5}])
    pruner = Pruner(model, config)
    pruner.step(0)
    q = model.model.layers[0].self_attn.q_proj.weight
    dead_groups = (q.view(3, 16, -1) == 0).all(dim=(1, 2))
    assert int(dead_groups.sum()) == 1                                     # one whole group of 2 query heads
    k = model.model.layers[0].self_attn.k_proj.weight
    assert torch.equal((k.view(3, 8, -1) == 0).all(dim=(1, 2)), dead_groups)
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        masked = model(input_ids=ids).logits
        masked_generation = model.generate(ids[:1, :4], max_new_tokens=6, do_sample=False)
    summary = slim(model)
    assert summary.heads_after == 2 * 2 and summary.channels_after == 32 * 2
    assert model.model.layers[0].self_attn.q_proj.out_features == 32 and model.model.layers[0].mlp.down_proj.in_features == 32
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, masked, atol=1e-5, rtol=1e-5)
        assert torch.equal(model.generate(ids[:1, :4], max_new_tokens=6, do_sample=False), masked_generation)
    model.save_pretrained(tmp_path)
    reloaded = from_pretrained(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, masked, atol=1e-5, rtol=1e-5)
