"""Issue 13, items 1-14: the callback under the Trainer features people use. Each test fails on the main before
that issue: the model returned, saved and reported is the same model, or the run is refused before its first step."""
import glob
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import (AutoModelForQuestionAnswering, BertForSequenceClassification, Trainer,
                          TrainerCallback)

from hf_prune import (DistillationConfig, DistillationTrainer, PruningConfig, PruningTrainerCallback, from_pretrained,
                      sparsity_report)
from hf_prune.pruner import PRUNER_STATE_NAME
from hf_prune.report import FROZEN
from tests.conftest import QADataset, best_at_evaluation, tiny_bert_config, tiny_bert_qa
from tests.test_callback import _args


def _measured(model, names):
    zeros = sum(int((model.get_submodule(n).weight == 0).sum()) for n in names)
    return zeros / sum(model.get_submodule(n).weight.numel() for n in names)


class _StepSpy(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


BEST = dict(eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, load_best_model_at_end=True,
            metric_for_best_model="score", greater_is_better=True, max_steps=12)


# 1 ------------------------------------------------------------------------------------------------------------
def test_load_best_model_returns_the_best_checkpoint_with_its_masks(tmp_path):
    config = PruningConfig(target_sparsity=0.8, pattern="4x1", start_step=2, end_step=10, frequency=2)
    callback = PruningTrainerCallback(config)
    logged = LastLogged()   # stands for TensorBoard / W&B: what they record as the run's last point
    trainer = Trainer(model=tiny_bert_qa(seed=3), args=_args(tmp_path, **BEST), train_dataset=QADataset(96),
                      eval_dataset=QADataset(16, seed=1), compute_metrics=best_at_evaluation(2),
                      callbacks=[logged, callback])
    returned = trainer.train().metrics
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    best = load_file(os.path.join(trainer.state.best_model_checkpoint, "model.safetensors"))
    for key, value in trainer.model.state_dict().items():
        if key in best:
            assert torch.equal(value, best[key]), key
    measured = _measured(trainer.model, callback.pruner.masks)
    assert measured < 0.7  # mid-schedule, below the final target
    assert callback.pruner.sparsity() == pytest.approx(measured)
    report = json.loads((tmp_path / "sparsity_report.json").read_text())
    assert report["sparsity_pruned_layers"] == pytest.approx(measured, abs=1e-6)
    summary = next(entry for entry in trainer.state.log_history if "train_runtime" in entry)
    assert summary["sparsity"] == pytest.approx(measured, abs=1e-4)
    assert returned["sparsity"] == pytest.approx(measured, abs=1e-4)   # train_results.json / all_results.json
    assert logged.last["sparsity"] == pytest.approx(measured, abs=1e-4)
    assert returned["best_model_checkpoint"] == trainer.state.best_model_checkpoint


class LastLogged(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        self.last = dict(logs)


# 2 ------------------------------------------------------------------------------------------------------------
def test_simkd_load_best_model_gives_the_best_checkpoints_logits(tmp_path):
    teacher = tiny_bert_qa(seed=5)
    trainer = DistillationTrainer(model=tiny_bert_qa(seed=3), teacher_model=teacher, args=_args(tmp_path, **BEST),
                                  distillation_config=DistillationConfig(method="reused_classifier"),
                                  train_dataset=QADataset(96), eval_dataset=QADataset(16, seed=1),
                                  compute_metrics=best_at_evaluation(2),
                                  callbacks=[PruningTrainerCallback(dict(target_sparsity=0.5, start_step=2,
                                                                         end_step=10, frequency=2))])
    trainer.train()
    best = AutoModelForQuestionAnswering.from_pretrained(trainer.state.best_model_checkpoint).eval()
    batch = {k: torch.stack([QADataset(4, seed=2)[i][k] for i in range(4)]) for k in ("input_ids", "attention_mask")}
    model = trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).start_logits, best(**batch).start_logits, atol=1e-5, rtol=0)


