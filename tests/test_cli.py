"""``hf-prune report``: the pattern each weight satisfies, read from the files, for models with known zeros."""
import json
import subprocess
import sys

import pytest
import torch

from hf_prune import Pruner, PruningConfig, slim
from hf_prune.cli import main
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
