"""Issue 14: run_qa_prune.py on someone else's recipe and output folder: refusals before training, nothing lost
or mislabelled. Tiny model and SQuAD files made by the tests; the crash case kills a real subprocess."""
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import run_qa_prune
from hf_prune import PruningTrainerCallback, hub_loading
from hf_prune.value_checks import ERROR_LINE_LIMIT
from tests.test_run_qa_prune import FAST, workspace  # noqa: F401 (the shared tiny model and SQuAD files)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(workspace):
    return workspace


def _argv(files, output, *extra):
    return ["--model_name_or_path", files["model"], "--train_file", files["train"], "--validation_file",
            files["validation"], "--output_dir", str(output), *FAST, *extra]


PRUNE = ["--pruning_start_step", "1", "--pruning_end_step", "4", "--pruning_frequency", "1"]


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# 1 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, key", [("trust_remote_code: true", "trust_remote_code"),
                                       ("config_name: x\n  trust_remote_code: true", "trust_remote_code"),
                                       ("output_dir: /tmp/elsewhere", "output_dir"),
                                       ("push_to_hub: true", "push_to_hub"), ("hub_model_id: me/model", "hub_model_id"),
                                       ("hub_token: abc", "hub_token"), ("report_to: wandb", "report_to"),
                                       ("resume_from_checkpoint: ckpt", "resume_from_checkpoint")])
def test_recipe_may_not_set_command_line_only_keys(files, tmp_path, line, key):
    recipe = tmp_path / "shared.yaml"
    recipe.write_text(f"arguments:\n  {line}\n")
    with pytest.raises(ValueError, match=rf"shared.yaml: a recipe may not set .*{key}"):
        run_qa_prune.main(_argv(files, tmp_path / "out", "--recipe", str(recipe)))
    assert not (tmp_path / "out").exists()


def test_recipe_may_set_hyper_parameters_and_local_reporting(files, tmp_path):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("arguments:\n  weight_decay: 1e-4\n  report_to: none\n  max_steps: 3\n  do_prune: false\n")
    parsed = run_qa_prune.parse_arguments(_argv(files, tmp_path / "out", "--recipe", str(recipe)))
    assert parsed.training.weight_decay == 1e-4 and parsed.training.max_steps == 3 and not parsed.pruning.do_prune


def test_recipe_gives_a_json_flag_as_a_mapping(files, tmp_path):
    """The recovery setting of the all-MiniLM-L6-v2 recipes: the learning rate held until the last pruning event."""
    recipe = tmp_path / "wsd.yaml"
    recipe.write_text("arguments:\n  lr_scheduler_type: warmup_stable_decay\n"
                      "  lr_scheduler_kwargs: {num_decay_steps: 157, decay_type: linear}\n")
    parsed = run_qa_prune.parse_arguments(_argv(files, tmp_path / "out", "--recipe", str(recipe)))
    assert str(parsed.training.lr_scheduler_type.value) == "warmup_stable_decay"
    assert parsed.training.lr_scheduler_kwargs == {"num_decay_steps": 157, "decay_type": "linear"}


# 2 -------------------------------------------------------------------------------------------------------------
def test_slim_index_naming_files_outside_its_folder_is_refused(tmp_path):
    from hf_prune.slimming import _load_safetensors

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../../etc/secret"}}))
    with pytest.raises(ValueError, match="outside its folder"):
        _load_safetensors(torch.nn.Linear(2, 2), str(tmp_path))


# 3 -------------------------------------------------------------------------------------------------------------
def test_eval_only_in_any_spelling_never_trains(files, tmp_path):
    trained = tmp_path / "trained"
    run_qa_prune.main(_argv(files, trained, "--do_train", "--max_steps", "4", "--target_sparsity", "0.5", *PRUNE))
    before = _digest(trained / "model.safetensors")
    recipe = tmp_path / "with-train.yaml"
    recipe.write_text(f"arguments:\n  train_file: {files['train']}\n  max_steps: 3\n")
    for spelling in ("--do-eval", "--do_eval", "--do_eval=True", "--do_ev"):
        out = tmp_path / f"eval{spelling.replace('=', '-')}"
        metrics = run_qa_prune.main(["--model_name_or_path", str(trained), "--validation_file", files["validation"],
                                     "--output_dir", str(out), "--recipe", str(recipe), *FAST, spelling])
        assert "train_runtime" not in metrics and "eval_f1" in metrics, spelling
        assert not (out / "model.safetensors").exists() and _digest(trained / "model.safetensors") == before


