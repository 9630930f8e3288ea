import pytest
import torch
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          BertForSequenceClassification, TrainingArguments)

from hf_prune import PruningConfig, PruningTrainerCallback
from hf_prune.distillation import DistillationConfig, DistillationTrainer, SimKDHead
from hf_prune.distillation.trainer import SIMKD_STATE_NAME
from tests.conftest import QADataset, tiny_bert_config, tiny_bert_qa


class ClassificationDataset(torch.utils.data.Dataset):
    def __init__(self, size=48, seq_len=16):
        generator = torch.Generator().manual_seed(1)
        self.ids = torch.randint(5, 96, (size, seq_len), generator=generator)
        self.labels = (self.ids[:, 0] > 50).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def _args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=5e-3, max_steps=6,
                  logging_steps=2, save_strategy="no", report_to=[], use_cpu=True, seed=5, disable_tqdm=True)
    values.update(overrides)
    return TrainingArguments(**values)


def _trainer(tmp_path, student, teacher, method="logits", callbacks=None, dataset=None, **overrides):
    config = DistillationConfig(method=method, temperature=2.0, hard_label_weight=0.5)
    return DistillationTrainer(model=student, teacher_model=teacher, distillation_config=config,
                               args=_args(tmp_path, **overrides), train_dataset=dataset or QADataset(48),
                               callbacks=callbacks)


@pytest.mark.parametrize("method", ["logits", "reused_classifier"])
def test_teacher_frozen_student_and_projector_learn(tmp_path, method):
    student, teacher = tiny_bert_qa(seed=1), tiny_bert_qa(seed=2, hidden_size=64, intermediate_size=128)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = _trainer(tmp_path, student, teacher, method=method)
    grads_seen = {}

    def record(module, grad_input, grad_output):
        grads_seen["student"] = True

    student.bert.encoder.layer[0].output.dense.register_full_backward_hook(record)
    before = student.bert.encoder.layer[0].output.dense.weight.clone()
    trainer.train()
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_before.items())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not torch.equal(before, student.bert.encoder.layer[0].output.dense.weight)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    if method == "reused_classifier":
        head = student.qa_outputs
        assert isinstance(head, SimKDHead) and id(head.projector.weight) in optimized
        assert id(head.head.weight) not in optimized
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    expected_terms = {"loss_kd", "loss_hard"} | ({"loss_feature"} if method == "reused_classifier" else set())
    assert expected_terms <= set(logged[-1])


@pytest.mark.parametrize("student_hidden,teacher_hidden", [(32, 32), (32, 64)])
def test_fold_saves_a_plain_model_with_equal_logits(tmp_path, student_hidden, teacher_hidden):
    student = tiny_bert_qa(seed=1, hidden_size=student_hidden)
    teacher = tiny_bert_qa(seed=2, hidden_size=teacher_hidden, intermediate_size=2 * teacher_hidden)
    trainer = _trainer(tmp_path, student, teacher, method="reused_classifier", max_steps=3)
    trainer.train()
    with torch.no_grad():
        torch.nn.init.normal_(student.qa_outputs.projector.weight)  # a non-trivial projector
    trainer.save_model(str(tmp_path / "final"))
    assert isinstance(student.qa_outputs, SimKDHead)  # training state is untouched by saving
    reloaded = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "final")).eval()
    student.eval()
    batch = QADataset(4).items
    ids = torch.stack([b["input_ids"] for b in batch])
    with torch.no_grad():
        expected, got = student(input_ids=ids), reloaded(input_ids=ids)
    torch.testing.assert_close(got.start_logits, expected.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.end_logits, expected.end_logits, atol=1e-5, rtol=0)


