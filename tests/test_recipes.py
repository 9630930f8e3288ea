"""Every shipped recipe loads and builds valid configs."""
from pathlib import Path

import pytest
from transformers import HfArgumentParser

import run_qa_prune
from hf_prune import PruningConfig

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*/*.yaml"))


def test_recipes_exist_for_every_reference_model():
    folders = {path.parent.name for path in RECIPES}
    assert {"bert-mini", "distilbert-base-uncased", "bert-base-uncased", "bert-large", "all-MiniLM-L6-v2"} <= folders
    for folder in ("bert-mini", "distilbert-base-uncased", "bert-base-uncased", "bert-large"):
        assert {p.name for p in RECIPES if p.parent.name == folder} >= {"dense.yaml", "4x1.yaml", "2-4.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_builds_valid_configs(path):
    recipe = run_qa_prune.load_recipe(path, HfArgumentParser(run_qa_prune.ARGUMENT_CLASSES))
    assert "eval_f1" in recipe["expected"]
    if path.stem == "dense":
        assert recipe["pruning"] is None and recipe["arguments"]["do_prune"] is False
    else:
        config = PruningConfig.from_yaml(str(path))
        expected = {"4x1": ("4x1", 0.8), "2-4": ("2:4", 0.5), "slim": ("head", 0.5)}[path.stem]
        assert (config.pattern, config.target_sparsity) == expected
        if path.stem == "slim":  # FFN channels go too, and the script removes both for real
            assert [(g.pattern, g.target_sparsity) for g in config.resolved_groups()[:-1]] == [("channel", 0.6)]
            assert recipe["arguments"]["slim"] is True