# 4 -------------------------------------------------------------------------------------------------------------
def test_finished_model_is_refused_and_overwrite_replaces_it(files, tmp_path):
    out = tmp_path / "out"
    run_qa_prune.main(_argv(files, out, "--do_train", "--do_eval", "--max_steps", "4", "--target_sparsity", "0.5",
                            *PRUNE))
    with pytest.raises(ValueError, match=f"output_dir '{out}' already holds a trained model"):
        run_qa_prune.main(_argv(files, out, "--do_train", "--max_steps", "4"))
    run_qa_prune.main(_argv(files, out, "--do_train", "--do_eval", "--max_steps", "4", "--target_sparsity", "0.7",
                            *PRUNE, "--overwrite_output_dir"))
    _assert_folder_describes(out, 0.7)


def _assert_folder_describes(out, target):
    """Every sparsity figure in the folder describes the saved model as measured."""
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(str(out))
    report = json.loads((out / "sparsity_report.json").read_text())
    pruned = [row["name"] for row in report["layers"] if row["pattern"] != "dense"]
    zeros = sum(int((model.get_submodule(n).weight == 0).sum()) for n in pruned)
    measured = zeros / sum(model.get_submodule(n).weight.numel() for n in pruned)
    assert measured == pytest.approx(target, abs=0.01)
    assert report["sparsity_pruned_layers"] == pytest.approx(measured, abs=1e-6)
    assert json.loads((out / "eval_results.json").read_text())["sparsity_pruned_layers"] == pytest.approx(measured)
    assert json.loads((out / "pruning_config.json").read_text())["target_sparsity"] == target
    assert f"| 4x1 | {target:.2f} | {measured:.4f} |" in (out / "README.md").read_text()


