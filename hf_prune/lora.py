"""Sparsity that survives LoRA: prune (or lock) the frozen base weights of a PEFT LoRA model so that the adapter
cannot fill the zeros back in, during training or at ``merge_and_unload()``.

A LoRA layer computes ``base(x) + s * B(A(dropout(x)))``; its update ``s * B @ A`` is dense, so merging it would
undo any mask on the base weight. hf_prune masks the update itself: each LoRA Linear whose base layer is pruned
computes ``base(x) + dropout(x) @ ((s * B @ A) * mask).T`` and its ``get_delta_weight`` (what ``merge`` adds) is
masked the same way, so the merged weight is ``W * mask + (s * B @ A) * mask``: the trained model and the merged
model are the same function and have the same zeros. Base weights are frozen and get no gradient, so they are
scored by gradient-free criteria (``magnitude``, ``wanda``) or kept as loaded (``lock``).

A saved adapter must mean the same without hf_prune, and PEFT's own LoRA layers do not mask. So whenever such a
model is saved (``trainer.save_model``, checkpoints, ``save_pretrained``, ``push_to_hub``), every pruned LoRA layer
is written in its merged form: its base weight ``W * mask + (s * B @ A) * mask`` (the exact zeros) stored in the
adapter file beside the adapter (PEFT loads base-layer entries of an adapter file as it loads saved biases), and its
``lora_B`` stored as zeros. ``AutoPeftModelForCausalLM.from_pretrained(out)`` and ``PeftModel.from_pretrained(base,
out)`` (any base of that architecture, dense included) then compute exactly the trained model, and
``merge_and_unload()`` keeps the zeros. The model in memory is not changed; a run resumed from a checkpoint continues
from that merged form (the same function, its pruned layers' ``lora_B`` restarting from zero).

Supported: PEFT's vanilla LoRA on ``nn.Linear`` (no DoRA or other variants, no ``fan_in_fan_out``), one adapter;
other PEFT adapters are refused by name.
"""
from __future__ import annotations

import os
import types
from typing import Callable, Dict, Optional

from safetensors.torch import load_file, save_file

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["lora_layers", "is_lora_module_name", "check_adapters", "mask_lora_updates", "save_in_merged_form",
           "BASE_LAYER", "ADAPTER_WEIGHTS_NAME"]

BASE_LAYER = "base_layer"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
_LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def is_lora_module_name(name: str) -> bool:
    """True for the adapter's own matrices (never pruned: they are the update, masked as a whole)."""
    return any(f".{part}." in f".{name}." for part in _LORA_PARTS)


def lora_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """PEFT layers wrapping a base layer, by name (the base layer is ``<name>.base_layer``)."""
    return {name: module for name, module in model.named_modules() if hasattr(module, BASE_LAYER)
            and isinstance(getattr(module, BASE_LAYER), nn.Module)}


def check_adapters(model: nn.Module) -> None:
    """Refuse adapters whose update hf_prune cannot mask: non-LoRA PEFT methods, LoRA variants (DoRA), LoRA on
    non-Linear layers or with ``fan_in_fan_out``."""
    for name, layer in lora_layers(model).items():
        if not hasattr(layer, "lora_A"):
            raise ValueError(f"{name} is a {type(layer).__name__} PEFT adapter: only LoRA updates can be masked so "
                             "that merging keeps the zeros; prune the base model first, or use LoRA")
        if not isinstance(layer.base_layer, nn.Linear) or getattr(layer, "fan_in_fan_out", False):
            raise ValueError(f"LoRA layer {name} wraps {type(layer.base_layer).__name__}"
                             f"{' with fan_in_fan_out' if getattr(layer, 'fan_in_fan_out', False) else ''}: hf_prune "
                             "masks LoRA updates of nn.Linear layers only")
        if getattr(layer, "lora_variant", None) or getattr(layer, "use_dora", {}) and any(layer.use_dora.values()):
            raise ValueError(f"LoRA layer {name} uses a LoRA variant (e.g. DoRA): its update cannot be masked "
                             "element-wise; use plain LoRA")
    adapters = sorted(getattr(model, "peft_config", None) or {})
    if len(adapters) > 1 and lora_layers(model):
        raise ValueError(f"the model holds {len(adapters)} PEFT adapters {adapters}: a pruned base is saved with one "
                         "adapter merged into it, so hf_prune prunes under one adapter; delete the others first")


