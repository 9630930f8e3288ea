"""The ``pruning`` section of a model's ``config.json``: how the model was pruned and the sparsity measured on it.

``pruning_config.json`` and the sparsity report are written where the callback knows a model is saved (its
checkpoints, ``output_dir``); a model saved anywhere else (``trainer.save_model("elsewhere")``,
``model.save_pretrained(...)``, ``push_to_hub``) carries only ``config.json``. So the pruning metadata lives in the
model's config too, as a quantized model carries ``quantization_config``: every save path writes it, and
:meth:`PruningConfig.from_pretrained` and pattern ``lock`` read it back. The callback refreshes it whenever the
masks change (each pruning event, a resume, a best-model load), so it always states the weights being saved.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from torch import nn

from .config_io import FORMAT_KEY, FORMAT_VERSION
from .lora import BASE_LAYER
from .value_checks import short

__all__ = ["PRUNING_SECTION", "record_pruning", "read_pruning_section", "recorded_layers", "config_owner",
           "note_slimmed"]

PRUNING_SECTION = "pruning"


def config_owner(model: nn.Module) -> Optional[nn.Module]:
    """The module whose ``config`` is saved as ``config.json``: the model itself, or a PEFT model's base model."""
    get_base = getattr(model, "get_base_model", None)
    owner = get_base() if callable(get_base) else model
    return owner if hasattr(getattr(owner, "config", None), "to_dict") else None


def _owner_names(model: nn.Module, owner: nn.Module, names: List[str]) -> List[str]:
    """``names`` of modules of ``model`` as the owner names them once LoRA is merged away (no ``.base_layer``)."""
    if owner is model:
        return [name[: -len(BASE_LAYER) - 1] if name.endswith("." + BASE_LAYER) else name for name in names]
    by_id = {id(module): name for name, module in owner.named_modules()}
    result = []
    for name in names:
        owned = by_id.get(id(model.get_submodule(name)), name)
        result.append(owned[: -len(BASE_LAYER) - 1] if owned.endswith("." + BASE_LAYER) else owned)
    return result


def record_pruning(model: nn.Module, config_dict: Dict[str, Any], report_dict: Dict[str, Any],
                   patterns: Dict[str, str]) -> Optional[Dict[str, Any]]:
    """Set the ``pruning`` section of ``model``'s config: the pruning config, the measured totals and the pruned
    layers by pattern (``patterns``: layer name in ``model`` -> pattern). Returns the section (None: no config)."""
    owner = config_owner(model)
    if owner is None:
        return None
    by_pattern: Dict[str, List[str]] = {}
    for name, pattern in zip(_owner_names(model, owner, list(patterns)), patterns.values()):
        by_pattern.setdefault(pattern, []).append(name)
    section = {FORMAT_KEY: FORMAT_VERSION, "config": config_dict,
               "sparsity_pruned_layers": report_dict["sparsity_pruned_layers"],
               "sparsity_all_linear": report_dict["sparsity_all_linear"],
               "target_reached": report_dict.get("target_reached", True), "layers": by_pattern}
    setattr(owner.config, PRUNING_SECTION, section)
    return section


def read_pruning_section(source: Any) -> Optional[Dict[str, Any]]:
    """The ``pruning`` section of a model config, a model, or a folder's ``config.json`` (None when absent);
    a section of an unknown format or shape is refused naming it."""
    where = "model config"
    if isinstance(source, (str, os.PathLike)):
        where = os.path.join(source, "config.json") if os.path.isdir(source) else str(source)
        if not os.path.isfile(where):
            return None
        with open(where, encoding="utf-8") as handle:
            try:
                section = json.load(handle).get(PRUNING_SECTION)
            except (ValueError, AttributeError):
                raise ValueError(f"{where} is not a JSON object") from None
    else:
        owner = config_owner(source) if isinstance(source, nn.Module) else None
        config = owner.config if owner is not None else source
        section = getattr(config, PRUNING_SECTION, None)
    if section is None:
        return None
    version = section.get(FORMAT_KEY) if isinstance(section, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION \
            or not isinstance(section.get("config"), dict) or not isinstance(section.get("layers"), dict):
        raise ValueError(f"{where}: its {PRUNING_SECTION!r} section is not one hf_prune (format {FORMAT_VERSION}) "
                         f"wrote: {short(section)}")
    return section


def recorded_layers(model: nn.Module) -> Optional[Dict[str, str]]:
    """The pruned layers the model's config records, named as in ``model`` (a LoRA layer by its base layer), with
    their pattern; None when the config has no ``pruning`` section."""
    section = read_pruning_section(model)
    owner = config_owner(model)
    if section is None or owner is None:
        return None
    names_in_model = {id(module): name for name, module in model.named_modules()}
    result = {}
    for pattern, names in section["layers"].items():
        for name in names:
            try:
                module = owner.get_submodule(name)
            except AttributeError:
                raise ValueError(f"the model config's {PRUNING_SECTION!r} section names layer {name!r}, which this "
                                 "model does not have: the config belongs to another model") from None
            here = names_in_model[id(module)]
            base = getattr(module, BASE_LAYER, None)
            result[f"{here}.{BASE_LAYER}" if isinstance(base, nn.Module) else here] = pattern
    return result


def note_slimmed(model: nn.Module, parameters_before: int, parameters_after: int) -> None:
    """After :func:`hf_prune.slim` removed the zero heads and channels: the section's figures are measured again on
    the recorded layers as they now are (their removed zeros no longer count), and the slimming is recorded."""
    section = read_pruning_section(model)
    layers = recorded_layers(model) if section is not None else None
    if not layers:
        return
    weights = [model.get_submodule(name).weight for name in layers]
    zeros = sum(int((weight == 0).sum()) for weight in weights)
    section["sparsity_pruned_layers"] = round(zeros / max(1, sum(weight.numel() for weight in weights)), 6)
    linears = [module.weight for module in model.modules() if isinstance(module, nn.Linear)]
    section["sparsity_all_linear"] = round(sum(int((w == 0).sum()) for w in linears)
                                           / max(1, sum(w.numel() for w in linears)), 6)
    section["slimmed"] = {"parameters_before": parameters_before, "parameters_after": parameters_after}
