"""Layer-wise distillation: layer maps, the losses against hand computation, and DistillationTrainer with hidden
states and attention maps (narrower, shallower and slim students; the saved student stays a plain model)."""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForQuestionAnswering

from hf_prune import Pruner, PruningConfig, PruningTrainerCallback, slim
from hf_prune.distillation import (DistillationConfig, DistillationTrainer, attention_kl, channel_mse, cosine_distance,
                                   feature_mse, uniform_layer_map)
from hf_prune.distillation.layerwise import PROJECTIONS_ATTRIBUTE, hidden_state_loss, resolve_layer_map
from hf_prune.distillation.trainer import PROJECTIONS_STATE_NAME
from tests.conftest import QADataset, tiny_bert_qa
from tests.distillation.test_trainer import _args


def test_uniform_layer_map_and_checks():
    assert uniform_layer_map(4, 12) == [(1, 3), (2, 6), (3, 9), (4, 12)]
    assert uniform_layer_map(6, 6) == [(i, i) for i in range(1, 7)]
    assert resolve_layer_map([[0, 0], [2, 4]], 2, 4) == [(0, 0), (2, 4)]
    with pytest.raises(ValueError, match=r"pair \[3, 4\] is out of range: the student has hidden states 0-2"):
        resolve_layer_map([[3, 4]], 2, 4)
    with pytest.raises(ValueError, match="integer pairs"):
        DistillationConfig(hidden_state_weight=1.0, layer_map=[[1, 2, 3]])
    with pytest.raises(ValueError, match="unknown hidden_state_loss 'l1'; allowed: mse, channel_mse, cosine"):
        DistillationConfig(hidden_state_loss="l1")
    with pytest.raises(ValueError, match="hidden_state_weight must be >= 0"):
        DistillationConfig(hidden_state_weight=-1)


def test_losses_against_hand_computation():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 4, generator=generator), torch.randn(2, 3, 4, generator=generator)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    real = [(0, 0), (0, 1), (1, 0)]
    mse = sum(((student[b, t] - teacher[b, t]) ** 2).sum() for b, t in real) / (len(real) * 4)
    assert hidden_state_loss([student], [teacher], [(0, 0)], mask, "mse").item() == pytest.approx(mse.item(), rel=1e-6)
    cosine = sum(1 - torch.dot(student[b, t], teacher[b, t]) / (student[b, t].norm() * teacher[b, t].norm())
                 for b, t in real) / len(real)
    assert cosine_distance(student, teacher, mask).item() == pytest.approx(cosine.item(), rel=1e-5)
    scale = sum(teacher[b, t] ** 2 for b, t in real) / len(real)        # the teacher's per-channel mean square
    channel = sum(((student[b, t] - teacher[b, t]) ** 2 / scale).sum() for b, t in real) / (len(real) * 4)
    assert hidden_state_loss([student], [teacher], [(0, 0)], mask, "channel_mse").item() == pytest.approx(
        channel.item(), rel=1e-5)
    loud = torch.tensor([1000.0, 1.0, 1.0, 1.0])                           # one massive channel in both
    assert channel_mse(student * loud, teacher * loud, mask).item() == pytest.approx(channel.item(), rel=1e-5)
    assert feature_mse(student * loud, teacher * loud, mask).item() > 1000 * mse.item()
    # attention: [batch, heads, queries, keys]; heads averaged first, then KL per real query
    s_att = torch.softmax(torch.randn(2, 2, 3, 3, generator=generator), -1)
    t_att = torch.softmax(torch.randn(2, 4, 3, 3, generator=generator), -1)   # the teacher has more heads
    s_mean, t_mean = s_att.mean(1), t_att.mean(1)
    kl = sum((t_mean[b, q] * (t_mean[b, q].log() - s_mean[b, q].log())).sum() for b, q in real) / len(real)
    assert attention_kl(s_att, t_att, mask).item() == pytest.approx(kl.item(), rel=1e-4)


def _layerwise_trainer(tmp_path, student, teacher, callbacks=None, **config_and_args):
    config_keys = {"hidden_state_weight", "hidden_state_loss", "layer_map", "attention_weight", "method"}
    config = DistillationConfig(temperature=2.0, hard_label_weight=0.5,
                                **{k: v for k, v in config_and_args.items() if k in config_keys})
    args = {k: v for k, v in config_and_args.items() if k not in config_keys}
    return DistillationTrainer(model=student, teacher_model=teacher, distillation_config=config,
                               args=_args(tmp_path, **args), train_dataset=QADataset(48), callbacks=callbacks)


