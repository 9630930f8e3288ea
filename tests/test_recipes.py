"""Every shipped recipe loads and builds valid configs."""
from pathlib import Path

import pytest
from transformers import HfArgumentParser, TrainingArguments

import run_qa_prune
from hf_prune import PruningConfig
from hf_prune.recipe import training_recipe

ALL_RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*/*.yaml"))
#: Recipes for a causal-LM SFT script (TRL's SFTConfig), not for run_qa_prune.py.
CAUSAL_LM_FOLDERS = ("SmolLM2-135M-Instruct",)
RECIPES = [path for path in ALL_RECIPES if path.parent.name not in CAUSAL_LM_FOLDERS]
CAUSAL_LM_RECIPES = [path for path in ALL_RECIPES if path.parent.name in CAUSAL_LM_FOLDERS]


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


def test_causal_lm_recipes_exist():
    assert {path.name for path in CAUSAL_LM_RECIPES} >= {"dense.yaml", "2-4.yaml", "unstructured-50.yaml", "slim.yaml"}


@pytest.mark.parametrize("path", CAUSAL_LM_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_causal_lm_recipe_builds_sft_config(path, tmp_path):
    trl = pytest.importorskip("trl", reason="TRL is an optional extra (pip install trl)")
    recipe = training_recipe(str(path), trl.SFTConfig, output_dir=str(tmp_path), use_cpu=True)
    assert isinstance(recipe.arguments, trl.SFTConfig)
    assert recipe.arguments.output_dir == str(tmp_path)  # from the command line, never from the recipe
    assert recipe.arguments.completion_only_loss is True and recipe.arguments.max_length == 320
    if path.stem == "dense":
        assert recipe.pruning is None and recipe.distillation is None
        return
    if path.stem == "minitron-90m":  # compression happens before training (hf_prune.compress): KD only
        assert recipe.pruning is None and recipe.distillation.hard_label_weight == 1.0
        return
    expected = {"2-4": ("2:4", 0.5), "unstructured-50": ("1x1", 0.5), "slim": ("head", 1 / 3)}[path.stem]
    assert recipe.pruning.pattern == expected[0]
    assert recipe.pruning.target_sparsity == pytest.approx(expected[1])
    assert recipe.distillation.hard_label_weight == 1.0  # KD is added to the SFT loss


def test_training_recipe_refuses_a_flag_the_arguments_class_lacks(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("arguments:\n  doc_stride: 128\n")  # a run_qa_prune.py flag: not a TrainingArguments field
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['doc_stride'\]"):
        training_recipe(str(path), TrainingArguments, output_dir=str(tmp_path))


def test_training_recipe_keeps_command_line_only_keys_out_of_the_recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("arguments:\n  push_to_hub: true\n")
    with pytest.raises(ValueError, match="may not set 'push_to_hub'"):
        training_recipe(str(path), TrainingArguments, output_dir=str(tmp_path))
