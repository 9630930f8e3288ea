"""``DistillationTrainer``: a ``Trainer`` whose training loss mixes the student's task loss with knowledge from a
frozen teacher. It overrides ``compute_loss``, what saving, resuming and ``load_best_model_at_end`` need (folding
the SimKD head), and ``log`` (to report the loss terms); nothing else. Evaluation is the stock Trainer's:
``eval_loss`` is the task loss, so best-model selection means what it means without distillation."""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch
from torch import nn
from transformers import Trainer

from .config import DistillationConfig
from .losses import feature_mse, kd_loss
from .simkd import SimKDHead, find_task_head, folded_head, install_simkd_head

__all__ = ["DistillationTrainer", "SIMKD_STATE_NAME"]

SIMKD_STATE_NAME = "simkd_head.safetensors"
TASK_SUFFIXES = ("ForQuestionAnswering", "ForSequenceClassification")


def _task_suffix(model: nn.Module) -> Optional[str]:
    return next((suffix for suffix in TASK_SUFFIXES if type(model).__name__.endswith(suffix)), None)


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse, before training, a teacher the student cannot learn from."""
    task = _task_suffix(student)
    if task is None:
        raise ValueError(f"DistillationTrainer supports *ForQuestionAnswering and *ForSequenceClassification "
                         f"students, got {type(student).__name__}")
    if _task_suffix(teacher) != task:
        raise ValueError(f"the teacher must be a *{task} model like the student, got {type(teacher).__name__}")
    architectures = getattr(teacher.config, "architectures", None)
    if architectures and not any(arch.endswith(task) for arch in architectures):
        raise ValueError(f"the teacher checkpoint was saved as {architectures}, not a fine-tuned *{task} model: "
                         "its task head would be random; fine-tune the teacher first")
    student_vocab, teacher_vocab = student.config.vocab_size, teacher.config.vocab_size
    if student_vocab != teacher_vocab:
        raise ValueError(f"teacher and student must share a tokenizer: vocab sizes {teacher_vocab} (teacher) and "
                         f"{student_vocab} (student) differ")
    student_out = student.get_submodule(find_task_head(student)).out_features
    teacher_out = teacher.get_submodule(find_task_head(teacher)).out_features
    if student_out != teacher_out:
        raise ValueError(f"teacher and student task heads differ: {teacher_out} (teacher) vs {student_out} (student) "
                         "outputs (number of labels)")


class DistillationTrainer(Trainer):
    """``Trainer(model=student, teacher_model=teacher, distillation_config=..., ...)``.

    The teacher is frozen (eval mode, no gradients), kept outside the student so it is never optimized nor
    saved, moved to the student's device and run under the same autocast. With ``reused_classifier`` the
    student's head becomes projector + teacher head during training and is folded back into a plain head
    in every saved model and checkpoint; checkpoints also hold the unfolded head for exact resumption.
    """

    # compute_loss returns a per-batch mean: the Trainer must divide it by the accumulation steps itself
    loss_is_scaled_for_ga = False

    def __init__(self, *args, teacher_model: nn.Module, distillation_config: Optional[DistillationConfig] = None,
                 **kwargs) -> None:
        config = distillation_config or DistillationConfig()
        if isinstance(config, dict):
            config = DistillationConfig.from_dict(config)
        student = kwargs.get("model") if "model" in kwargs else (args[0] if args else None)
        if student is None:
            raise ValueError("DistillationTrainer needs the student as model=")
        check_teacher(student, teacher_model)
        self.distillation_config = config
        self.teacher = teacher_model.eval().requires_grad_(False)
        self.simkd_head: Optional[SimKDHead] = None
        if config.method == "reused_classifier":
            self.simkd_head = install_simkd_head(student, teacher_model)
        teacher_head = teacher_model.get_submodule(find_task_head(teacher_model))
        self._teacher_features: Optional[torch.Tensor] = None
        teacher_head.register_forward_hook(self._capture_teacher_features)
        self._loss_sums: Dict[str, torch.Tensor] = {}
        self._loss_count = 0
        super().__init__(*args, **kwargs)

    def _capture_teacher_features(self, module, inputs, output) -> None:
        self._teacher_features = inputs[0]

    # ---- loss ------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation and prediction: the task loss, exactly as the stock Trainer has it
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        config = self.distillation_config
        labels = inputs.get("labels") if self.label_smoother is not None or self.compute_loss_func is not None else None
        outputs = model(**{key: value for key, value in inputs.items() if labels is None or key != "labels"})
        device = next(model.parameters()).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        teacher_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "start_positions", "end_positions")}
        with torch.no_grad(), self.accelerator.autocast():
            teacher_outputs = self.teacher(**teacher_inputs)
        mask = inputs.get("attention_mask")
        terms: Dict[str, torch.Tensor] = {}
        if config.distill_loss_weight > 0:
            terms["loss_kd"] = self._kd(outputs, teacher_outputs, mask)
        if config.hard_label_weight > 0:
            terms["loss_hard"] = self._task_loss(model, outputs, labels)
        if self.simkd_head is not None and config.feature_weight > 0:
            token_mask = mask if self.simkd_head.projected.dim() == 3 else None
            terms["loss_feature"] = feature_mse(self.simkd_head.projected, self._teacher_features, token_mask)
        weights = {"loss_kd": config.distill_loss_weight, "loss_hard": config.hard_label_weight,
                   "loss_feature": config.feature_weight}
        loss = sum(weights[name] * value for name, value in terms.items())
        if model.training:
            for name, value in terms.items():
                self._loss_sums[name] = self._loss_sums.get(name, 0.0) + value.detach().float()
            self._loss_count += 1
        return (loss, outputs) if return_outputs else loss

    def _task_loss(self, model, outputs, labels) -> torch.Tensor:
        """The student's own loss as the stock Trainer computes it: ``compute_loss_func`` when given, label
        smoothing (``label_smoothing_factor``) when set, else the model's loss. A per-batch mean, like the KD terms
        (``loss_is_scaled_for_ga`` is False, so the Trainer divides by the accumulation steps)."""
        if self.compute_loss_func is not None:
            return self.compute_loss_func(outputs, labels, num_items_in_batch=None)
        if labels is not None:
            name = self.accelerator.unwrap_model(model)._get_name()
            return self.label_smoother(outputs, labels, shift_labels=name.endswith("ForCausalLM"))
        if getattr(outputs, "loss", None) is None:
            raise ValueError("hard_label_weight > 0 needs labels (start/end positions or labels) in the batch")
        return outputs.loss

    def _kd(self, outputs, teacher_outputs, mask) -> torch.Tensor:
        temperature = self.distillation_config.temperature
        if getattr(outputs, "start_logits", None) is not None:
            return 0.5 * (kd_loss(outputs.start_logits, teacher_outputs.start_logits, temperature, mask)
                          + kd_loss(outputs.end_logits, teacher_outputs.end_logits, temperature, mask))
        return kd_loss(outputs.logits, teacher_outputs.logits, temperature)

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        """Training logs also carry the mean of each loss term since the last log."""
        if "loss" in logs and self._loss_count:
            for name, total in self._loss_sums.items():
                logs[name] = round(float(total) / self._loss_count, 4)
            self._loss_sums, self._loss_count = {}, 0
        super().log(logs, start_time)

    # ---- saving and resuming ------------------------------------------------------------------------------
    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Save a plain model (SimKD head folded); checkpoints also keep the unfolded head."""
        output_dir = output_dir or self.args.output_dir
        with folded_head(self.model):
            super().save_model(output_dir, _internal_call)
        if self.simkd_head is not None and _internal_call and self.args.should_save:
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous().cpu() for k, v in self.simkd_head.state_dict().items()}
            save_file(state, os.path.join(output_dir, SIMKD_STATE_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[nn.Module] = None) -> None:
        target = self.model if model is None else model
        with folded_head(target):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_simkd_head(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the checkpoint holds a folded head; load the body through the folded head
        and the projector and head from the checkpoint's unfolded copy, so the model is the best one whole."""
        with folded_head(self.model):
            super()._load_best_model()
        self._load_simkd_head(self.state.best_model_checkpoint)

    def _load_simkd_head(self, checkpoint: str) -> None:
        if self.simkd_head is None:
            return
        path = os.path.join(checkpoint, SIMKD_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"loading a reused_classifier checkpoint needs {SIMKD_STATE_NAME} in {checkpoint}")
        from safetensors.torch import load_file

        self.simkd_head.load_state_dict(load_file(path, device=str(self.simkd_head.head.weight.device)))
