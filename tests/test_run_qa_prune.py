"""run_qa_prune.py end to end on a tiny random-init BERT and SQuAD files written by the test."""
import importlib.util
import json
import os

import pytest
import torch
from transformers import AutoModelForQuestionAnswering

import run_qa_prune
from hf_prune import PruningConfig, from_pretrained, hub_loading
from tests.conftest import requires_shared
from tests.qa.helpers import squad_flat_jsonl, squad_nested, tiny_model_folder

FAST = ["--max_seq_length", "32", "--doc_stride", "8", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3", "--use_cpu", "--report_to", "none",
        "--disable_tqdm", "True", "--save_strategy", "no", "--seed", "3"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    return {"model": tiny_model_folder(str(root / "model")), "train": squad_nested(str(root / "train.json")),
            "validation": squad_flat_jsonl(str(root / "validation.jsonl")), "root": root}


def _run(workspace, output, *extra):
    argv = ["--model_name_or_path", workspace["model"], "--train_file", workspace["train"],
            "--validation_file", workspace["validation"], "--output_dir", str(output), *FAST, *extra]
    return run_qa_prune.main(argv)


def test_prune_train_eval_save_reload(workspace):
    output = workspace["root"] / "pruned"
    metrics = _run(workspace, output, "--do_train", "--do_eval", "--max_steps", "6", "--target_sparsity", "0.5",
                   "--pruning_pattern", "4x1", "--pruning_start_step", "1", "--pruning_end_step", "4",
                   "--pruning_frequency", "1")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "pruning_config.json", "sparsity_report.json",
                 "sparsity_report.md", "eval_results.json", "all_results.json", "eval_predictions.json", "README.md"):
        assert (output / name).is_file(), name
    results = json.loads((output / "eval_results.json").read_text())
    assert {"eval_exact_match", "eval_f1", "sparsity_pruned_layers", "sparsity_all_linear"} <= set(results)
    assert results["pruning_pattern"] == "4x1" and results["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
    assert metrics["eval_f1"] == results["eval_f1"]
    assert PruningConfig.from_pretrained(str(output)).target_sparsity == 0.5
    report = json.loads((output / "sparsity_report.json").read_text())
    assert report["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
    card = (output / "README.md").read_text()
    assert card.startswith("---\n") and "pruning" in card and "model-index" in card and "| 4x1 | 0.50 |" in card
    if importlib.util.find_spec("PIL") is not None:  # the card shows the picture drawn from the saved weights
        assert "](sparsity.png)" in card and (output / "sparsity.png").is_file()

    reloaded = AutoModelForQuestionAnswering.from_pretrained(str(output))
    zeros = sum(int((m.weight == 0).sum()) for n, m in reloaded.named_modules()
                if isinstance(m, torch.nn.Linear) and "encoder" in n)
    total = sum(m.weight.numel() for n, m in reloaded.named_modules() if isinstance(m, torch.nn.Linear) and "encoder" in n)
    assert zeros / total == pytest.approx(0.5, abs=0.01)

    # the saved model, evaluated alone, predicts exactly what the in-memory model predicted
    again = workspace["root"] / "reloaded-eval"
    _run({**workspace, "model": str(output)}, again, "--do_eval", "--do_prune", "False")
    assert json.loads((again / "eval_predictions.json").read_text()) == json.loads(
        (output / "eval_predictions.json").read_text())


def test_dense_run_with_do_prune_false(workspace):
    output = workspace["root"] / "dense"
    _run(workspace, output, "--do_train", "--do_eval", "--max_steps", "2", "--do_prune", "False")
    assert not (output / "pruning_config.json").exists()
    assert json.loads((output / "eval_results.json").read_text())["pruning_pattern"] == "dense"


def test_distillation_flags_reach_the_trainer(workspace):
    output = workspace["root"] / "distilled"
    metrics = _run(workspace, output, "--do_train", "--max_steps", "2", "--target_sparsity", "0.5",
                   "--pruning_start_step", "1", "--pruning_end_step", "2", "--teacher_model_name_or_path",
                   workspace["model"], "--distill_method", "reused_classifier", "--hard_label_weight", "0.5",
                   "--logging_steps", "1")
    state = json.loads((output / "trainer_state.json").read_text())
    assert any("loss_feature" in entry for entry in state["log_history"])
    assert metrics["train_samples"] > 0
    saved = AutoModelForQuestionAnswering.from_pretrained(str(output))  # a plain QA model after folding
    # the report describes that saved model, not the training-time projector and reused head
    report = json.loads((output / "sparsity_report.json").read_text())
    linears = {name for name, module in saved.named_modules() if isinstance(module, torch.nn.Linear)}
    assert {row["name"] for row in report["layers"]} == linears


@pytest.mark.parametrize("teacher", [False, True], ids=["plain", "simkd"])
def test_slim_run_saves_a_smaller_model_that_predicts_the_same(workspace, tmp_path, teacher):
    recipe = tmp_path / "slim.yaml"
    recipe.write_text("pruning:\n  pattern: head\n  target_sparsity: 0.5\n  start_step: 1\n  end_step: 3\n"
                      "  frequency: 1\n  groups:\n    - include: ['intermediate\\.dense', 'layer\\.\\d+\\.output\\.dense']\n"
                      "      pattern: channel\n      target_sparsity: 0.5\n")
    output = workspace["root"] / f"slim-{teacher}"
    distill = ["--teacher_model_name_or_path", workspace["model"], "--distill_method", "reused_classifier"] if teacher else []
    metrics = _run(workspace, output, "--do_train", "--do_eval", "--max_steps", "4", "--recipe", str(recipe),
                   "--slim", "True", *distill)
    assert metrics["attention_heads_kept"] == 4 and metrics["ffn_channels_kept"] == 64  # of 8 and 128
    assert metrics["parameters_after_slim"] < metrics["parameters_before_slim"]
    assert metrics["sparsity_pruned_layers"] == pytest.approx(0.5)  # measured before the zeros were removed
    slim_model = from_pretrained(str(output))
    assert slim_model.bert.encoder.layer[0].attention.self.query.out_features < 32
    assert sum(p.numel() for p in slim_model.parameters()) == metrics["parameters_after_slim"]  # as saved
    # the saved slim model, evaluated alone, predicts what the masked model predicted in memory
    again = workspace["root"] / f"slim-{teacher}-reloaded-eval"
    _run({**workspace, "model": str(output)}, again, "--do_eval", "--do_prune", "False")
    assert json.loads((again / "eval_predictions.json").read_text()) == json.loads(
        (output / "eval_predictions.json").read_text())


def test_slim_needs_a_structured_pattern(workspace, tmp_path):
    with pytest.raises(ValueError, match=r"--slim removes whole attention heads.*\['4x1'\]"):
        _run(workspace, tmp_path / "out", "--do_train", "--pruning_pattern", "4x1", "--slim", "True")


def test_recipe_sets_defaults_and_flags_override(workspace, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("arguments:\n  learning_rate: 0.25\n  max_steps: 7\npruning:\n  target_sparsity: 0.3\n"
                      "  pattern: '1x1'\n  end_step: 5\n")
    parsed = run_qa_prune.parse_arguments(["--model_name_or_path", workspace["model"], "--recipe", str(recipe),
                                           "--max_steps", "9", "--pruning_pattern", "2x2"])
    training_args = parsed.training
    assert training_args.learning_rate == 0.25 and training_args.max_steps == 9
    assert training_args.do_train and training_args.do_eval  # no do_* flag: train and evaluate
    config = run_qa_prune.build_pruning_config(parsed.pruning, parsed.recipe, parsed.recipe_path, parsed.given)
    assert (config.target_sparsity, config.pattern, config.end_step) == (0.3, "2x2", 5)


def test_default_recipe_and_output_dir_for_known_model():
    parsed = run_qa_prune.parse_arguments(["--model_name_or_path", "prajjwal1/bert-mini"])
    training_args, recipe_path = parsed.training, parsed.recipe_path
    assert recipe_path.name == "4x1.yaml" and recipe_path.parent.name == "bert-mini"
    assert training_args.output_dir == os.path.join("outputs", "bert-mini-4x1")
    config = run_qa_prune.build_pruning_config(parsed.pruning, parsed.recipe, recipe_path, parsed.given)
    assert (config.pattern, config.target_sparsity) == ("4x1", 0.8)


def test_keep_multiple_of_flag_reaches_the_slim_recipes_channel_group():
    parsed = run_qa_prune.parse_arguments(["--model_name_or_path", "all-MiniLM-L6-v2", "--recipe", "slim.yaml",
                                           "--pruning_keep_multiple_of", "8"])
    config = run_qa_prune.build_pruning_config(parsed.pruning, parsed.recipe, parsed.recipe_path, parsed.given)
    assert [(group.pattern, group.keep_multiple_of) for group in config.resolved_groups()] == [("channel", 8),
                                                                                               ("head", 8)]


@pytest.mark.parametrize("argv_extra,message", [
    (["--recipe", "no-such-recipe.yaml"], "recipe 'no-such-recipe.yaml' not found"),
    (["--do_prune", "False", "--target_sparsity", "0.5"], "--do_prune False conflicts with pruning flags"),
    (["--distill_temperature", "3"], "need --teacher_model_name_or_path"),
    (["--target_sparsity", "1.5"], r"target_sparsity must be in \[0, 1\)"),
    (["--pruning_pattern", "3:2"], r"invalid pruning pattern '3:2': .*needs 0 < N < M; allowed:"),
    (["--pruning_pattern", "4by1"], "unknown pruning pattern '4by1'"),
])
def test_bad_flags_fail_before_training(workspace, tmp_path, argv_extra, message):
    with pytest.raises(ValueError, match=message):
        _run(workspace, tmp_path / "out", "--do_train", *argv_extra)
    assert not (tmp_path / "out").exists()


def test_missing_and_malformed_files(workspace, tmp_path):
    with pytest.raises(ValueError, match="data file .*missing.json' does not exist"):
        _run({**workspace, "train": str(tmp_path / "missing.json")}, tmp_path / "out", "--do_train")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.1", "data": [{"title": "x", "paragraphs": [{"context": "abc", "qas": '
                   '[{"id": "q9", "question": "?", "answers": [{"text": "zz", "answer_start": 0}]}]}]}]}')
    with pytest.raises(ValueError, match="bad.json: question 'q9'"):
        _run({**workspace, "train": str(bad)}, tmp_path / "out", "--do_train")


def test_unknown_recipe_key_names_key_and_file(workspace, tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("arguments:\n  learning_rat: 1.0\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown argument\(s\) \['learning_rat'\]"):
        run_qa_prune.parse_arguments(["--model_name_or_path", workspace["model"], "--recipe", str(recipe)])


def test_hub_unreachable_is_one_sentence(monkeypatch, tmp_path, workspace):
    monkeypatch.setattr(hub_loading, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SystemExit, match="Hugging Face Hub is unreachable.*--train_file/--validation_file"):
        _run({**workspace, "model": "someone/not-local"}, tmp_path / "out", "--do_train", "--do_prune", "False")


def test_json_argument_file(workspace, tmp_path):
    args = {"model_name_or_path": workspace["model"], "output_dir": str(tmp_path / "o"), "do_train": True,
            "max_steps": 3, "learning_rate": 0.5}
    (tmp_path / "args.json").write_text(json.dumps(args))
    parsed = run_qa_prune.parse_arguments([str(tmp_path / "args.json")])
    assert parsed.training.max_steps == 3 and parsed.training.do_train and not parsed.training.do_eval


def test_smoke_on_shared_data_and_tokenizer(tmp_path):
    config_dir = requires_shared("models", "bert-mini-config")
    validation = requires_shared("data", "squad", "validation.json")
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(config_dir)
    config.update(dict(num_hidden_layers=1, hidden_size=64, num_attention_heads=2, intermediate_size=128))
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    AutoModelForQuestionAnswering.from_config(config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(model_dir)
    metrics = run_qa_prune.main(["--model_name_or_path", str(model_dir), "--train_file", validation,
                                 "--validation_file", validation, "--max_train_samples", "24", "--max_eval_samples",
                                 "12", "--max_steps", "3", "--target_sparsity", "0.5", "--pruning_start_step", "1",
                                 "--pruning_end_step", "2", "--pruning_frequency", "1", "--output_dir",
                                 str(tmp_path / "out"), FAST[0], "128", *FAST[2:]])
    assert 0.0 <= metrics["eval_f1"] <= 100.0 and metrics["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