def test_killed_run_resumes_from_its_last_checkpoint_when_rerun(files, tmp_path):
    out = tmp_path / "crashy"
    command = [sys.executable, os.path.join(ROOT, "run_qa_prune.py"), *_argv(
        files, out, "--do_train", "--max_steps", "400", "--save_strategy", "steps", "--save_steps", "3",
        "--save_total_limit", "2", "--target_sparsity", "0.5", "--pruning_start_step", "1", "--pruning_end_step", "300",
        "--pruning_frequency", "10")]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint-6" / "pruner_state.safetensors").is_file() and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert (out / "checkpoint-6").is_dir() and not (out / "model.safetensors").exists()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)  # the same command
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming from {out / 'checkpoint-'}" in rerun.stdout + rerun.stderr
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 400
    assert json.loads((out / "sparsity_report.json").read_text())["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)


def test_a_checkpoint_cut_off_while_saving_is_skipped_on_resume(tmp_path):
    from hf_prune.run_outputs import prepare_output_dir

    for step, complete in ((3, True), (6, True), (9, False)):   # killed while checkpoint-9 was being written
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert prepare_output_dir(str(tmp_path), overwrite=False, resume_from_checkpoint=None) == str(tmp_path / "checkpoint-6")


# 5 -------------------------------------------------------------------------------------------------------------
def test_dense_rerun_and_failed_rerun_leave_no_stale_figures(files, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_qa_prune.main(_argv(files, out, "--do_train", "--do_eval", "--max_steps", "4", "--target_sparsity", "0.5",
                            *PRUNE))
    run_qa_prune.main(_argv(files, out, "--do_train", "--do_eval", "--max_steps", "2", "--do_prune", "False",
                            "--overwrite_output_dir"))
    assert not (out / "pruning_config.json").exists()
    assert "| dense | 0.00 |" in (out / "README.md").read_text()

    from hf_prune.qa import QuestionAnsweringTrainer

    def crash(self, *args, **kwargs):
        raise RuntimeError("killed during evaluation")

    monkeypatch.setattr(QuestionAnsweringTrainer, "evaluate", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_qa_prune.main(_argv(files, out, "--do_train", "--do_eval", "--max_steps", "4", "--target_sparsity", "0.7",
                                *PRUNE, "--overwrite_output_dir"))
    assert not {"README.md", "eval_results.json", "model.safetensors", "sparsity_report.json"} & set(os.listdir(out))


def test_eval_only_writes_no_pruning_config_it_did_not_apply(files, tmp_path):
    trained = tmp_path / "trained"
    run_qa_prune.main(_argv(files, trained, "--do_train", "--max_steps", "4", "--target_sparsity", "0.7", *PRUNE))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pruning:\n  target_sparsity: 0.5\n  start_step: 2\n  end_step: 14\n  frequency: 2\n")
    out = tmp_path / "eval"
    metrics = run_qa_prune.main(["--model_name_or_path", str(trained), "--validation_file", files["validation"],
                                 "--output_dir", str(out), "--recipe", str(recipe), "--do_eval", *FAST])
    assert not (out / "pruning_config.json").exists() and not (out / "README.md").exists()
    assert metrics["sparsity_pruned_layers"] == pytest.approx(0.7, abs=0.01)


# 6 -------------------------------------------------------------------------------------------------------------
class _CrashAfter(PruningTrainerCallback):  # a crash after checkpoint-4 (in-process stand-in for a kill)
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise RuntimeError("crashed after checkpoint-4")


def test_changed_recipe_on_resume_is_refused(files, tmp_path):
    out = tmp_path / "out"
    argv = _argv(files, out, "--do_train", "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4",
                 "--pruning_start_step", "1", "--pruning_end_step", "6", "--pruning_frequency", "1")
    with pytest.raises(RuntimeError, match="crashed"):
        run_qa_prune.main(argv + ["--target_sparsity", "0.6"], make_pruning_callback=_CrashAfter)
    with pytest.raises(ValueError, match=r"target_sparsity: 0.6 in the checkpoint, 0.9 now"):
        run_qa_prune.main(argv + ["--target_sparsity", "0.9"])


# 7 -------------------------------------------------------------------------------------------------------------
def test_windows_strides_and_long_questions(files, tmp_path, caplog):
    with pytest.raises(ValueError, match=r"--doc_stride \(32\) must be smaller than --max_seq_length \(32\)"):
        run_qa_prune.main(_argv(files, tmp_path / "a", "--do_train", "--max_steps", "1", "--doc_stride", "32"))
    with pytest.raises(ValueError, match=r"question\(s\) do not fit a window, the longest 'q\d' .*--max_seq_length \(16\)"):
        run_qa_prune.main(_argv(files, tmp_path / "b", "--do_train", "--max_steps", "1", "--max_seq_length", "16"))
    with caplog.at_level("WARNING"):
        run_qa_prune.main(_argv(files, tmp_path / "c", "--do_train", "--max_steps", "1", "--max_seq_length", "512",
                                "--do_prune", "False"))
    assert "--max_seq_length 512 is more than the model takes; using 128" in caplog.text


# 8 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("pruning:\n  momentum: x\n", r"bad.yaml: .*momentum must be a number, got 'x'"),
    ("pruning:\n  min_sparsity_per_layer: '0.1'\n", "bad.yaml: .*min_sparsity_per_layer must be a number"),
    ("arguments:\n  learning_rate: fast\n", r"bad.yaml: argument 'learning_rate' must be float"),
    ("arguments:\n  max_steps: [1, 2]\n", "bad.yaml: argument 'max_steps' takes one value"),
    ("pruning:\n  target_sparsity: [0.5\n", r"bad.yaml is not valid YAML \(line 3"),
])
def test_recipe_values_of_the_wrong_type(files, tmp_path, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(ValueError, match=message):
        run_qa_prune.main(_argv(files, tmp_path / "out", "--recipe", str(recipe)))


# 9, 10, 11 ---------------------------------------------------------------------------------------------------------
def test_local_path_typo_says_the_folder_does_not_exist(files, tmp_path):
    with pytest.raises(ValueError, match=r"model config folder './tinyy' does not exist"):
        run_qa_prune.main(_argv({**files, "model": "./tinyy"}, tmp_path / "out", "--do_train", "--max_steps", "1"))


def test_push_to_hub_offline_is_one_sentence_and_do_prune_is_a_flag(files, tmp_path, monkeypatch):
    monkeypatch.setattr(hub_loading, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SystemExit, match="--push_to_hub needs the Hugging Face Hub"):
        run_qa_prune.main(_argv(files, tmp_path / "out", "--do_train", "--push_to_hub"))
    parsed = run_qa_prune.parse_arguments(_argv(files, tmp_path / "out", "--do_prune"))
    assert parsed.pruning.do_prune and "do_prune" in parsed.given


def test_user_error_is_one_line_and_a_non_zero_exit(files, tmp_path, capsys):
    assert run_qa_prune.run(_argv(files, tmp_path / "out", "--target_sparsity", "1.5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "target_sparsity" in err[0]


# issue 26 ------------------------------------------------------------------------------------------------------
def test_output_dir_equal_to_the_model_folder_is_refused_before_anything_is_touched(files, tmp_path):
    before = sorted(os.listdir(files["model"]))
    for flag in ("--model_name_or_path", "--teacher_model_name_or_path"):
        argv = _argv(files, files["model"], "--do_train", "--max_steps", "2", "--overwrite_output_dir",
                     *(["--teacher_model_name_or_path", files["model"]] if flag.startswith("--teacher") else []))
        with pytest.raises(ValueError, match="is, holds or lies inside the model folder"):
            run_qa_prune.main(argv)
    assert sorted(os.listdir(files["model"])) == before


def test_overwrite_run_keeps_the_users_files_and_replaces_its_own(files, tmp_path):
    out = tmp_path / "out"
    run_qa_prune.main(_argv(files, out, "--do_train", "--max_steps", "4", "--save_strategy", "steps",
                            "--save_steps", "2", "--target_sparsity", "0.5", *PRUNE))
    assert (out / "checkpoint-2" / ".hf_prune-checkpoint").is_file()
    (out / "notes.txt").write_text("mine")
    run_qa_prune.main(_argv(files, out, "--do_train", "--do_eval", "--max_steps", "4", "--target_sparsity", "0.7",
                            *PRUNE, "--overwrite_output_dir"))
    _assert_folder_describes(out, 0.7)
    assert (out / "notes.txt").read_text() == "mine" and not (out / ".hf_prune-previous").exists()


def test_evaluation_only_into_another_finished_model_is_refused(files, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        run_qa_prune.main(_argv(files, folder, "--do_train", "--max_steps", "2", "--do_prune", "False"))
    with pytest.raises(ValueError, match="holds another finished model"):
        run_qa_prune.main(["--model_name_or_path", str(b), "--validation_file", files["validation"],
                           "--output_dir", str(a), *FAST, "--do_eval"])
    assert not (a / "eval_results.json").exists()


def test_teacher_custom_code_never_runs_and_nothing_prompts(files, tmp_path, monkeypatch):
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(files["model"], teacher)
    sentinel = tmp_path / "ran"
    (teacher / "custom.py").write_text(f"open({str(sentinel)!r}, 'w').write('x')\n"
                                       "from transformers import BertConfig as CustomConfig\n")
    config = json.loads((teacher / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForQuestionAnswering": "custom.CustomConfig"}
    (teacher / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("the script asked a question on the terminal"))
    try:
        run_qa_prune.main(_argv(files, tmp_path / "out", "--do_train", "--max_steps", "1", "--do_prune", "False",
                                "--teacher_model_name_or_path", str(teacher)))
    except ValueError:
        pass  # refusing the folder is fine; running its code is not
    assert not sentinel.exists()


@pytest.mark.parametrize("text, message", [
    ('arguments:\n  lr_scheduler_kwargs: &a {x: [1, 1]}\n  seed: *a\n', "YAML aliases"),
    ('arguments:\n  seed: ' + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    ("pruning:\n  include: ['^([\\\\w.]+)+!$']\n", "repeats a group"),
    ("arguments:\n  prune_include: [[attention, intermediate]]\n", "takes a list of plain values"),
    ("arguments:\n  deepspeed: ds.json\n", "a recipe may not set 'deepspeed'"),
    ("pruning:\n  pattern: ４x１\n", "must be written in ASCII"),
])
def test_hostile_or_mistaken_recipes_are_refused_quickly(files, tmp_path, text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text, encoding="utf-8")
    started = time.time()
    with pytest.raises(ValueError, match=message):
        run_qa_prune.main(_argv(files, tmp_path / "out", "--recipe", str(recipe)))
    assert time.time() - started < 10 and not (tmp_path / "out").exists()


def test_a_hanging_include_flag_is_refused(files, tmp_path):
    with pytest.raises(ValueError, match="repeats a group"):
        run_qa_prune.main(_argv(files, tmp_path / "out", "--prune_include", r"^([\w.]+)+!$"))


@pytest.mark.parametrize("flag, value, message", [
    ("--weight_decay", "nan", "--weight_decay must be a finite number"),
    ("--distill_temperature", "inf", "--distill_temperature must be a finite number"),
    ("--hard_label_weight", "inf", "--hard_label_weight must be a finite number"),
    ("--distill_loss_weight", "nan", "--distill_loss_weight must be a finite number"),
    ("--n_best_size", "0", "--n_best_size must be >= 1"), ("--max_answer_length", "-1", "must be >= 1"),
    ("--label_smoothing_factor", "2", "must be < 1"), ("--doc_stride", "-3", "--doc_stride must be >= 0"),
    ("--max_train_samples", "0", "must be >= 1"), ("--max_eval_samples", "0", "must be >= 1"),
])
def test_numeric_flags_are_finite_and_in_range(files, tmp_path, capsys, flag, value, message):
    assert run_qa_prune.run(_argv(files, tmp_path / "out", flag, value)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_error_lines_are_bounded(files, tmp_path, capsys):
    recipe = tmp_path / "long.yaml"
    recipe.write_text("arguments:\n  " + "x" * 100_000 + ": 1\n")
    assert run_qa_prune.run(_argv(files, tmp_path / "out", "--recipe", str(recipe))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) <= len("error: ") + ERROR_LINE_LIMIT


def _slim_folder(files, tmp_path):
    folder = tmp_path / "slim"
    run_qa_prune.main(_argv(files, folder, "--do_train", "--max_steps", "4", "--pruning_pattern", "head",
                            "--target_sparsity", "0.5", *PRUNE, "--slim"))
    return folder


@pytest.mark.parametrize("layout_edit, message", [
    (lambda entry: entry.update(intermediate_size=-3), "'intermediate_size' must be an integer in"),
    (lambda entry: entry.update(intermediate_size=10 ** 6), "'intermediate_size' must be an integer in"),
    (lambda entry: entry.update(heads=[]), "'heads' must list 1 to"),
    (lambda entry: entry.update(heads=list(range(40))), "'heads' must list 1 to"),
])
def test_slim_folders_with_impossible_layouts_are_refused(files, tmp_path, layout_edit, message):
    from hf_prune import from_pretrained

    folder = _slim_folder(files, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    key = next(k for k in config if k.startswith("hf_prune") and isinstance(config[k], dict))
    entry = next(iter(config[key].values()))
    entry.setdefault("intermediate_size", 8)
    layout_edit(entry)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        from_pretrained(str(folder))


def test_model_folders_that_point_elsewhere_or_name_functions_are_refused(files, tmp_path):
    from hf_prune import from_pretrained

    folder = _slim_folder(files, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["pipeline"]}))
    with pytest.raises(ValueError, match="'pipeline' is not a model class"):
        from_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        from_pretrained(str(folder))
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"x")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the"):
        run_qa_prune.main(["--model_name_or_path", str(folder), "--validation_file", files["validation"],
                           "--output_dir", str(tmp_path / "eval"), *FAST, "--do_eval"])
