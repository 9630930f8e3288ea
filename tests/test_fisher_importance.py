"""The Fisher unit score: each unit's mask derivative per sequence is the loss's change when the unit is scaled,
checked against finite differences of the weights that scale it; labels decide which tokens' loss counts."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_prune.activation_importance import measure_importance

SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)   # head_dim 8, 2 query heads per KV group


def _model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SIZES, tie_word_embeddings=True)).eval()


def _sequences(with_labels: bool):
    generator = torch.Generator().manual_seed(3)
    sequences = []
    for _ in range(3):   # one sequence per batch: the score's per-sequence derivative is one finite difference
        ids = torch.randint(0, 64, (1, 10), generator=generator)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if with_labels:   # only the last three tokens are the "answer"
            batch["labels"] = torch.full_like(ids, -100)
            batch["labels"][:, -3:] = ids[:, -3:]
        sequences.append(batch)
    return sequences


def _derivative(model, batch, weights) -> float:
    """d(summed loss)/d(scale) at scale 1 when the ``weights`` (tensor, index) entries are multiplied by one scale:
    the sum of weight x its gradient over those entries (by the chain rule, through the weights' own gradients)."""
    labels = batch.get("labels", batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="sum")
    tensors = list({id(weight): weight for weight, _ in weights}.values())
    gradients = dict(zip(map(id, tensors), torch.autograd.grad(loss, tensors)))
    return float(sum((weight.detach() * gradients[id(weight)])[index].sum() for weight, index in weights))


@pytest.mark.parametrize("with_labels", [False, True])
def test_fisher_scores_are_the_root_mean_square_of_each_sequences_loss_derivative(with_labels):
    model = _model()
    batches = _sequences(with_labels)
    importance = measure_importance(model, batches, unit_score="fisher")
    layer = model.model.layers[1]
    norms = [norm.weight for block in model.model.layers
             for norm in (block.input_layernorm, block.post_attention_layernorm)] + [model.model.norm.weight]
    units = {   # unit -> the weights that scale exactly what its mask scales
        ("ffn", 5): [(layer.mlp.down_proj.weight, (slice(None), 5))],
        ("kv", 1): [(layer.self_attn.o_proj.weight, (slice(None), slice(16, 32)))],   # group 1: query heads 2, 3
        ("hidden", 7): [(weight, 7) for weight in norms],
    }
    for (kind, unit), weights in units.items():
        by_hand = torch.tensor([_derivative(model, batch, weights) for batch in batches]).pow(2).mean().sqrt()
        score = {"ffn": importance.ffn_channels[1], "kv": importance.kv_groups[1], "hidden": importance.hidden}[kind]
        assert float(score[unit]) == pytest.approx(float(by_hand), rel=1e-4, abs=1e-8), (kind, unit)
    assert importance.unit_score == "fisher"
    assert importance.tokens == (9 * 3 if with_labels is False else 3 * 3)


def test_fisher_mean_aggregation_padding_and_the_weights_trainable_state():
    model = _model()
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)   # a frozen part stays frozen, the rest trainable
    batch = _sequences(False)[0]
    padded = {"input_ids": torch.cat([batch["input_ids"], torch.zeros(1, 4, dtype=torch.long)], dim=1),
              "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(1, 4, dtype=torch.long)], dim=1)}
    plain = measure_importance(model, [batch], unit_score="fisher", aggregation="mean")
    with_padding = measure_importance(model, [padded], unit_score="fisher", aggregation="mean")
    torch.testing.assert_close(with_padding.ffn_channels, plain.ffn_channels)   # padding adds no loss
    by_hand = abs(_derivative(model, batch, [(model.model.layers[0].mlp.down_proj.weight, (slice(None), 2))]))
    assert float(plain.ffn_channels[0, 2]) == pytest.approx(by_hand, rel=1e-4)
    assert [p.requires_grad for p in model.parameters()].count(False) == 1
    assert all(p.grad is None for p in model.parameters())   # the passes computed no weight gradients


def test_fisher_needs_labelled_tokens():
    batch = _sequences(True)[0]
    batch["labels"][:] = -100
    with pytest.raises(ValueError, match="needs labelled tokens"):
        measure_importance(_model(), [batch], unit_score="fisher")
