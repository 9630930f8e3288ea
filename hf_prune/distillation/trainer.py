"""``DistillationTrainer``: a ``Trainer`` whose training loss mixes the student's task loss with knowledge from a
frozen teacher. It overrides ``compute_loss``, what saving, resuming and ``load_best_model_at_end`` need (folding
the SimKD head), and ``log`` (to report the loss terms); nothing else. Evaluation is the stock Trainer's:
``eval_loss`` is the task loss, so best-model selection means what it means without distillation."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import torch
from torch import nn
from transformers import Trainer

from .config import DistillationConfig
from .layerwise import HiddenStateProjections, attention_loss, hidden_state_loss, install_projections, resolve_layer_map
from .losses import feature_mse, kd_loss
from .saved_form import saved_form
from .simkd import SimKDHead, find_task_head, install_simkd_head
from ..sharding import is_dtensor, is_zero3
from ..value_checks import short
from .teacher import check_teacher, check_tokenizers, forward_parameters, is_language_model, split_inputs
from .token_kd import every_token_labels, token_kd_loss

logger = logging.getLogger(__name__)

#: Whether this transformers' Trainer reads ``loss_is_scaled_for_ga`` (older 5.x releases decide by themselves).
TRAINER_READS_LOSS_SCALING = "loss_is_scaled_for_ga" in vars(Trainer)

__all__ = ["DistillationTrainer", "distillation_trainer_class", "SIMKD_STATE_NAME", "PROJECTIONS_STATE_NAME"]

SIMKD_STATE_NAME = "simkd_head.safetensors"
PROJECTIONS_STATE_NAME = "hidden_projections.safetensors"
class DistillationTrainer(Trainer):
    """``Trainer(model=student, teacher_model=teacher, distillation_config=..., ...)``.

    The teacher is frozen (eval mode, no gradients), kept outside the student so it is never optimized nor
    saved, moved to the student's device and run under the same autocast, once per batch (its logits, hidden
    states and attention maps all come from that one forward). With ``reused_classifier`` the student's head
    becomes projector + teacher head during training and is folded back into a plain head in every saved model
    and checkpoint; a narrower student's hidden-state projections are left out of every saved model.
    Checkpoints also hold those training-only modules (unfolded head, projections) for exact resumption.
    """

    # compute_loss returns a per-batch mean: the Trainer must divide it by the accumulation steps itself
    loss_is_scaled_for_ga = False

    def __init__(self, *args, teacher_model: nn.Module, distillation_config: Optional[DistillationConfig] = None,
                 teacher_processing_class: Any = None, **kwargs) -> None:
        config = distillation_config or DistillationConfig()
        if isinstance(config, dict):
            config = DistillationConfig.from_dict(config)
        student = kwargs.get("model") if "model" in kwargs else (args[0] if args else None)
        if student is None:
            raise ValueError("DistillationTrainer needs the student as model=")
        check_teacher(student, teacher_model)
        check_tokenizers(kwargs.get("processing_class"), teacher_processing_class)
        self._student_parameters = forward_parameters(student)
        self._teacher_parameters = forward_parameters(teacher_model)
        self.distillation_config = config
        self.teacher = teacher_model.eval().requires_grad_(False)
        self.language_model = is_language_model(student)
        if self.language_model and config.method == "reused_classifier":
            raise ValueError("method 'reused_classifier' (SimKD) reuses a classifier head; a language model's head "
                             "is its vocabulary projection: use method 'logits' (token-level KD)")
        if self.language_model and getattr(student.config, "is_encoder_decoder", False) and (
                config.hidden_state_weight > 0 or config.attention_weight > 0):
            raise ValueError("layer-wise distillation of encoder-decoder models is not supported (which stack's "
                             "layers would the map pair?); use hidden_state_weight=0 and attention_weight=0")
        if config.kd_tokens == "all" and (not self.language_model or getattr(student.config, "is_encoder_decoder",
                                                                            False)):
            raise ValueError(f"kd_tokens='all' distils every token of a causal language model's input; "
                             f"{type(student).__name__} is not one (its KD positions are its labels or outputs): "
                             "use kd_tokens='labels'")
        self.simkd_head: Optional[SimKDHead] = None
        if config.method == "reused_classifier":
            self.simkd_head = install_simkd_head(student, teacher_model)
        self.layer_map = None
        self.projections: Optional[HiddenStateProjections] = None
        if config.hidden_state_weight > 0 or config.attention_weight > 0:
            self.layer_map = resolve_layer_map(config.layer_map, student.config.num_hidden_layers,
                                               teacher_model.config.num_hidden_layers)
            _ensure_attention_maps(config, student, teacher_model)
        if config.hidden_state_weight > 0:
            self.projections = install_projections(student, teacher_model, self.layer_map)
        self._teacher_features: Optional[torch.Tensor] = None
        if self.simkd_head is not None:
            teacher_model.get_submodule(find_task_head(teacher_model)).register_forward_hook(
                self._capture_teacher_features)
        self._loss_sums: Dict[str, torch.Tensor] = {}
        self._loss_count = 0
        self._sharding_checked = False
        super().__init__(*args, **kwargs)
        if not TRAINER_READS_LOSS_SCALING:
            # transformers < 5.x without ``loss_is_scaled_for_ga`` divides by the accumulation steps only when the
            # model "accepts loss kwargs" and no compute_loss_func is set (compute_loss divides in that case)
            self.model_accepts_loss_kwargs = False

    def _check_sharded_student(self, model: nn.Module) -> None:
        """Under FSDP2 or ZeRO-3 (the student sharded at ``train()``, so checked at the first training batch,
        before any optimizer step) the frozen teacher stays whole on every rank and logit/token KD works; the
        training-only modules that live in the student (SimKD head, hidden-state projections) are used outside its
        forward, where they are held as shards, so they are refused."""
        self._sharding_checked = True
        extras = [name for name, used in (("method 'reused_classifier' (SimKD)", self.simkd_head is not None),
                                          ("hidden-state projections (a narrower student)",
                                           self.projections is not None)) if used]
        if extras and any(is_dtensor(parameter) or is_zero3(parameter) for parameter in model.parameters()):
            raise ValueError(f"DistillationTrainer with {' and '.join(extras)} on a sharded (FSDP2 / ZeRO-3) student "
                             "is not supported; use method 'logits' (hidden-state distillation between equally wide "
                             "models needs no projection), or train under DDP")

    def _capture_teacher_features(self, module, inputs, output) -> None:
        self._teacher_features = inputs[0]

    # ---- loss ------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation and prediction: the task loss, exactly as the stock Trainer has it
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self._sharding_checked:
            self._check_sharded_student(model)
        config = self.distillation_config
        labels = inputs.get("labels") if self.label_smoother is not None or self.compute_loss_func is not None else None
        layer_outputs = {"output_hidden_states": config.hidden_state_weight > 0,
                         "output_attentions": config.attention_weight > 0}
        layer_outputs = {key: True for key, wanted in layer_outputs.items() if wanted}
        student_inputs, teacher_inputs = split_inputs(inputs, self._student_parameters, self._teacher_parameters)
        outputs = model(**{key: value for key, value in student_inputs.items() if labels is None or key != "labels"},
                        **layer_outputs)
        device = next(model.parameters()).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        if (getattr(self.teacher.config, "is_encoder_decoder", False) and "decoder_input_ids" not in teacher_inputs
                and inputs.get("labels") is not None):   # the student builds them from its labels; so must the teacher
            teacher_inputs["decoder_input_ids"] = self.teacher.prepare_decoder_input_ids_from_labels(
                labels=inputs["labels"])
        with torch.no_grad(), self.accelerator.autocast():
            teacher_outputs = self.teacher(**teacher_inputs, **layer_outputs)
        mask = inputs.get("attention_mask")
        terms: Dict[str, torch.Tensor] = {}
        if config.hidden_state_weight > 0:
            terms["loss_hidden"] = hidden_state_loss(outputs.hidden_states, teacher_outputs.hidden_states,
                                                     self.layer_map, mask, config.hidden_state_loss, self.projections)
        if config.attention_weight > 0:
            terms["loss_attention"] = attention_loss(outputs.attentions, teacher_outputs.attentions, self.layer_map,
                                                     mask)
        if config.distill_loss_weight > 0:
            kd_labels = inputs.get("labels")
            if config.kd_tokens == "all":
                if inputs.get("input_ids") is None:
                    raise ValueError("kd_tokens='all' reads the positions to distil from input_ids; this batch has "
                                     "none (inputs_embeds?): use kd_tokens='labels'")
                kd_labels = every_token_labels(inputs["input_ids"], mask, inputs.get("position_ids"))
            terms["loss_kd"] = self._kd(outputs, teacher_outputs, mask, kd_labels)
        if config.hard_label_weight > 0:
            terms["loss_hard"] = self._task_loss(model, outputs, labels)
        if self.simkd_head is not None and config.feature_weight > 0:
            token_mask = mask if self.simkd_head.projected.dim() == 3 else None
            terms["loss_feature"] = feature_mse(self.simkd_head.projected, self._teacher_features, token_mask)
        weights = {"loss_kd": config.distill_loss_weight, "loss_hard": config.hard_label_weight,
                   "loss_feature": config.feature_weight, "loss_hidden": config.hidden_state_weight,
                   "loss_attention": config.attention_weight}
        loss = sum(weights[name] * value for name, value in terms.items())
        if not TRAINER_READS_LOSS_SCALING and self.compute_loss_func is not None:
            loss = loss / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        if model.training:
            for name, value in terms.items():
                self._loss_sums[name] = self._loss_sums.get(name, 0.0) + value.detach().float()
            self._loss_count += 1
        return (loss, outputs) if return_outputs else loss

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the dataset columns the teacher's forward takes as well as the student's (``remove_unused_columns``
        would otherwise drop, e.g., a BERT teacher's ``token_type_ids`` for a DistilBERT student)."""
        super()._set_signature_columns_if_needed()
        extra = sorted((self._teacher_parameters or set()) - set(self._signature_columns))
        self._signature_columns += extra

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

    def _kd(self, outputs, teacher_outputs, mask, labels) -> torch.Tensor:
        temperature = self.distillation_config.temperature
        if self.language_model:
            if labels is None:
                raise ValueError("token-level distillation of a language model needs `labels` in the batch (the "
                                 "positions to distil: labels != -100)")
            shift = not getattr(self.teacher.config, "is_encoder_decoder", False)
            return token_kd_loss(outputs.logits, teacher_outputs.logits, labels, temperature, shift)
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
    def _training_modules(self) -> Dict[str, nn.Module]:
        """Modules that exist only while the student trains, by the checkpoint file that holds each."""
        modules = {SIMKD_STATE_NAME: self.simkd_head, PROJECTIONS_STATE_NAME: self.projections}
        return {name: module for name, module in modules.items() if module is not None}

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Save a plain model (SimKD head folded, projections left out); checkpoints also keep those modules."""
        output_dir = output_dir or self.args.output_dir
        with saved_form(self.model):
            super().save_model(output_dir, _internal_call)
        if _internal_call and self.args.should_save:
            from safetensors.torch import save_file

            for name, module in self._training_modules().items():
                state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
                save_file(state, os.path.join(output_dir, name))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[nn.Module] = None) -> None:
        target = self.model if model is None else model
        with saved_form(target):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_training_modules(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the checkpoint holds a plain model; load the body into the saved form and
        the training-only modules from their own files, so the model is the best one whole."""
        with saved_form(self.model):
            super()._load_best_model()
        self._load_training_modules(self.state.best_model_checkpoint)

    def _load_training_modules(self, checkpoint: str) -> None:
        from safetensors.torch import load_file

        for name, module in self._training_modules().items():
            path = os.path.join(checkpoint, name)
            if not os.path.isfile(path):
                raise ValueError(f"resuming this distillation needs {name} in {checkpoint} (the checkpoint was saved "
                                 "by a run with other distillation settings)")
            try:
                tensors = load_file(path, device=str(next(module.parameters()).device))
            except Exception as err:  # safetensors' own errors for a truncated or corrupt file
                raise ValueError(f"{path} is not a readable safetensors file: {short(str(err))}") from None
            bad = sorted(key for key, tensor in tensors.items()
                         if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()))
            if bad:
                raise ValueError(f"{path}: {short(bad)} hold NaN or infinite values; refusing to resume from it")
            module.load_state_dict(tensors)