def test_narrower_shallower_student_learns_through_projections_dropped_at_save(tmp_path):
    student = tiny_bert_qa(seed=1)                                                   # 2 layers, width 32
    teacher = tiny_bert_qa(seed=2, hidden_size=64, intermediate_size=128, num_hidden_layers=4)
    teacher_calls = []
    teacher.register_forward_hook(lambda *unused: teacher_calls.append(1))
    trainer = _layerwise_trainer(tmp_path, student, teacher, hidden_state_weight=1.0, save_strategy="steps",
                                 save_steps=6)
    assert trainer.layer_map == [(1, 2), (2, 4)]
    projections = getattr(student, PROJECTIONS_ATTRIBUTE)
    before = projections.layers["1"].weight.clone()
    trainer.train()
    assert len(teacher_calls) == 6                                                   # one teacher forward per batch
    assert not torch.equal(before, projections.layers["1"].weight)                   # the projections learn
    logged = [entry for entry in trainer.state.log_history if "loss_hidden" in entry]
    assert logged and all(entry["loss_hidden"] > 0 for entry in logged)
    trainer.save_model()
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not any(PROJECTIONS_ATTRIBUTE in key for key in saved)
    reloaded = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path))          # a plain model, no leftovers
    batch = QADataset(4, seed=3)[0]
    with torch.no_grad():
        student.eval()
        expected = student(input_ids=batch["input_ids"][None]).start_logits
        torch.testing.assert_close(reloaded(input_ids=batch["input_ids"][None]).start_logits, expected)
    assert (tmp_path / "checkpoint-6" / PROJECTIONS_STATE_NAME).is_file()            # kept for exact resumption


def test_resume_restores_the_projections_exactly(tmp_path):
    def run(resume=None):
        student = tiny_bert_qa(seed=1)
        teacher = tiny_bert_qa(seed=2, hidden_size=64, intermediate_size=128)
        trainer = _layerwise_trainer(tmp_path / "run", student, teacher, hidden_state_weight=1.0, max_steps=8,
                                     save_strategy="steps", save_steps=4)
        trainer.train(resume_from_checkpoint=resume)
        return student

    full = run()
    resumed = run(resume=str(tmp_path / "run" / "checkpoint-4"))
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-6, rtol=0)


def test_same_student_and_teacher_start_at_zero_hidden_loss_without_projections(tmp_path):
    teacher = tiny_bert_qa(seed=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student = copy.deepcopy(teacher)
    trainer = _layerwise_trainer(tmp_path, student, teacher, hidden_state_weight=1.0, hidden_state_loss="cosine",
                                 max_steps=1, logging_steps=1, learning_rate=0.0)
    assert trainer.projections is None and not hasattr(student, PROJECTIONS_ATTRIBUTE)
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "loss_hidden" in e)
    assert entry["loss_hidden"] == pytest.approx(0.0, abs=1e-5)


def test_attention_maps_of_a_slim_student_switch_to_eager(tmp_path, caplog):
    teacher = tiny_bert_qa(seed=2)
    student = copy.deepcopy(teacher)
    pruner = Pruner(student, PruningConfig(target_sparsity=0.5, pattern="head", scope="local", start_step=0,
                                           end_step=0, frequency=1, criterion="magnitude"))
    pruner.step(0)
    slim(student)                                                                    # 2 of 4 heads left per layer
    assert student.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    trainer = _layerwise_trainer(tmp_path, student, teacher, attention_weight=1.0, hidden_state_weight=1.0)
    assert student.config._attn_implementation == "eager" == teacher.config._attn_implementation
    assert "switched from 'sdpa' to 'eager'" in caplog.text
    trainer.train()
    entries = [e for e in trainer.state.log_history if "loss_attention" in e]
    assert entries and all(e["loss_attention"] > 0 and e["loss_hidden"] >= 0 for e in entries)


def test_pruning_a_narrower_student_leaves_projections_out_of_masks_and_report(tmp_path):
    student = tiny_bert_qa(seed=1)
    teacher = tiny_bert_qa(seed=2, hidden_size=64, intermediate_size=128)
    callback = PruningTrainerCallback(PruningConfig(target_sparsity=0.5, start_step=1, end_step=4, frequency=1))
    trainer = _layerwise_trainer(tmp_path, student, teacher, callbacks=[callback], hidden_state_weight=1.0)
    trainer.train()
    assert not any(PROJECTIONS_ATTRIBUTE in name for name in callback.pruner.masks)
    report = json.loads((tmp_path / "sparsity_report.json").read_text())
    assert not any(PROJECTIONS_ATTRIBUTE in row["name"] for row in report["layers"])
    assert report["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
