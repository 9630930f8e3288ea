"""Model card and artifacts (hf_prune/export.py), written offline into a temporary folder."""
import json

import pytest
import yaml

from hf_prune import PruningConfig
from hf_prune.export import save_pruning_artifacts, write_model_card
from hf_prune.report import LayerSparsity, SparsityReport

REPORT = SparsityReport([LayerSparsity("encoder.layer.0.intermediate.dense", [8, 4], "channel", 16, 32),
                         LayerSparsity("encoder.layer.0.attention.self.query", [4, 4], "head", 8, 16),
                         LayerSparsity("qa_outputs", [2, 4], "dense", 0, 8)])


def _card(tmp_path, config):
    path = write_model_card(str(tmp_path), model_name="student", base_model="base", report=REPORT, config=config,
                            metrics={"eval_exact_match": 41.234, "eval_f1": 55.5}, teacher="teacher")
    text = open(path, encoding="utf-8").read()
    metadata = yaml.safe_load(text.split("---")[1])
    return text, metadata


def test_card_states_every_group_pattern_and_target(tmp_path):
    config = PruningConfig(target_sparsity=0.5, pattern="head",
                           groups=[{"include": ["ffn"], "pattern": "channel", "target_sparsity": 0.6, "name": "ffn"}])
    text, metadata = _card(tmp_path, config)
    assert "| channel+head | channel 0.60 (ffn) + head 0.50 (default) | 0.5000 | 0.4286 | 41.23 | 55.50 |" in text
    assert {"channel", "head", "pruning", "sparse"} <= set(metadata["tags"])
    assert metadata["teacher_model"] == "teacher" and metadata["base_model"] == "base"
    scores = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert scores == {"exact_match": 41.23, "f1": 55.5}


def test_dense_card_and_artifacts(tmp_path):
    text, metadata = _card(tmp_path, None)
    assert "| dense | 0.00 |" in text and "dense" not in metadata["tags"]
    save_pruning_artifacts(str(tmp_path), REPORT, None)
    assert not (tmp_path / "pruning_config.json").exists()
    report = json.loads((tmp_path / "sparsity_report.json").read_text())
    assert report["sparsity_pruned_layers"] == 0.5 and len(report["layers"]) == 3


def test_card_shows_the_picture_drawn_from_the_saved_weights(tmp_path):
    pytest.importorskip("PIL", reason="the picture is drawn with Pillow (the vision extra)")
    from hf_prune import Pruner
    from hf_prune.export import write_card_picture
    from tests.conftest import tiny_bert_qa

    model = tiny_bert_qa(seed=1)
    Pruner(model, PruningConfig(target_sparsity=0.5, pattern="2:4", criterion="magnitude", start_step=0,
                                end_step=0)).step(0)
    model.save_pretrained(tmp_path)
    picture = write_card_picture(str(tmp_path))
    assert (tmp_path / picture).read_bytes().startswith(b"\x89PNG")
    path = write_model_card(str(tmp_path), model_name="student", base_model="base", report=REPORT,
                            config=PruningConfig(target_sparsity=0.5, pattern="2:4"), metrics={}, picture=picture)
    assert f"]({picture})" in open(path, encoding="utf-8").read()