def _ensure_attention_maps(config: DistillationConfig, student: nn.Module, teacher: nn.Module) -> None:
    """Attention-map KD needs the maps, which only the eager attention returns (sdpa/flash return none): switch
    student and teacher to it (slower; logged), or refuse when the model cannot switch."""
    if config.attention_weight <= 0:
        return
    for role, model in (("student", student), ("teacher", teacher)):
        implementation = getattr(model.config, "_attn_implementation", None)
        if implementation == "eager":
            continue
        try:
            model.set_attn_implementation("eager")
        except (AttributeError, ValueError) as err:
            raise ValueError(f"attention_weight > 0 needs the attention maps, which the {role}'s {implementation!r} "
                             f"attention does not return and it cannot switch to eager ({err}); load it with "
                             "attn_implementation=\"eager\" or set attention_weight to 0") from None
        logger.warning("attention-map distillation: the %s's attention switched from %r to 'eager' (the fused "
                       "kernels return no attention maps); steps are slower", role, implementation)


def distillation_trainer_class(base: type) -> type:
    """``base`` (a Trainer subclass: TRL's ``SFTTrainer``, ``Seq2SeqTrainer``, your own) with DistillationTrainer's
    training loss, saving and resuming on top: ``distillation_trainer_class(SFTTrainer)(model=student,
    teacher_model=teacher, distillation_config=..., args=SFTConfig(...), train_dataset=..., processing_class=...)``.
    ``base`` still prepares the data, evaluates and logs; the training loss is the distillation one."""
    if not (isinstance(base, type) and issubclass(base, Trainer)):
        raise ValueError(f"distillation_trainer_class needs a transformers.Trainer subclass, got {base!r}")
    if issubclass(base, DistillationTrainer):
        return base
    return type(f"Distillation{base.__name__}", (DistillationTrainer, base), {"__doc__": distillation_trainer_class.__doc__})
