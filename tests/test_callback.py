import os

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_prune import PruningConfig, PruningTrainerCallback
from hf_prune.pruner import PRUNER_STATE_NAME
from tests.conftest import QADataset, tiny_bert_qa


def _args(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=8, learning_rate=5e-3, weight_decay=0.1,
                  max_steps=24, logging_steps=4, save_strategy="no", report_to=[], use_cpu=True, seed=7,
                  disable_tqdm=True, data_seed=7)
    values.update(overrides)
    return TrainingArguments(**values)


def _train(output_dir, config, resume=None, **overrides):
    model = tiny_bert_qa(seed=3)
    callback = PruningTrainerCallback(config)
    trainer = Trainer(model=model, args=_args(output_dir, **overrides), train_dataset=QADataset(96),
                      callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, callback


def _assert_masked_zero(model, pruner):
    for name, mask in pruner.masks.items():
        assert torch.all(model.get_submodule(name).weight[~mask] == 0), name


def test_trainer_run_reaches_target_with_accumulation_and_weight_decay(tmp_path):
    config = PruningConfig(target_sparsity=0.8, pattern="4x1", start_step=2, end_step=16, frequency=2)
    trainer, callback = _train(tmp_path, config, gradient_accumulation_steps=2, max_grad_norm=1.0)
    pruner = callback.pruner
    assert pruner.sparsity() == pytest.approx(0.8, abs=0.01)
    _assert_masked_zero(trainer.model, pruner)
    report = pruner.sparsity_report()
    assert report.pruned_sparsity == pytest.approx(0.8, abs=0.01)
    assert report.linear_sparsity < report.pruned_sparsity  # the QA head stays dense
    logged = [entry["sparsity"] for entry in trainer.state.log_history if "sparsity" in entry and "loss" in entry]
    assert logged == sorted(logged) and logged[-1] == pytest.approx(0.8, abs=0.01) and logged[0] > 0


def test_masks_hold_after_every_optimizer_step(tmp_path):
    config = PruningConfig(target_sparsity=0.5, pattern="1x1", start_step=1, end_step=4, frequency=1)
    seen = []

    class Check(PruningTrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            super().on_optimizer_step(args, state, control, **kwargs)
            if self.pruner.last_event_step is not None:
                _assert_masked_zero(kwargs["model"], self.pruner)
                seen.append(state.global_step)

    model = tiny_bert_qa(seed=3)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=8, weight_decay=0.5), train_dataset=QADataset(64),
                      callbacks=[Check(config)])
    trainer.train()
    assert seen == list(range(1, 8))


def test_bf16(tmp_path):
    config = PruningConfig(target_sparsity=0.5, pattern="2:4", start_step=2, end_step=8, frequency=2)
    trainer, callback = _train(tmp_path, config, bf16=True, max_steps=10)
    assert callback.pruner.sparsity() == pytest.approx(0.5)
    _assert_masked_zero(trainer.model, callback.pruner)


def test_end_step_defaults_to_three_quarters_of_training(tmp_path):
    _, callback = _train(tmp_path, PruningConfig(target_sparsity=0.5, frequency=4), max_steps=20)
    assert callback.pruner.config.end_step == 15
    assert callback.pruner.sparsity() == pytest.approx(0.5, abs=0.01)


HEADS_AND_CHANNELS = dict(target_sparsity=0.5, pattern="head", groups=[
    {"include": [r"intermediate\.dense", r"layer\.\d+\.output\.dense"], "pattern": "channel", "target_sparsity": 0.5}])


@pytest.mark.parametrize("fields", [dict(target_sparsity=0.8, pattern="4x1"), HEADS_AND_CHANNELS],
                         ids=["4x1", "heads+channels"])