# 3 ------------------------------------------------------------------------------------------------------------
def test_frozen_layers_are_not_pruned_by_gradient_criteria(tmp_path):
    model = tiny_bert_qa(seed=3)
    model.bert.encoder.layer[0].requires_grad_(False)
    callback = PruningTrainerCallback(PruningConfig(target_sparsity=0.5, start_step=2, end_step=8, frequency=2))
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=10), train_dataset=QADataset(64),
                      callbacks=[callback])
    trainer.train()
    frozen = [name for name in callback.pruner.frozen]
    assert frozen and all(name.startswith("bert.encoder.layer.0.") for name in frozen)
    assert all(int((model.get_submodule(name).weight == 0).sum()) == 0 for name in frozen)
    assert _measured(model, callback.pruner.masks) == pytest.approx(0.5, abs=0.01)
    rows = json.loads((tmp_path / "sparsity_report.json").read_text())["layers"]
    assert {row["name"] for row in rows if row["pattern"] == FROZEN} == set(frozen)


def test_magnitude_may_prune_frozen_layers(tmp_path):
    from hf_prune import Pruner

    model = tiny_bert_qa(seed=3)
    model.bert.encoder.layer[0].requires_grad_(False)
    pruner = Pruner(model, PruningConfig(target_sparsity=0.5, criterion="magnitude", start_step=0, end_step=0))
    pruner.step(0)
    assert not pruner.frozen and _measured(model, ["bert.encoder.layer.0.attention.self.query"]) > 0


# 4 ------------------------------------------------------------------------------------------------------------
def test_resume_with_more_steps_keeps_the_resolved_schedule(tmp_path):
    config = PruningConfig(target_sparsity=0.8)  # start, end and frequency from max_steps (20): 2, 15, 1
    Trainer(model=tiny_bert_qa(seed=3), args=_args(tmp_path, max_steps=20, save_strategy="steps", save_steps=8),
            train_dataset=QADataset(96), callbacks=[PruningTrainerCallback(config)]).train()
    callback = PruningTrainerCallback(config)
    trainer = Trainer(model=tiny_bert_qa(seed=3), args=_args(tmp_path, max_steps=40), train_dataset=QADataset(96),
                      callbacks=[callback])
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    assert (callback.pruner.config.start_step, callback.pruner.config.end_step) == (2, 15)
    logged = [entry["sparsity"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == sorted(logged) and logged[-1] == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize("change, field", [(dict(target_sparsity=0.9), "target_sparsity"),
                                           (dict(target_sparsity=0.8, pattern="1x1"), "pattern"),
                                           (dict(target_sparsity=0.8, criterion="magnitude"), "criterion")])
def test_resume_with_a_config_that_changes_masks_is_refused(tmp_path, change, field):
    Trainer(model=tiny_bert_qa(seed=3), args=_args(tmp_path, max_steps=8, save_strategy="steps", save_steps=4),
            train_dataset=QADataset(64), callbacks=[PruningTrainerCallback(PruningConfig(target_sparsity=0.8))]).train()
    spy = _StepSpy()
    trainer = Trainer(model=tiny_bert_qa(seed=3), args=_args(tmp_path, max_steps=8), train_dataset=QADataset(64),
                      callbacks=[PruningTrainerCallback(PruningConfig(**change)), spy])
    with pytest.raises(ValueError, match=field):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert spy.steps == []


# 5 ------------------------------------------------------------------------------------------------------------
def test_schedule_that_cannot_finish_is_refused(tmp_path):
    spy = _StepSpy()
    trainer = Trainer(model=tiny_bert_qa(), args=_args(tmp_path, max_steps=20), train_dataset=QADataset(32),
                      callbacks=[PruningTrainerCallback(PruningConfig(start_step=10, end_step=20000, frequency=10)),
                                 spy])
    with pytest.raises(ValueError, match=r"end_step 20000.*max_steps 20"):
        trainer.train()
    assert spy.steps == []


# 7 ------------------------------------------------------------------------------------------------------------
def test_default_config_prunes_gradually_in_a_trainer(tmp_path, caplog):
    callback = PruningTrainerCallback(PruningConfig(target_sparsity=0.8, pattern="4x1"))
    with caplog.at_level("INFO", logger="hf_prune"):
        Trainer(model=tiny_bert_qa(), args=_args(tmp_path, max_steps=40), train_dataset=QADataset(32),
                callbacks=[callback]).train()
    events = callback.pruner.groups[0].schedule.event_steps()
    assert events[0] == 4 and len(events) >= 8 and events[-1] == 30
    assert "events at steps [4, 6," in caplog.text


# 8 ------------------------------------------------------------------------------------------------------------
def _classifier(seed):
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(num_labels=3, hidden_dropout_prob=0.0,
                                                          attention_probs_dropout_prob=0.0))


def _classification_data(count=32):
    generator = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(5, 96, (12,), generator=generator),
             "labels": torch.randint(0, 3, (), generator=generator)} for _ in range(count)]


