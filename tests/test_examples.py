"""Each example runs end to end as a user would start it (a subprocess), on tiny models and data, in seconds."""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import SENTENCES, tiny_bpe_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
          "--disable_tqdm", "true"]


def _run(script, *arguments, timeout=600):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *arguments], capture_output=True,
                         text=True, timeout=timeout, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def test_causal_lm_compression_example(tmp_path):
    tokenizer = tiny_bpe_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=4,
                                 num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=64,
                                 tie_word_embeddings=True)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in SENTENCES * 8))
    _run("causal-lm/compress_llm.py", "--model_name_or_path", str(tmp_path / "model"), "--train_file",
         str(tmp_path / "train.jsonl"), "--target_params", "40000", "--calibration_batches", "2", "--score_batches",
         "1", "--max_steps", "3", "--output_dir", str(tmp_path / "out"), *COMMON)
    summary = json.loads((tmp_path / "out" / "compression.json").read_text())
    assert summary["parameters"] <= 40000 and summary["candidates"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == summary["shape"]["num_hidden_layers"]


def test_text_classification_example_prunes_and_distils(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = sorted({w for s in SENTENCES for w in s.split()})
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    for name, seed in (("model", 0), ("teacher", 1)):
        torch.manual_seed(seed)
        BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 num_labels=2)).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    rows = "".join(json.dumps({"sentence": s, "label": i % 2}) + "\n" for i, s in enumerate(SENTENCES * 6))
    (tmp_path / "train.jsonl").write_text(rows)
    _run("text-classification/run_classification_prune.py", "--model_name_or_path", str(tmp_path / "model"),
         "--teacher_model_name_or_path", str(tmp_path / "teacher"), "--train_file", str(tmp_path / "train.jsonl"),
         "--validation_file", str(tmp_path / "train.jsonl"), "--pruning_pattern", "2:4", "--target_sparsity", "0.5",
         "--do_train", "--do_eval", "--max_steps", "6", "--output_dir", str(tmp_path / "out"), *COMMON)
    report = json.loads((tmp_path / "out" / "sparsity_report.json").read_text())
    assert report["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["pruning"]["config"]["pattern"] == "2:4"


def test_image_classification_example_prunes_a_vit(tmp_path):
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for index in range(4):
                pixels = (torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{index}.png")
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=64)).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    _run("image-classification/run_image_classification_prune.py", "--model_name_or_path", str(tmp_path / "vit"),
         "--train_dir", str(tmp_path / "images" / "train"), "--validation_dir", str(tmp_path / "images" / "val"),
         "--pruning_pattern", "4x1", "--target_sparsity", "0.5", "--do_train", "--do_eval", "--max_steps", "4",
         "--output_dir", str(tmp_path / "out"), *COMMON)
    report = json.loads((tmp_path / "out" / "sparsity_report.json").read_text())
    assert report["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
    assert not any(row["sparsity"] for row in report["layers"] if row["name"] == "classifier")