def test_resume_mid_pruning_matches_uninterrupted_run(tmp_path, fields):
    config = PruningConfig(start_step=2, end_step=20, frequency=3, **fields)
    full, full_cb = _train(tmp_path / "full", config, save_strategy="steps", save_steps=10)
    checkpoint = tmp_path / "full" / "checkpoint-10"
    assert (checkpoint / PRUNER_STATE_NAME).is_file()

    resumed, resumed_cb = _train(tmp_path / "full", config, resume=str(checkpoint), save_strategy="no")
    for name, mask in full_cb.pruner.masks.items():
        assert torch.equal(resumed_cb.pruner.masks[name], mask), name
    assert full_cb.pruner.bias_masks.keys() == resumed_cb.pruner.bias_masks.keys()
    for name, mask in full_cb.pruner.bias_masks.items():
        assert torch.equal(resumed_cb.pruner.bias_masks[name], mask), name
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, atol=1e-6, rtol=0)


def test_resume_without_pruner_state_is_a_clear_error(tmp_path):
    config = PruningConfig(target_sparsity=0.5, start_step=2, end_step=6, frequency=2)
    _train(tmp_path, config, save_strategy="steps", save_steps=4, max_steps=6)
    os.remove(tmp_path / "checkpoint-4" / PRUNER_STATE_NAME)
    with pytest.raises(ValueError, match="no pruner_state.safetensors was found"):
        _train(tmp_path, config, resume=str(tmp_path / "checkpoint-4"), max_steps=6)


def test_bad_config_fails_before_first_step(tmp_path):
    steps = []

    class Spy(PruningTrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    trainer = Trainer(model=tiny_bert_qa(), args=_args(tmp_path), train_dataset=QADataset(16),
                      callbacks=[Spy(PruningConfig(include=["no_such_module"]))])
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        trainer.train()
    assert steps == []


def test_config_from_dict_and_yaml(tmp_path):
    assert PruningTrainerCallback({"target_sparsity": 0.3}).config.target_sparsity == 0.3
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pruning:\n  pattern: '1x1'\n")
    assert PruningTrainerCallback(str(recipe)).config.pattern == "1x1"


def test_add_pruning_callback_puts_sparsity_before_reporting_integrations(tmp_path):
    from transformers import TrainerCallback

    from hf_prune import add_pruning_callback

    class Reporter(TrainerCallback):  # stands for TensorBoardCallback: registered before user callbacks
        seen = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(dict(logs))

    trainer = Trainer(model=tiny_bert_qa(), args=_args(tmp_path, max_steps=4, logging_steps=2),
                      train_dataset=QADataset(32), callbacks=[Reporter()])
    add_pruning_callback(trainer, PruningConfig(target_sparsity=0.5, start_step=1, end_step=2, frequency=1))
    trainer.train()
    assert [entry["sparsity"] for entry in Reporter.seen if "loss" in entry] == [0.5, 0.5]


def test_fp16_scaled_gradients_are_unscaled_before_scoring():
    from types import SimpleNamespace

    from hf_prune.callback import _unscale_gradients

    layer = torch.nn.Linear(4, 4)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(layer(torch.ones(1, 4)).sum()).backward()
    assert torch.allclose(layer.weight.grad, torch.full((4, 4), 1024.0))
    wrapped = SimpleNamespace(scaler=scaler, optimizer=optimizer)  # the shape of accelerate's AcceleratedOptimizer
    _unscale_gradients(wrapped)
    assert torch.allclose(layer.weight.grad, torch.ones(4, 4))
    _unscale_gradients(wrapped)  # already unscaled this step (as after gradient clipping): left alone
    assert torch.allclose(layer.weight.grad, torch.ones(4, 4))
    scaler.step(optimizer)  # the optimizer step still works on the unscaled gradients


# issue 25: the saved model is what the report says ------------------------------------------------------------
def test_a_nan_weight_stops_training_naming_the_step_and_layer_and_masked_entries_stay_zero(tmp_path):
    config = PruningConfig(target_sparsity=0.5, pattern="4x1", start_step=1, end_step=4, frequency=1)
    callback = PruningTrainerCallback(config)
    layer = "bert.encoder.layer.0.intermediate.dense"

    class Poison(PruningTrainerCallback.__mro__[1]):  # a plain TrainerCallback, run before the optimizer step
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step == 5:
                with torch.no_grad():
                    model.get_submodule(layer).weight.fill_(float("nan"))

    model = tiny_bert_qa(seed=3)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=8), train_dataset=QADataset(64),
                      callbacks=[callback, Poison()])
    with pytest.raises(ValueError, match=rf"step 6: pruned layer\(s\) \['{layer}'\] hold NaN"):
        trainer.train()
    weight, mask = model.get_submodule(layer).weight, callback.pruner.masks[layer]
    assert torch.all(weight[~mask] == 0) and torch.isnan(weight[mask]).all()


