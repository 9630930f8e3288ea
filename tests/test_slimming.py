"""Physical slimming: slim == masked outputs for BERT, RoBERTa, DistilBERT; save/load round trips; layouts."""
import json
import pickle

import pytest
import torch
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification, BertForQuestionAnswering,
                          DistilBertConfig,
                          DistilBertForQuestionAnswering, GPT2Config, GPT2Model, RobertaConfig,
                          RobertaForQuestionAnswering)

from hf_prune import Pruner, PruningConfig, from_pretrained, slim
from hf_prune.slimming import SLIM_LAYOUT_KEY, SLIM_MODEL_TYPE
from tests.conftest import tiny_bert_qa

FFN = r"(intermediate\.dense|layer\.\d+\.output\.dense|ffn\.lin)"


def tiny_roberta_qa():
    torch.manual_seed(0)
    return RobertaForQuestionAnswering(RobertaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64,
                                                     max_position_embeddings=70, pad_token_id=1))


def tiny_distilbert_qa():
    torch.manual_seed(0)
    return DistilBertForQuestionAnswering(DistilBertConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                           max_position_embeddings=64))


MODELS = {"bert": lambda: tiny_bert_qa(seed=5), "roberta": tiny_roberta_qa, "distilbert": tiny_distilbert_qa}


def _prune_heads_and_channels(model, heads=0.5, channels=0.6):
    with torch.no_grad():  # non-zero biases, so a wrongly kept or dropped bias shows in the outputs
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_()
    config = PruningConfig(target_sparsity=heads, pattern="head", criterion="magnitude", start_step=0, end_step=0,
                           groups=[{"include": [FFN], "pattern": "channel", "target_sparsity": channels}])
    Pruner(model, config).step(0)
    return model.eval()


def _inputs():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 96, (3, 20), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 14:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def _logits(model):
    output = model(**_inputs())
    return torch.stack([output.start_logits, output.end_logits])


@pytest.mark.parametrize("family", sorted(MODELS))
def test_slim_outputs_equal_masked_outputs_and_round_trip(family, tmp_path):
    model = _prune_heads_and_channels(MODELS[family]())
    masked = _logits(model)
    summary = slim(model)
    assert (summary.heads_before, summary.heads_after) == (8, 4)
    assert (summary.channels_before, summary.channels_after) == (128, 51)  # global: 77 of 128 channels go
    assert summary.parameters_after < summary.parameters_before
    torch.testing.assert_close(_logits(model), masked, atol=1e-5, rtol=0)

    model.save_pretrained(tmp_path)
    layout = json.loads((tmp_path / "config.json").read_text())[SLIM_LAYOUT_KEY]
    assert sum(len(entry["heads"]) for entry in layout.values()) == 4
    assert sum(entry["intermediate_size"] for entry in layout.values()) == 51
    reloaded = from_pretrained(str(tmp_path))
    assert type(reloaded) is type(model)
    torch.testing.assert_close(_logits(reloaded), masked, atol=1e-5, rtol=0)
    for (name, param), (_, again) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(param, again), name


def test_dense_checkpoint_loads_unchanged(tmp_path):
    model = tiny_bert_qa(seed=2).eval()
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(str(tmp_path))
    torch.testing.assert_close(_logits(loaded), _logits(model), atol=0, rtol=0)
    classifier = from_pretrained(str(tmp_path), auto_class=AutoModelForSequenceClassification)
    assert type(classifier).__name__ == "BertForSequenceClassification"


def test_a_layer_keeps_one_head_and_slimming_again_keeps_original_indexes(tmp_path):
    model = tiny_bert_qa(seed=6).eval()
    attention = model.bert.encoder.layer[0].attention
    with torch.no_grad():
        attention.output.dense.weight.zero_()  # layer 0: no head contributes
        model.bert.encoder.layer[1].attention.output.dense.weight[:, 8:16] = 0  # layer 1: head 1
    before = _logits(model)
    slim(model)
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == 1
    torch.testing.assert_close(_logits(model), before, atol=1e-5, rtol=0)
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.output.dense.weight[:, 8:16] = 0  # now original head 2
    slim(model)
    assert model.config.hf_prune_slim_layout["bert.encoder.layer.1"]["heads"] == [0, 3]
    model.save_pretrained(tmp_path)
    assert from_pretrained(str(tmp_path)).bert.encoder.layer[1].attention.self.query.out_features == 16


def test_stock_auto_class_refusal_of_a_slim_folder_points_to_hf_prune(tmp_path):
    model = _prune_heads_and_channels(tiny_bert_qa(seed=5))
    slim(model)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == SLIM_MODEL_TYPE.format(base="bert")
    with pytest.raises(ValueError, match=r"load with hf_prune\.from_pretrained"):  # no ignore_mismatched_sizes hint
        AutoModelForQuestionAnswering.from_pretrained(str(tmp_path))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # the class named outright: still refused
        BertForQuestionAnswering.from_pretrained(str(tmp_path))
    reloaded = from_pretrained(str(tmp_path))
    assert reloaded.config.model_type == SLIM_MODEL_TYPE.format(base="bert")
    assert pickle.loads(pickle.dumps(reloaded.config)).to_dict() == reloaded.config.to_dict()
    reloaded.save_pretrained(tmp_path / "again")   # a slim model stays marked when saved again
    assert from_pretrained(str(tmp_path / "again")).bert.encoder.layer[1].attention.self.query.out_features == \
        reloaded.bert.encoder.layer[1].attention.self.query.out_features


def test_weights_that_do_not_fit_the_layout_are_refused(tmp_path):
    model = _prune_heads_and_channels(tiny_bert_qa(seed=5))
    slim(model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[SLIM_LAYOUT_KEY]["bert.encoder.layer.9"] = {"heads": [0]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"layers \['bert.encoder.layer.9'\]"):
        from_pretrained(str(tmp_path))


def test_unknown_architecture_is_refused():
    model = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=96))
    with pytest.raises(ValueError, match="does not know architecture 'gpt2' \\(GPT2Model\\)"):
        slim(model)

