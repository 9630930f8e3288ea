"""``hf-prune report``: the pattern each weight satisfies, read from the files, for models with known zeros."""
import json
import subprocess
import sys

import pytest
import torch

from hf_prune import Pruner, PruningConfig, slim
from hf_prune.cli import main, report_rows
from tests.conftest import tiny_bert_qa

ENCODER = r"encoder\.layer\.\d+\.(attention|intermediate|output)"


def _saved(tmp_path, pattern=None, sparsity=0.5, **extra):
    model = tiny_bert_qa(seed=3)
    if pattern is not None:
        Pruner(model, PruningConfig(target_sparsity=sparsity, pattern=pattern, criterion="magnitude", start_step=0,
                                    end_step=0, **extra)).step(0)
    model.save_pretrained(tmp_path)
    return model


def _report(tmp_path, capsys):
    capsys.readouterr()  # what saving printed
    assert main(["report", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    return data, {row["name"]: row for row in data["weights"]}


@pytest.mark.parametrize("pattern, sparsity, expected", [("2:4", 0.5, "2:4"), ("4x1", 0.8, "4x1 blocks"),
                                                         ("1x1", 0.6, "unstructured")])
def test_report_names_the_pattern_and_the_sparsity_of_each_weight(tmp_path, capsys, pattern, sparsity, expected):
    model = _saved(tmp_path, pattern, sparsity)
    data, rows = _report(tmp_path, capsys)
    query = rows["bert.encoder.layer.0.attention.self.query.weight"]
    assert query["pattern"] == expected
    zeros = int((model.bert.encoder.layer[0].attention.self.query.weight == 0).sum())
    assert query["zeros"] == zeros and query["sparsity"] == pytest.approx(zeros / query["numel"])
    assert rows["qa_outputs.weight"]["pattern"] == "dense"
    assert expected in data["patterns"]


def test_report_finds_removed_heads_and_a_dense_or_slim_model(tmp_path, capsys):
    model = tiny_bert_qa(seed=3)
    Pruner(model, PruningConfig(target_sparsity=0.5, pattern="head", criterion="magnitude", start_step=0,
                                end_step=0, include=["attention"])).step(0)
    model.save_pretrained(tmp_path / "masked")
    _, rows = _report(tmp_path / "masked", capsys)
    assert rows["bert.encoder.layer.0.attention.self.query.weight"]["pattern"] == "rows removed"
    assert rows["bert.encoder.layer.0.attention.output.dense.weight"]["pattern"] == "columns removed"
    slim(model)
    model.save_pretrained(tmp_path / "slim")
    data, rows = _report(tmp_path / "slim", capsys)
    assert rows["bert.encoder.layer.0.attention.self.query.weight"]["pattern"] == "dense"
    assert rows["bert.encoder.layer.0.attention.self.query.weight"]["shape"][0] < 32 or data["sparse_layers"] == 0


def test_the_command_line_prints_a_table_and_refuses_what_is_not_a_model(tmp_path):
    _saved(tmp_path / "model", "2:4")
    run = subprocess.run([sys.executable, "-m", "hf_prune.cli", "report", str(tmp_path / "model")],
                         capture_output=True, text=True)
    assert run.returncode == 0 and "2:4" in run.stdout and run.stdout.strip().splitlines()[-1].startswith("total:")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    for target in (tmp_path / "notes", tmp_path / "notes" / "a.txt"):
        run = subprocess.run([sys.executable, "-m", "hf_prune.cli", "report", str(target)], capture_output=True,
                             text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        assert run.returncode == 2 and run.stderr.startswith("error: ") and len(run.stderr.strip().splitlines()) == 1
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not safetensors")
    run = subprocess.run([sys.executable, "-m", "hf_prune.cli", "report", str(tmp_path / "broken")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "is not a readable safetensors file" in run.stderr


def test_report_draws_one_coloured_bar_per_pruned_weight(tmp_path, capsys):
    pytest.importorskip("PIL", reason="the picture is drawn with Pillow (the vision extra)")
    from PIL import Image

    from hf_prune.sparsity_picture import PATTERN_COLOURS

    _saved(tmp_path / "model", "2:4")
    assert main(["report", str(tmp_path / "model"), "--png", str(tmp_path / "sparsity.png")]) == 0
    image = Image.open(tmp_path / "sparsity.png").convert("RGB")
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 16)}
    assert PATTERN_COLOURS["N:M"] in colours
    rows = len(report_rows(str(tmp_path / "model")))
    # one 14-pixel row per weight, a title row and a legend: the picture grows with the weights it shows
    assert image.height >= 14 * rows


def test_slim_command_saves_a_smaller_model_that_computes_what_the_masked_one_did(tmp_path, capsys):
    model = _saved(tmp_path / "masked", "head", 0.5, include=["attention"])
    capsys.readouterr()
    assert main(["slim", str(tmp_path / "masked"), str(tmp_path / "slim")]) == 0
    assert "heads" in capsys.readouterr().out
    from hf_prune import from_pretrained

    small = from_pretrained(str(tmp_path / "slim"))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=ids).start_logits, model.eval()(input_ids=ids).start_logits,
                                   atol=1e-5, rtol=1e-5)
    # never over what it did not write
    assert main(["slim", str(tmp_path / "masked"), str(tmp_path / "slim")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_export_command_writes_gguf_and_refuses_bad_output(tmp_path, capsys):
    pytest.importorskip("gguf", reason="gguf is an optional extra (pip install 'hf_prune[gguf]')")
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from tests.conftest import tiny_bpe_tokenizer

    tokenizer = tiny_bpe_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64)).eval()
    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    assert main(["export", str(tmp_path / "hf"), str(tmp_path / "out" / "model.txt")]) == 2
    assert "must end with .gguf" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    assert main(["export", str(tmp_path / "hf"), str(tmp_path / "out" / "model.gguf"), "--dtype", "f32"]) == 0
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), gguf_file="model.gguf", dtype=torch.float32)
    ids = torch.tensor([tokenizer("the cat sat")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert main(["export", str(tmp_path / "hf"), str(tmp_path / "out" / "model.gguf")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "new.gguf")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_report_reads_the_model_weights_not_the_files_saved_beside_them(tmp_path, capsys):
    from safetensors.torch import save_file

    _saved(tmp_path, "2:4")
    save_file({"projection.weight": torch.zeros(8, 8)}, str(tmp_path / "hidden_projections.safetensors"))
    data, rows = _report(tmp_path, capsys)
    assert "projection.weight" not in rows and "bert.encoder.layer.0.attention.self.query.weight" in rows