def test_distillation_eval_loss_is_the_task_loss(tmp_path):
    student, data = _classifier(1), _classification_data()
    plain = Trainer(model=student, args=_args(tmp_path / "plain"), eval_dataset=data).evaluate()["eval_loss"]
    distilled = DistillationTrainer(model=student, teacher_model=_classifier(2), args=_args(tmp_path / "kd"),
                                    eval_dataset=data).evaluate()["eval_loss"]
    assert distilled == pytest.approx(plain, rel=1e-6)


def test_hard_loss_honours_label_smoothing_and_compute_loss_func(tmp_path):
    data = _classification_data(8)
    batch = {key: torch.stack([item[key] for item in data]) for key in data[0]}
    kd_off = DistillationConfig(distill_loss_weight=0.0, hard_label_weight=1.0)
    args = _args(tmp_path, label_smoothing_factor=0.2)
    stock = Trainer(model=_classifier(1), args=args)
    distilled = DistillationTrainer(model=_classifier(1), teacher_model=_classifier(2), args=args,
                                    distillation_config=kd_off)
    for trainer in (stock, distilled):
        trainer.model.train()
    expected = stock.compute_loss(stock.model, dict(batch))
    assert float(distilled.compute_loss(distilled.model, dict(batch))) == pytest.approx(float(expected), rel=1e-6)
    seen = []

    def custom(outputs, labels, num_items_in_batch=None):
        seen.append(labels)
        return outputs.logits.square().mean()

    custom_trainer = DistillationTrainer(model=_classifier(1), teacher_model=_classifier(2), args=_args(tmp_path),
                                         distillation_config=kd_off, compute_loss_func=custom)
    custom_trainer.model.train()
    loss = custom_trainer.compute_loss(custom_trainer.model, dict(batch))
    assert seen and torch.equal(seen[0], batch["labels"])
    assert float(loss) == pytest.approx(float(custom_trainer.model(input_ids=batch["input_ids"]).logits.square().mean()))


# 9 ------------------------------------------------------------------------------------------------------------
def test_resume_from_a_checkpoint_outside_output_dir(tmp_path):
    config = PruningConfig(target_sparsity=0.8, start_step=2, end_step=14, frequency=3)
    full = PruningTrainerCallback(config)
    Trainer(model=tiny_bert_qa(seed=3), args=_args(tmp_path / "run", max_steps=16, save_strategy="steps",
                                                   save_steps=6), train_dataset=QADataset(96), callbacks=[full]).train()
    moved = tmp_path / "elsewhere" / "kept"
    shutil.copytree(tmp_path / "run" / "checkpoint-6", moved)
    resumed = PruningTrainerCallback(config)
    Trainer(model=tiny_bert_qa(seed=3), args=_args(tmp_path / "other", max_steps=16), train_dataset=QADataset(96),
            callbacks=[resumed]).train(resume_from_checkpoint=str(moved))
    for name, mask in full.pruner.masks.items():
        assert torch.equal(resumed.pruner.masks[name], mask), name


