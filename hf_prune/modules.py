"""Which modules of a model can be pruned, and how their weights are oriented.

Two layer types hold prunable matrices: ``nn.Linear`` (weight ``[out_features, in_features]``) and transformers'
``Conv1D`` (GPT-2 and relatives: the same matrix stored transposed, ``[in_features, out_features]``). Patterns are
defined on the ``[out, in]`` view, so :func:`oriented` gives that view of a weight, grad or mask of either type.

Task heads are never pruned unless asked for by name: every output depends on them. They are found from the model
itself where it can tell (modules outside ``model.base_model``, the output embeddings) and from a list of the head
names transformers uses, so a head of a new architecture is recognised without a new list entry.
"""
from __future__ import annotations

import functools
import re
from typing import Dict, List, Set

import torch
from torch import nn

from .lora import is_lora_module_name

__all__ = ["prunable_modules", "task_head_names", "check_not_tied", "oriented", "is_transposed", "HEAD_NAME_PATTERN"]

#: Names transformers gives task heads, output projections and poolers across families (BERT ``qa_outputs``/
#: ``classifier``/``cls``/``pooler``, DistilBERT ``pre_classifier``/``vocab_projector``, BART/T5
#: ``classification_head``, GPT-2/Llama ``lm_head``/``score``, Whisper ``proj_out``, ViT ``classifier``).
HEAD_NAME_PATTERN = (r"(^|\.)(qa_outputs|classifier|pre_classifier|classification_head|lm_head|score|pooler|cls|"
                     r"vocab_projector|proj_out)(\.|$)")


@functools.lru_cache(maxsize=None)
def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is a dependency, but the Pruner itself works on any nn.Module
        return ()
    return (Conv1D,)


def is_transposed(module: nn.Module) -> bool:
    """True for ``Conv1D``, whose weight is stored ``[in, out]``."""
    conv1d = _conv1d_type()
    return bool(conv1d) and isinstance(module, conv1d)


def oriented(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (weight-shaped: the weight, its grad or its mask) seen as ``[out, in]``; a view, no copy."""
    return tensor.t() if is_transposed(module) else tensor


def prunable_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """Every ``nn.Linear`` and ``Conv1D`` of ``model`` by qualified name, in module order; a LoRA adapter's own
    matrices are not among them (the base layer they update is: see :mod:`hf_prune.lora`)."""
    types = (nn.Linear,) + _conv1d_type()
    return {name: module for name, module in model.named_modules()
            if isinstance(module, types) and not is_lora_module_name(name)}


def task_head_names(model: nn.Module, names) -> Set[str]:
    """The members of ``names`` that belong to a task head: outside ``model.base_model`` (a transformers task model
    is its base model plus head modules), the output embeddings, or named like a head (:data:`HEAD_NAME_PATTERN`)."""
    heads = {name for name in names if re.search(HEAD_NAME_PATTERN, name)}
    base = getattr(model, "base_model", model)
    if base is not model:
        inside = {id(module) for module in base.modules()}
        heads |= {name for name in names if id(model.get_submodule(name)) not in inside}
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if isinstance(output, nn.Module):
        heads |= {name for name in names if model.get_submodule(name) is output}
    return heads


def check_not_tied(model: nn.Module, pruned: Dict[str, nn.Module]) -> None:
    """Refuse a pruned weight whose storage another parameter shares (a tied ``lm_head`` and input embedding):
    masking it would prune that other module too, which no report would list."""
    owners: Dict[int, List[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(parameter), []).append(name)  # transformers ties by sharing the Parameter itself
    for module_name, module in pruned.items():
        own = {f"{module_name}.weight"}
        others = [name for name in owners.get(id(module.weight), []) if name not in own
                  and name.rsplit(".", 1)[0] not in pruned]
        if others:
            raise ValueError(f"{module_name}.weight shares its storage with {others} (tied weights): pruning it would "
                             f"prune them too; exclude {module_name!r}, or untie the weights "
                             "(config.tie_word_embeddings=False) before pruning")
