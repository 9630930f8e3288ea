"""The teacher side of distillation: is this teacher one the student can learn from, and what does it get to see.

A teacher can take inputs the student does not (a BERT teacher's ``token_type_ids`` for a DistilBERT student); the
Trainer keeps only the columns the *student's* forward names (``remove_unused_columns``), so the distillation
trainer keeps the teacher's too, and each model is then given the inputs its own forward takes.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Set, Tuple

from torch import nn

from .simkd import find_task_head

__all__ = ["check_teacher", "check_tokenizers", "forward_parameters", "split_inputs", "is_language_model",
           "TASK_SUFFIXES"]

TASK_SUFFIXES = ("ForQuestionAnswering", "ForSequenceClassification", "ForCausalLM", "ForConditionalGeneration")
#: Language-model tasks: token-level KD over the vocabulary (``token_kd``), no classifier head to compare.
LM_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration")
#: Batch keys only the student's loss uses.
LABEL_KEYS = ("labels", "start_positions", "end_positions")


def _unwrapped(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (a LoRA student has its base model's task and inputs)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _task_suffix(model: nn.Module) -> Optional[str]:
    model = _unwrapped(model)
    return next((suffix for suffix in TASK_SUFFIXES if type(model).__name__.endswith(suffix)), None)


def is_language_model(model: nn.Module) -> bool:
    """A causal LM, or an encoder-decoder ``*ForConditionalGeneration`` (seq2seq LM)."""
    suffix = _task_suffix(model)
    return suffix == "ForCausalLM" or (suffix == "ForConditionalGeneration"
                                       and bool(getattr(model.config, "is_encoder_decoder", False)))


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse, before training, a teacher the student cannot learn from."""
    task = _task_suffix(student)
    if task is None or (task in LM_SUFFIXES and not is_language_model(student)):
        raise ValueError(f"DistillationTrainer supports *ForQuestionAnswering, *ForSequenceClassification, "
                         f"*ForCausalLM and seq2seq *ForConditionalGeneration students, got {type(student).__name__}")
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
    if task in LM_SUFFIXES:
        return   # the heads are the vocabulary, compared above
    student_out = student.get_submodule(find_task_head(student)).out_features
    teacher_out = teacher.get_submodule(find_task_head(teacher)).out_features
    if student_out != teacher_out:
        raise ValueError(f"teacher and student task heads differ: {teacher_out} (teacher) vs {student_out} (student) "
                         "outputs (number of labels)")


def check_tokenizers(student_tokenizer: Any, teacher_tokenizer: Any) -> None:
    """Refuse a teacher whose tokenizer differs from the student's in vocabulary or special tokens: the same ids
    would mean different tokens to the two models. Names the first differences."""
    if student_tokenizer is None or teacher_tokenizer is None:
        return
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        differing = sorted(set(student_vocab.items()) ^ set(teacher_vocab.items()), key=lambda item: item[1])
        examples = ", ".join(f"{token!r}={index}" for token, index in differing[:4])
        raise ValueError(f"teacher and student tokenizers differ: vocabularies of {len(teacher_vocab)} (teacher) and "
                         f"{len(student_vocab)} (student) tokens disagree on {len(differing)} entries (e.g. "
                         f"{examples}); distil from a teacher that shares the student's tokenizer")
    student_special = _special_tokens(student_tokenizer)
    teacher_special = _special_tokens(teacher_tokenizer)
    if student_special != teacher_special:
        keys = sorted(key for key in set(student_special) | set(teacher_special)
                      if student_special.get(key) != teacher_special.get(key))
        details = ", ".join(f"{key}: {teacher_special.get(key)!r} (teacher) vs {student_special.get(key)!r} (student)"
                            for key in keys)
        raise ValueError(f"teacher and student tokenizers differ in special tokens: {details}")


def _special_tokens(tokenizer: Any) -> Dict[str, Any]:
    return {key: value for key, value in getattr(tokenizer, "special_tokens_map", {}).items()}


def forward_parameters(model: nn.Module) -> Optional[Set[str]]:
    """Names ``model.forward`` takes explicitly (``**kwargs`` aside); a PEFT model's are its base model's."""
    try:
        parameters = inspect.signature(_unwrapped(model).forward).parameters.values()
    except (TypeError, ValueError):
        return None
    return {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def split_inputs(inputs: Dict[str, Any], student: Optional[Set[str]], teacher: Optional[Set[str]]
                 ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(student's inputs, teacher's inputs): a key only the other model names is left out; labels go to the
    student only."""
    student_only = (student or set()) - (teacher or set())
    teacher_only = (teacher or set()) - (student or set())
    student_inputs = {k: v for k, v in inputs.items() if k not in teacher_only}
    teacher_inputs = {k: v for k, v in inputs.items() if k not in student_only and k not in LABEL_KEYS}
    return student_inputs, teacher_inputs
