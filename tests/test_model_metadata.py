"""The ``pruning`` section of config.json: every save path carries the pruning config and the measured sparsity,
``PruningConfig.from_pretrained`` and pattern ``lock`` read it back, and it is refused when it does not fit."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForQuestionAnswering, Trainer

from hf_prune import Pruner, PruningConfig, PruningTrainerCallback
from hf_prune.model_metadata import read_pruning_section
from tests.conftest import QADataset, tiny_bert_qa
from tests.test_callback import _args


def _zeros_of(folder, names):
    weights = load_file(str(folder / "model.safetensors"))
    tensors = [weights[f"{name}.weight"] for name in names]
    return sum(int((t == 0).sum()) for t in tensors) / sum(t.numel() for t in tensors)


def _train(tmp_path, **overrides):
    config = PruningConfig(target_sparsity=0.5, pattern="4x1", start_step=2, end_step=8, frequency=2)
    callback = PruningTrainerCallback(config)
    trainer = Trainer(model=tiny_bert_qa(seed=3), args=_args(tmp_path / "out", max_steps=10, **overrides),
                      train_dataset=QADataset(64), callbacks=[callback])
    trainer.train()
    return trainer, callback


def test_save_model_elsewhere_and_save_pretrained_carry_the_config_and_the_measured_sparsity(tmp_path):
    trainer, callback = _train(tmp_path)
    trainer.save_model(str(tmp_path / "elsewhere"))
    trainer.model.save_pretrained(tmp_path / "plain")
    for folder in (tmp_path / "elsewhere", tmp_path / "plain"):
        assert not (folder / "pruning_config.json").exists()  # nothing but the model's own files
        section = json.loads((folder / "config.json").read_text())["pruning"]
        names = section["layers"]["4x1"]
        assert sorted(names) == sorted(callback.pruner.masks)
        assert section["sparsity_pruned_layers"] == pytest.approx(_zeros_of(folder, names), abs=1e-6)
        assert section["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
        assert PruningConfig.from_pretrained(str(folder)) == callback.pruner.config


def test_a_mid_schedule_checkpoint_states_its_own_sparsity(tmp_path):
    _train(tmp_path, save_strategy="steps", save_steps=4)
    checkpoint = tmp_path / "out" / "checkpoint-4"
    section = json.loads((checkpoint / "config.json").read_text())["pruning"]
    measured = _zeros_of(checkpoint, section["layers"]["4x1"])
    assert 0 < measured < 0.45 and section["sparsity_pruned_layers"] == pytest.approx(measured, abs=1e-6)


def test_lock_keeps_the_recorded_layers_and_refuses_weights_the_config_does_not_describe(tmp_path):
    config = PruningConfig(target_sparsity=0.5, pattern="4x1", criterion="magnitude", start_step=0, end_step=0,
                           include=["attention"])  # only the attention layers are pruned
    trainer_model = tiny_bert_qa(seed=3)
    callback = PruningTrainerCallback(config)
    Trainer(model=trainer_model, args=_args(tmp_path / "out", max_steps=2), train_dataset=QADataset(16),
            callbacks=[callback]).train()
    trainer_model.save_pretrained(tmp_path / "sparse")
    model = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "sparse"))
    locked = Pruner(model, PruningConfig(pattern="lock"))
    assert sorted(locked.masks) == sorted(callback.pruner.masks)   # the recorded layers, not every Linear
    # the pruned model's config.json over dense weights: refused, the weights are not the ones it describes
    dense = tiny_bert_qa(seed=3)
    dense.config.pruning = model.config.pruning
    with torch.no_grad():
        dense.bert.encoder.layer[0].attention.self.query.weight[0, :4] = 0  # some zeros, far from 0.5
    with pytest.raises(ValueError, match=r"config records sparsity 0\.50.*but the loaded weights hold 0\.0"):
        Pruner(dense, PruningConfig(pattern="lock"))


def test_a_section_hf_prune_did_not_write_is_refused_naming_the_file(tmp_path):
    model = tiny_bert_qa()
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["pruning"] = {"hf_prune_format": 99, "config": {}, "layers": {}}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config\.json: its 'pruning' section is not one hf_prune \(format 1\) wrote"):
        read_pruning_section(str(tmp_path))
    data["pruning"] = {"hf_prune_format": 1, "config": {"targt_sparsity": 0.5}, "layers": {}}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config\.json 'pruning': unknown pruning config key\(s\) \['targt_sparsity'\]"):
        PruningConfig.from_pretrained(str(tmp_path))


def test_slim_measures_the_section_again_on_the_smaller_layers(tmp_path):
    from hf_prune import slim

    model = tiny_bert_qa(seed=3, intermediate_size=64)
    config = PruningConfig(target_sparsity=0.5, pattern="channel", criterion="magnitude", start_step=0, end_step=0,
                           include=[r"intermediate\.dense", r"layer\.\d+\.output\.dense"])
    Trainer(model=model, args=_args(tmp_path / "out", max_steps=1), train_dataset=QADataset(8),
            callbacks=[PruningTrainerCallback(config)]).train()
    assert model.config.pruning["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
    summary = slim(model)
    section = model.config.pruning
    assert section["sparsity_pruned_layers"] == 0.0   # the zero channels are gone, not counted as zeros
    assert section["slimmed"] == {"parameters_before": summary.parameters_before,
                                  "parameters_after": summary.parameters_after}