def test_an_explicit_include_prunes_a_task_head(tmp_path):
    config = PruningConfig(target_sparsity=0.5, pattern="1x1", start_step=1, end_step=4, frequency=1,
                           scope="local", include=[r"qa_outputs", r"intermediate\.dense"])
    trainer, callback = _train(tmp_path, config, max_steps=6)
    assert "qa_outputs" in callback.pruner.masks
    head = trainer.model.qa_outputs.weight
    assert float((head == 0).float().mean()) == pytest.approx(0.5, abs=0.05)


def test_a_tied_weight_is_refused_not_pruned_with_its_twin():
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_prune.pruner import Pruner

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with pytest.raises(ValueError, match=r"lm_head.weight shares its storage with \['model.embed_tokens.weight'\]"):
        Pruner(model, PruningConfig(target_sparsity=0.5, pattern="1x1", end_step=4, include=["lm_head"]))


def test_stopping_before_the_target_is_logged_and_reported(tmp_path, caplog):
    config = PruningConfig(target_sparsity=0.8, pattern="4x1", start_step=1, end_step=20, frequency=2)
    trainer, callback = _train(tmp_path, config, max_steps=24)
    assert callback.pruner.target_not_reached is None
    model = tiny_bert_qa(seed=3)
    callback = PruningTrainerCallback(config)

    class StopEarly(PruningTrainerCallback.__mro__[1]):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 6

    Trainer(model=model, args=_args(tmp_path, max_steps=24), train_dataset=QADataset(64),
            callbacks=[callback, StopEarly()]).train()
    reached = callback.pruner.sparsity()
    assert reached < 0.8 and "before group(s) ['default'] reached their target at step 20" in caplog.text
    report = callback.pruner.sparsity_report().to_dict()
    assert report["target_reached"] is False and f"sparsity {reached:.4f} of the target 0.8" in report["target_not_reached"]


@pytest.mark.parametrize("second_steps", [10, 20])
def test_a_callback_reused_on_the_model_it_pruned_keeps_its_masks(tmp_path, second_steps):
    config = PruningConfig(target_sparsity=0.8, pattern="4x1", start_step=2, end_step=15, frequency=1)
    trainer, callback = _train(tmp_path, config, max_steps=16)
    masks = {name: mask.clone() for name, mask in callback.pruner.masks.items()}
    reached = callback.pruner.sparsity()
    second = Trainer(model=trainer.model, args=_args(tmp_path / "again", max_steps=second_steps),
                     train_dataset=QADataset(96), callbacks=[callback])
    second.train()
    logged = [entry["sparsity"] for entry in second.state.log_history if "sparsity" in entry]
    assert logged and all(value == pytest.approx(reached, abs=1e-4) for value in logged)   # never falls
    assert all(torch.equal(masks[name], mask) for name, mask in callback.pruner.masks.items())
    _assert_masked_zero(second.model, callback.pruner)
    assert callback.pruner.target_not_reached is None


def test_a_callback_reused_before_its_schedule_finished_is_refused_with_true_advice(tmp_path):
    config = PruningConfig(target_sparsity=0.8, pattern="4x1", start_step=2, end_step=30, frequency=2)
    trainer, callback = _train(tmp_path, config, max_steps=32)
    callback.pruner.last_event_step = 10  # as if the first run had stopped early, at step 10
    second = Trainer(model=trainer.model, args=_args(tmp_path / "again", max_steps=10), train_dataset=QADataset(96),
                     callbacks=[callback])
    with pytest.raises(ValueError, match=r"already pruned this model \(last event at step 10.*reaches the target at "
                                         r"step 30.*resume_from_checkpoint.*pattern='lock'"):
        second.train()
