"""Heads and FFN channels: scores and masks by hand, global/local ranking, one unit kept per layer, refusals."""
import pytest
import torch

from hf_prune import Pruner, PruningConfig, slim
from tests.conftest import ToyMLP, tiny_bert_qa

FFN = [r"intermediate\.dense", r"layer\.\d+\.output\.dense"]


def _one_layer_bert():
    # hidden 8, 2 heads of 4, FFN 8
    return tiny_bert_qa(hidden_size=8, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8)


def _attention(model, layer=0):
    attention = model.bert.encoder.layer[layer].attention
    return attention.self.query, attention.self.key, attention.self.value, attention.output.dense


def test_head_scores_and_masks_by_hand():
    model = _one_layer_bert()
    config = PruningConfig(target_sparsity=0.5, pattern="head", block_reduce="sum", momentum=0.5, start_step=1,
                           end_step=1, include=["attention"])
    pruner = Pruner(model, config)
    query, key, value, output = _attention(model)
    prefix = "bert.encoder.layer.0.attention."
    assert sorted(pruner.masks) == sorted(prefix + n for n in ("self.query", "self.key", "self.value", "output.dense"))
    assert sorted(pruner.bias_masks) == sorted(prefix + n for n in ("self.query", "self.key", "self.value"))
    with torch.no_grad():
        for module in (query, key, value, output):
            module.weight.fill_(1.0)
            module.bias.fill_(1.0)
    for _ in range(2):
        for module in (query, key, value):  # rows of head 0 get |grad| 1, head 1 gets 2: 32 and 64 per module
            module.weight.grad = torch.cat([torch.ones(4, 8), torch.full((4, 8), -2.0)])
        # columns of head 0 get 3 (96 in all), head 1 gets 0.5 (16)
        output.weight.grad = torch.cat([torch.full((8, 4), 3.0), torch.full((8, 4), 0.5)], dim=1)
        pruner.update_scores()
    # momentum 0.5 over two equal steps: 1.5x one step
    assert torch.equal(pruner.scores[prefix + "self.query"], torch.tensor([48.0, 96.0]))
    assert torch.equal(pruner.scores[prefix + "output.dense"], torch.tensor([144.0, 24.0]))
    # head 0 costs 3*48 + 144 = 288, head 1 costs 3*96 + 24 = 312: head 0 goes
    assert pruner.step(1)
    for module in (query, key, value):
        assert torch.all(module.weight[:4] == 0) and torch.all(module.weight[4:] == 1)
        assert torch.all(module.bias[:4] == 0) and torch.all(module.bias[4:] != 0)
    assert torch.all(output.weight[:, :4] == 0) and torch.all(output.weight[:, 4:] == 1)
    assert torch.all(output.bias != 0)  # the output projection's bias belongs to no head
    assert pruner.sparsity() == 0.5


def test_channel_scores_and_masks_by_hand():
    model = _one_layer_bert()
    up, down = model.bert.encoder.layer[0].intermediate.dense, model.bert.encoder.layer[0].output.dense
    with torch.no_grad():
        magnitudes = torch.tensor([1.0, 2.0, 0.2, 3.0, 4.0, 0.1, 5.0, 6.0])
        up.weight.copy_(magnitudes.view(8, 1).expand(8, 8))
        down.weight.copy_(magnitudes.view(1, 8).expand(8, 8))
        up.bias.fill_(1.0)
        down.bias.fill_(1.0)
    config = PruningConfig(target_sparsity=0.25, pattern="channelx1", criterion="magnitude", scope="local",
                           start_step=0, end_step=0, include=FFN)
    pruner = Pruner(model, config)
    pruner.step(0)
    pruned = [2, 5]  # the two smallest of 8 channels
    kept = [i for i in range(8) if i not in pruned]
    assert torch.all(up.weight[pruned] == 0) and torch.all(up.bias[pruned] == 0)
    assert torch.all(down.weight[:, pruned] == 0)
    assert torch.all(up.weight[kept] != 0) and torch.all(down.weight[:, kept] != 0) and torch.all(down.bias != 0)
    assert pruner.bias_masks["bert.encoder.layer.0.intermediate.dense"].tolist() == [i not in pruned for i in range(8)]


def _two_layers_layer0_weak():
    model = tiny_bert_qa(num_hidden_layers=2, num_attention_heads=4)  # hidden 32: 4 heads of 8 per layer
    with torch.no_grad():
        for layer, scale in ((0, 0.01), (1, 1.0)):
            for module in _attention(model, layer):
                module.weight.mul_(scale)
    return model