def mask_lora_updates(model: nn.Module, masks: Dict[str, torch.Tensor]) -> int:
    """Make every LoRA layer whose base layer has a mask in ``masks`` (looked up at each call, so masks rebuilt at
    pruning events apply at once) compute and merge its update masked. Returns how many layers were changed."""
    count = 0
    for name, layer in lora_layers(model).items():
        base_name = f"{name}.{BASE_LAYER}"
        if base_name not in masks:
            continue
        mask_of: Callable[[], torch.Tensor] = lambda key=base_name: masks[key]
        layer.forward = types.MethodType(_masked_forward(mask_of), layer)
        layer.get_delta_weight = types.MethodType(_masked_delta(type(layer).get_delta_weight, mask_of), layer)
        count += 1
    return count


def _masked_delta(original, mask_of):
    def get_delta_weight(self, adapter):
        delta = original(self, adapter)
        return delta * mask_of().to(delta.device, delta.dtype)
    return get_delta_weight


def _masked_forward(mask_of):
    def forward(self, x, *args, **kwargs):
        if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
            kwargs.pop("adapter_names", None)
            if self.disable_adapters and self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        mask = mask_of()
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
            update = (lora_b @ lora_a) * self.scaling[adapter] * mask.to(lora_a.device, lora_a.dtype)
            inputs = self.lora_dropout[adapter](x.to(lora_a.dtype))
            result = result + F.linear(inputs, update).to(result.dtype)
        return result
    return forward


def save_in_merged_form(model: nn.Module, masks: Dict[str, torch.Tensor],
                        write_artifacts: Optional[Callable[[str], None]] = None) -> bool:
    """Make ``model.save_pretrained`` (a PEFT model) write its pruned LoRA layers in their merged form (module
    docstring) and, through ``write_artifacts(folder)``, the pruning config and report beside the adapter. Returns
    whether ``model`` is a PEFT model whose saves were changed."""
    if not hasattr(model, "peft_config") or not lora_layers(model):
        return False
    original = type(model).save_pretrained

    def save_pretrained(self, save_directory, *args, **kwargs):
        original(self, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            _merge_into_saved_adapter(self, str(save_directory), masks)
            if write_artifacts is not None:
                write_artifacts(str(save_directory))

    model.save_pretrained = types.MethodType(save_pretrained, model)
    return True


@torch.no_grad()
def _merge_into_saved_adapter(model: nn.Module, folder: str, masks: Dict[str, torch.Tensor]) -> None:
    adapter = next(iter(model.peft_config))
    path = os.path.join(folder, ADAPTER_WEIGHTS_NAME) if adapter == "default" else \
        os.path.join(folder, adapter, ADAPTER_WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"{folder}: no {ADAPTER_WEIGHTS_NAME} was written (safe_serialization=False?); a pruned LoRA "
                         "model is saved as safetensors so its pruned base weights can travel with the adapter")
    saved = load_file(path)
    for name, layer in lora_layers(model).items():
        if f"{name}.{BASE_LAYER}" not in masks or adapter not in layer.lora_B:
            continue
        lora_b = f"{name}.lora_B.weight"
        if lora_b not in saved:
            raise ValueError(f"{path} holds no {lora_b!r}: this PEFT version names adapter weights differently, so "
                             "the pruned base could not be saved with it; merge_and_unload() and save the plain model")
        merged = layer.base_layer.weight + layer.get_delta_weight(adapter)  # the delta is masked (mask_lora_updates)
        saved[f"{name}.{BASE_LAYER}.weight"] = merged.to(saved[lora_b].dtype).detach().cpu().contiguous()
        saved[lora_b] = torch.zeros_like(saved[lora_b])
    save_file(saved, path, metadata={"format": "pt"})
