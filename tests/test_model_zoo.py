"""The drop-in promise across the model zoo (issue 13): a few Trainer steps with the callback on tiny random-init
models of each family; the *saved and reloaded* model has the reported sparsity, the pattern holds on its
weights, its task head is untouched, and it computes what the trained model computed."""
import json

import pytest
import torch
import transformers
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer

from hf_prune import PruningConfig, PruningTrainerCallback
from hf_prune.modules import oriented, prunable_modules


def _ids(batch, length, vocab, generator):
    return torch.randint(4, vocab, (batch, length), generator=generator)


def _text_batches(task, vocab=64, length=16, count=32, num_labels=3):
    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(count):
        ids = _ids(1, length, vocab, generator)[0]
        ids[-1] = 2  # an end-of-sequence token (BART's classification head reads it)
        item = {"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long)}
        if task == "sequence":
            item["labels"] = torch.randint(0, num_labels, (), generator=generator)
        elif task == "token":
            item["labels"] = torch.randint(0, num_labels, (length,), generator=generator)
        elif task == "causal":
            item["labels"] = ids.clone()
        elif task == "seq2seq":
            item["labels"] = _ids(1, 8, vocab, generator)[0]
        elif task == "qa":
            item["start_positions"], item["end_positions"] = torch.tensor(2), torch.tensor(4)
        items.append(item)
    return items


def _image_batches(count=32, num_labels=3):
    generator = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(3, 16, 16, generator=generator),
             "labels": torch.randint(0, num_labels, (), generator=generator)} for _ in range(count)]


SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)
DECODER = dict(SMALL, num_key_value_heads=2, pad_token_id=0)
ZOO = {
    # name: (config class, model class, task, config kwargs, task head names)
    "bert-qa": ("BertConfig", "BertForQuestionAnswering", "qa", SMALL, ["qa_outputs"]),
    "bert-token": ("BertConfig", "BertForTokenClassification", "token", dict(SMALL, num_labels=3), ["classifier"]),
    "roberta-seq": ("RobertaConfig", "RobertaForSequenceClassification", "sequence",
                    dict(SMALL, num_labels=3, max_position_embeddings=72), ["classifier.dense", "classifier.out_proj"]),
    "distilbert-seq": ("DistilBertConfig", "DistilBertForSequenceClassification", "sequence",
                       dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=3,
                            max_position_embeddings=64), ["pre_classifier", "classifier"]),
    "bart-seq": ("BartConfig", "BartForSequenceClassification", "sequence",
                 dict(vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_labels=3,
                      max_position_embeddings=64, pad_token_id=1, eos_token_id=2, bos_token_id=0),
                 ["classification_head.dense", "classification_head.out_proj"]),
    "t5-seq2seq": ("T5Config", "T5ForConditionalGeneration", "seq2seq",
                   dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0,
                        pad_token_id=0, eos_token_id=1), ["lm_head"]),
    "gpt2-clm": ("GPT2Config", "GPT2LMHeadModel", "causal",
                 dict(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0),
                 ["lm_head"]),
    "llama-clm": ("LlamaConfig", "LlamaForCausalLM", "causal", DECODER, ["lm_head"]),
    "qwen2-seq": ("Qwen2Config", "Qwen2ForSequenceClassification", "sequence", dict(DECODER, num_labels=3), ["score"]),
    "vit-image": ("ViTConfig", "ViTForImageClassification", "image",
                  dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_labels=3), ["classifier"]),
}


def _build(name):
    config_class, model_class, task, kwargs, heads = ZOO[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**kwargs))
    data = _image_batches() if task == "image" else _text_batches(task)
    return model, data, task, heads


def _check_pattern(weight, pattern):
    if pattern == "4x1":  # each block of 4 output rows x 1 input column is all zero or all kept
        blocks = (weight == 0).view(weight.shape[0] // 4, 4, weight.shape[1])
        assert torch.all(blocks.all(dim=1) == blocks.any(dim=1))
    else:  # 2:4: at most 2 non-zeros in every 4 consecutive inputs
        assert int((weight != 0).view(weight.shape[0], -1, 4).sum(-1).max()) <= 2


@pytest.mark.parametrize("pattern, target", [("4x1", 0.75), ("2:4", 0.5)])
@pytest.mark.parametrize("name", list(ZOO))
def test_saved_model_matches_report_across_families(tmp_path, name, pattern, target):
    model, data, task, heads = _build(name)
    heads_before = {head: model.get_submodule(head).weight.detach().clone() for head in heads}
    config = PruningConfig(target_sparsity=target, pattern=pattern, start_step=1, end_step=4, frequency=1)
    arguments = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, max_steps=5,
                     learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer_class, args_class = (Seq2SeqTrainer, Seq2SeqTrainingArguments) if task == "seq2seq" else (
        Trainer, transformers.TrainingArguments)
    callback = PruningTrainerCallback(config)
    trainer = trainer_class(model=model, args=args_class(**arguments), train_dataset=data, callbacks=[callback])
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))

    report = json.loads((tmp_path / "run" / "sparsity_report.json").read_text())
    assert report["sparsity_pruned_layers"] == pytest.approx(target, abs=0.01)
    assert (tmp_path / "run" / "pruning_config.json").is_file()
    reloaded = type(model).from_pretrained(str(tmp_path / "saved")).eval()
    modules = prunable_modules(reloaded)
    pruned = {row["name"] for row in report["layers"] if row["pattern"] == pattern}
    assert pruned and not pruned & set(heads)
    zeros = sum(int((modules[n].weight == 0).sum()) for n in pruned)
    assert zeros / sum(modules[n].weight.numel() for n in pruned) == pytest.approx(report["sparsity_pruned_layers"])
    for layer in pruned:
        _check_pattern(oriented(modules[layer], modules[layer].weight), pattern)
    for head, before in heads_before.items():
        assert int((reloaded.get_submodule(head).weight == 0).sum()) == 0, head  # trained, never masked
        assert callback.pruner.masks.get(head) is None
    batch = {key: torch.stack([item[key] for item in data[:4]]) for key in data[0]}
    trained = trainer.model.eval()
    with torch.no_grad():
        expected, actual = trained(**batch), reloaded(**batch)
    torch.testing.assert_close(actual.logits if hasattr(actual, "logits") else actual.start_logits,
                               expected.logits if hasattr(expected, "logits") else expected.start_logits,
                               atol=1e-5, rtol=1e-5)