def test_sequence_classification_fold(tmp_path):
    torch.manual_seed(0)
    student = BertForSequenceClassification(tiny_bert_config(num_labels=3))
    teacher = BertForSequenceClassification(tiny_bert_config(num_labels=3, hidden_size=64, intermediate_size=128))
    dataset = ClassificationDataset()
    dataset.labels = dataset.labels % 3
    trainer = _trainer(tmp_path, student, teacher, method="reused_classifier", dataset=dataset, max_steps=3)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "final")).eval()
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=dataset.ids[:4]).logits, student(input_ids=dataset.ids[:4]).logits,
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("bf16", [False, True])
def test_with_pruning_callback_student_sparse_teacher_dense(tmp_path, bf16):
    student, teacher = tiny_bert_qa(seed=1), tiny_bert_qa(seed=2)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    callback = PruningTrainerCallback(PruningConfig(target_sparsity=0.5, start_step=1, end_step=4, frequency=1))
    trainer = _trainer(tmp_path, student, teacher, method="reused_classifier", callbacks=[callback], bf16=bf16,
                       gradient_accumulation_steps=2)
    trainer.train()
    assert callback.pruner.sparsity() == pytest.approx(0.5, abs=0.01)
    assert not any(name.startswith("qa_outputs") for name in callback.pruner.masks)
    assert callback.pruner.sparsity_report().pruned_sparsity == pytest.approx(0.5, abs=0.01)  # zeros in the student
    assert all((teacher.get_submodule(name).weight == 0).sum() == 0 for name in callback.pruner.masks)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_before.items())
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(loss)) for loss in losses)


def test_resume_restores_unfolded_head_exactly(tmp_path):
    def run(resume=None):
        student, teacher = tiny_bert_qa(seed=1), tiny_bert_qa(seed=2, hidden_size=64, intermediate_size=128)
        trainer = _trainer(tmp_path / "run", student, teacher, method="reused_classifier", max_steps=8,
                           save_strategy="steps", save_steps=4)
        trainer.train(resume_from_checkpoint=resume)
        return student

    full = run()
    assert (tmp_path / "run" / "checkpoint-4" / SIMKD_STATE_NAME).is_file()
    resumed = run(resume=str(tmp_path / "run" / "checkpoint-4"))
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-6, rtol=0)


def test_refusals():
    student = tiny_bert_qa()
    with pytest.raises(ValueError, match=r"vocab sizes 200 \(teacher\) and 96 \(student\) differ"):
        DistillationTrainer(model=student, teacher_model=tiny_bert_qa(vocab_size=200), args=_args("/tmp/x"))
    with pytest.raises(ValueError, match="must be a \\*ForQuestionAnswering model"):
        DistillationTrainer(model=student, teacher_model=BertForSequenceClassification(tiny_bert_config()),
                            args=_args("/tmp/x"))
    with pytest.raises(ValueError, match=r"task heads differ: 2 \(teacher\) vs 3 \(student\)"):
        DistillationTrainer(model=BertForSequenceClassification(tiny_bert_config(num_labels=3)),
                            teacher_model=BertForSequenceClassification(tiny_bert_config(num_labels=2)),
                            args=_args("/tmp/x"))
    base = tiny_bert_qa()
    base.config.architectures = ["BertForMaskedLM"]
    with pytest.raises(ValueError, match="not a fine-tuned \\*ForQuestionAnswering model"):
        DistillationTrainer(model=tiny_bert_qa(), teacher_model=base, args=_args("/tmp/x"))
    with pytest.raises(ValueError, match="supports \\*ForQuestionAnswering"):
        DistillationTrainer(model=torch.nn.Linear(2, 2), teacher_model=tiny_bert_qa(), args=_args("/tmp/x"))


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """Two micro-batches of 4 accumulate to the same update as one batch of 8 (loss is a per-batch mean)."""
    def first_update(batch_size, accumulation):
        dataset = ClassificationDataset(size=8)
        torch.manual_seed(0)
        student = BertForSequenceClassification(tiny_bert_config(num_labels=2, hidden_dropout_prob=0.0,
                                                                 attention_probs_dropout_prob=0.0))
        teacher = BertForSequenceClassification(tiny_bert_config(num_labels=2))
        before = student.classifier.weight.clone()
        trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                      distillation_config=DistillationConfig(hard_label_weight=1.0),
                                      args=_args(tmp_path, max_steps=1, per_device_train_batch_size=batch_size,
                                                 gradient_accumulation_steps=accumulation, optim="sgd",
                                                 learning_rate=1.0, max_grad_norm=0.0),
                                      train_dataset=dataset)
        trainer.train()
        return student.classifier.weight - before

    torch.testing.assert_close(first_update(4, 2), first_update(8, 1), atol=1e-5, rtol=1e-4)