# 10 -----------------------------------------------------------------------------------------------------------
def test_reporting_integrations_see_sparsity_with_the_plain_callbacks_argument(tmp_path):
    class Reporter(TrainerCallback):  # stands for TensorBoardCallback, which the Trainer puts before user callbacks
        seen = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(dict(logs))

    config = PruningConfig(target_sparsity=0.5, start_step=1, end_step=2, frequency=1)
    Trainer(model=tiny_bert_qa(), args=_args(tmp_path, max_steps=4, logging_steps=2), train_dataset=QADataset(32),
            callbacks=[Reporter(), PruningTrainerCallback(config)]).train()
    assert [entry.get("sparsity") for entry in Reporter.seen if "loss" in entry] == [0.5, 0.5]


# 12 -----------------------------------------------------------------------------------------------------------
def test_checkpoints_and_final_folder_hold_config_report_and_the_card_states_sparsity(tmp_path):
    config = PruningConfig(target_sparsity=0.5, pattern="4x1", start_step=1, end_step=4, frequency=1)
    trainer = Trainer(model=tiny_bert_qa(), args=_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3,
                                                      eval_strategy="steps", eval_steps=6),
                      train_dataset=QADataset(32), eval_dataset=QADataset(8), callbacks=[PruningTrainerCallback(config)])
    trainer.train()
    trainer.save_model()
    for folder in (tmp_path / "checkpoint-3", tmp_path / "checkpoint-6", tmp_path):
        for name in ("pruning_config.json", "sparsity_report.json", "sparsity_report.md"):
            assert (folder / name).is_file(), (folder, name)
    assert PruningConfig.from_pretrained(str(tmp_path)).target_sparsity == 0.5
    trainer.create_model_card(tags=list(trainer.model.model_tags))  # what push_to_hub passes
    card = (tmp_path / "README.md").read_text()
    assert "hf_prune" in card and "4x1" in card and "Sparsity: 0.5" in card and "Target Sparsity: 0.5" in card


def test_the_card_states_target_and_measured_sparsity_without_an_evaluation(tmp_path):
    config = PruningConfig(target_sparsity=0.5, pattern="4x1", start_step=1, end_step=4, frequency=1)
    trainer = Trainer(model=tiny_bert_qa(), args=_args(tmp_path, max_steps=6), train_dataset=QADataset(32),
                      callbacks=[PruningTrainerCallback(config)])
    trainer.train()
    measured = sparsity_report(trainer.model).pruned_sparsity   # layers with zeros = the pruned ones here
    trainer.create_model_card(tags=list(trainer.model.model_tags))  # what push_to_hub passes
    card = (tmp_path / "README.md").read_text()
    assert "- 4x1" in card and "- target-sparsity-0.50" in card and f"- sparsity-{measured:.4f}" in card
    assert sum("sparsity-" in tag for tag in trainer.model.model_tags) == 2   # one current figure, not a history