@pytest.mark.parametrize("scope,expected", [("global", [3, 1]), ("local", [2, 2])])
def test_global_and_local_head_ranking_keep_one_head_per_layer(scope, expected):
    model = _two_layers_layer0_weak()
    config = PruningConfig(target_sparsity=0.5, pattern="head", criterion="magnitude", scope=scope, start_step=0,
                           end_step=0, max_sparsity_per_layer=1.0, include=["attention"])
    pruner = Pruner(model, config)
    pruner.step(0)
    pruned = [int((~pruner.masks[f"bert.encoder.layer.{i}.attention.output.dense"][0]).sum()) // 8 for i in range(2)]
    # global: the four weakest heads are all in layer 0, but a layer keeps at least one head
    assert pruned == expected
    assert pruner.sparsity() == pytest.approx(0.5)


def test_max_sparsity_per_layer_bounds_heads():
    model = _two_layers_layer0_weak()
    config = PruningConfig(target_sparsity=0.5, pattern="head", criterion="magnitude", start_step=0, end_step=0,
                           max_sparsity_per_layer=0.5, include=["attention"])
    pruner = Pruner(model, config)
    pruner.step(0)
    assert [int((~pruner.masks[f"bert.encoder.layer.{i}.attention.self.query"][:, 0]).sum()) // 8
            for i in range(2)] == [2, 2]


def test_heads_channels_and_blocks_mix_through_groups():
    model = tiny_bert_qa()
    config = PruningConfig(target_sparsity=0.5, pattern="head", start_step=1, end_step=1, criterion="magnitude",
                           groups=[{"name": "ffn", "include": FFN, "pattern": "channel", "target_sparsity": 0.25},
                                   {"name": "layer1_query", "include": [r"layer\.1\.attention\.self\.query"],
                                    "pattern": "4x1"}])
    with pytest.raises(ValueError, match=r"prunes whole units of 'bert.encoder.layer.1.attention'.*query"):
        Pruner(model, config)  # layer 1's query belongs to the 4x1 group: its heads cannot be whole
    config = PruningConfig(target_sparsity=0.5, pattern="4x1", start_step=1, end_step=1, criterion="magnitude",
                           groups=[{"name": "ffn", "include": FFN, "pattern": "channel", "target_sparsity": 0.25},
                                   {"name": "heads", "include": ["attention"], "pattern": "head"}])
    pruner = Pruner(model, config)
    pruner.step(1)
    assert [g.config.name for g in pruner.groups] == ["ffn", "heads"]  # nothing is left for the 4x1 default
    assert pruner.group_sparsity() == {"ffn": pytest.approx(0.25), "heads": pytest.approx(0.5)}
    assert pruner.patterns()["bert.encoder.layer.0.output.dense"] == "channel"


def test_structured_refusals():
    with pytest.raises(ValueError, match=r"does not know architecture None \(ToyMLP\)"):
        Pruner(ToyMLP(), PruningConfig(pattern="head", end_step=1))
    with pytest.raises(ValueError, match=r"prunes whole units.*'bert.encoder.layer.0.attention.self.key'"):
        Pruner(tiny_bert_qa(), PruningConfig(pattern="head", end_step=1, include=["query"]))
    with pytest.raises(ValueError, match="found no FFN"):
        Pruner(tiny_bert_qa(), PruningConfig(pattern="channel", end_step=1, include=["attention"]))


@pytest.mark.parametrize("scope", ["local", "global"])
def test_keep_multiple_of_rounds_the_channels_each_layer_keeps_and_slim_gets_those_widths(scope):
    model = tiny_bert_qa(intermediate_size=96, num_hidden_layers=3)
    # 0.6 of 96 channels would keep 38.4: rounded to the nearest multiple of 16, every layer keeps 32 or 48
    config = PruningConfig(target_sparsity=0.6, pattern="channel", criterion="magnitude", scope=scope, start_step=0,
                           end_step=0, include=FFN, keep_multiple_of=16)
    pruner = Pruner(model, config)
    pruner.step(0)
    kept = [int(pruner.masks[f"bert.encoder.layer.{i}.intermediate.dense"][:, 0].sum()) for i in range(3)]
    assert all(count % 16 == 0 and 16 <= count <= 96 for count in kept), kept
    if scope == "local":
        assert kept == [32, 32, 32]   # nearest multiple of 16 to 38.4
    assert pruner.sparsity() == pytest.approx(1 - sum(kept) / 288)  # the report states the rounded sparsity
    slim(model)
    assert [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer] == kept


def test_keep_multiple_of_is_refused_where_no_units_are_removed():
    with pytest.raises(ValueError, match=r"keep_multiple_of=8 rounds the heads or channels.*pattern '4x1'"):
        PruningConfig(pattern="4x1", keep_multiple_of=8)
    with pytest.raises(ValueError, match="keep_multiple_of must be a positive integer, got 0"):
        PruningConfig(pattern="channel", keep_multiple_of=0)
    config = PruningConfig(pattern="head", groups=[{"include": FFN, "pattern": "channel", "keep_multiple_of": 64}])
    assert [group.keep_multiple_of for group in config.resolved_groups()] == [64, 1]


def test_keep_multiple_of_that_leaves_layers_unpruned_or_misses_the_target_is_refused_before_training():
    model = tiny_bert_qa(intermediate_size=96, num_hidden_layers=2)  # 4 heads per layer
    with pytest.raises(ValueError, match=r"keep_multiple_of=4 but .* has 4 head units .*can never be pruned"):
        Pruner(model, PruningConfig(pattern="head", criterion="magnitude", start_step=0, end_step=0,
                                    keep_multiple_of=4, include=["attention"]))
    # 96 channels kept in multiples of 64: at most 32 of 96 pruned per layer (0.3333), below the 0.5 asked
    with pytest.raises(ValueError, match=r"target_sparsity 0.5 cannot be reached with keep_multiple_of=64 .*0\.3333"):
        Pruner(model, PruningConfig(target_sparsity=0.5, pattern="channel", criterion="magnitude", start_step=0,
                                    end_step=0, include=FFN, keep_multiple_of=64))
    pruner = Pruner(model, PruningConfig(target_sparsity=0.3, pattern="channel", criterion="magnitude",
                                         start_step=0, end_step=0, include=FFN, keep_multiple_of=64))
    pruner.step(0)
    assert pruner.sparsity() == pytest.approx(1 / 3)
