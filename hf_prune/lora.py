"""Sparsity that survives LoRA: prune (or lock) the frozen base weights of a PEFT LoRA model so that the adapter
cannot fill the zeros back in, during training or at ``merge_and_unload()``.

A LoRA layer computes ``base(x) + s * B(A(dropout(x)))``; its update ``s * B @ A`` is dense, so merging it would
undo any mask on the base weight. hf_prune masks the update itself: each LoRA Linear whose base layer is pruned
computes ``base(x) + dropout(x) @ ((s * B @ A) * mask).T`` and its ``get_delta_weight`` (what ``merge`` adds) is
masked the same way, so the merged weight is ``W * mask + (s * B @ A) * mask``: the trained model and the merged
model are the same function and have the same zeros. Base weights are frozen and get no gradient, so they are
scored by gradient-free criteria (``magnitude``, ``wanda``) or kept as loaded (``lock``).

Supported: PEFT's vanilla LoRA on ``nn.Linear`` (no DoRA or other variants, no ``fan_in_fan_out``); other PEFT
adapters are refused by name.
"""
from __future__ import annotations

import types
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["lora_layers", "is_lora_module_name", "check_adapters", "mask_lora_updates", "BASE_LAYER"]

BASE_LAYER = "base_layer"
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