# 13 -----------------------------------------------------------------------------------------------------------
def test_checkpoint_is_complete_before_older_ones_are_rotated_away(tmp_path, monkeypatch):
    import transformers.trainer as trainer_module

    checked = []

    def check(output_dir):
        for folder in glob.glob(os.path.join(output_dir, "checkpoint-*")):
            assert os.path.isfile(os.path.join(folder, PRUNER_STATE_NAME)), folder
            checked.append(folder)

    if hasattr(trainer_module, "rotate_checkpoints"):   # transformers >= 5.x: a module function
        rotate = trainer_module.rotate_checkpoints

        def checking_rotate(output_dir, *args, **kwargs):
            check(output_dir)
            return rotate(output_dir, *args, **kwargs)
        monkeypatch.setattr(trainer_module, "rotate_checkpoints", checking_rotate)
    else:                                                # earlier: a Trainer method
        rotate_method = Trainer._rotate_checkpoints

        def checking_rotate_method(self, use_mtime=False, output_dir=None):
            check(output_dir)
            return rotate_method(self, use_mtime=use_mtime, output_dir=output_dir)
        monkeypatch.setattr(Trainer, "_rotate_checkpoints", checking_rotate_method)
    config = PruningConfig(target_sparsity=0.5, start_step=1, end_step=4, frequency=1)
    Trainer(model=tiny_bert_qa(), args=_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=2,
                                             save_total_limit=1),
            train_dataset=QADataset(32), callbacks=[PruningTrainerCallback(config)]).train()
    assert len(checked) >= 3 and os.listdir(tmp_path).count("checkpoint-6") == 1


def test_pushed_checkpoint_holds_the_pruner_state_when_the_push_begins(tmp_path):
    from types import SimpleNamespace

    config = PruningConfig(target_sparsity=0.5, start_step=1, end_step=2, frequency=1)
    callback = PruningTrainerCallback(config)
    Trainer(model=tiny_bert_qa(), args=_args(tmp_path, max_steps=2), train_dataset=QADataset(16),
            callbacks=[callback]).train()
    os.makedirs(tmp_path / "checkpoint-2")  # the folder the Trainer has just saved the model into
    args = _args(tmp_path)
    callback.on_push_begin(args, SimpleNamespace(global_step=2), None, model=callback.pruner.model)
    assert (tmp_path / "checkpoint-2" / PRUNER_STATE_NAME).is_file()


# 14 -----------------------------------------------------------------------------------------------------------
def test_from_pretrained_loads_the_saved_class_and_refuses_an_unknown_one(tmp_path):
    _classifier(1).save_pretrained(tmp_path / "classifier")
    assert type(from_pretrained(str(tmp_path / "classifier"))).__name__ == "BertForSequenceClassification"
    config = json.loads((tmp_path / "classifier" / "config.json").read_text())
    config.pop("architectures")
    (tmp_path / "classifier" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="names no architecture"):
        from_pretrained(str(tmp_path / "classifier"))


# hyperparameter search -----------------------------------------------------------------------------------------
def test_hyperparameter_search_prunes_each_trials_model_and_completes_its_run_folder(tmp_path):
    pytest.importorskip("optuna", reason="optuna is a [dev] extra (Trainer.hyperparameter_search backend)")
    config = PruningConfig(target_sparsity=0.5, pattern="4x1", start_step=1, end_step=4, frequency=1)
    models = []

    def model_init(trial=None):
        models.append(tiny_bert_qa(seed=len(models)))
        return models[-1]

    trainer = Trainer(model_init=model_init, args=_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=6,
                                                        eval_strategy="steps", eval_steps=6),
                      train_dataset=QADataset(32), eval_dataset=QADataset(8), callbacks=[PruningTrainerCallback(config)])
    trainer.hyperparameter_search(hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-3)},
                                  backend="optuna", n_trials=2, direction="minimize")
    trial_models = models[-2:]  # (the Trainer also builds one model when it is created)
    for number, model in enumerate(trial_models):
        checkpoint = tmp_path / f"run-{number}" / "checkpoint-6"
        assert (checkpoint / PRUNER_STATE_NAME).is_file() and (checkpoint / "sparsity_report.json").is_file()
        report = json.loads((checkpoint / "sparsity_report.json").read_text())
        assert report["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
        saved = load_file(str(checkpoint / "model.safetensors"))
        query = saved["bert.encoder.layer.0.attention.self.query.weight"]
        assert (query == 0).float().mean().item() > 0.3   # each trial's own model was pruned
        assert torch.equal(query, model.bert.encoder.layer[0].attention.self.query.weight.detach())
