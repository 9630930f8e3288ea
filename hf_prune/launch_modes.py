"""Launch modes hf_prune cannot mask, refused before the first step instead of pruned wrongly.

FSDP2 (``DTensor`` parameters sharded by rows) and DeepSpeed ZeRO-3 (flat partitions holding whole rows) are
supported: :mod:`hf_prune.sharding`. Refused here: FSDP1, which flattens a wrapped module's parameters into one
``FlatParameter`` (no per-layer weight is left to mask), and an empty placeholder weight whose partition hf_prune
cannot find. Sharded, a pushed checkpoint must carry the pruner state, which every rank gathers after the Trainer
saved the folder: only ``hub_strategy="end"`` pushes after that.
"""
from __future__ import annotations

from typing import Dict

from torch import nn

from .sharding import is_zero3

__all__ = ["check_launch_mode", "check_sharded_trainer_args"]

#: hub strategies that push a checkpoint from inside the Trainer's save, before a sharded pruner state is written
_EARLY_PUSH_STRATEGIES = ("every_save", "checkpoint", "all_checkpoints")


def check_launch_mode(model: nn.Module, modules: Dict[str, nn.Module]) -> None:
    """Raise ``ValueError`` naming the launch mode when a module to prune holds parameters hf_prune cannot mask."""
    if any(type(module).__name__ == "FullyShardedDataParallel" for module in model.modules()) or any(
            type(parameter).__name__ == "FlatParameter" for parameter in model.parameters()):
        raise ValueError("FSDP1 (flattened parameters) is not supported by hf_prune; use FSDP2 "
                         "(fsdp_config={'fsdp_version': 2}, PyTorch's fully_shard) or DDP")
    for name, module in modules.items():
        weight = module.weight
        if not is_zero3(weight) and (hasattr(weight, "ds_id") or weight.numel() == 0):
            raise ValueError(f"{name}.weight is partitioned by DeepSpeed ZeRO-3 (shape {tuple(weight.shape)} outside "
                             "forward) but carries no partition (ds_tensor) hf_prune can mask: prune it through the "
                             "Trainer's deepspeed= config (a DeepSpeed-initialized model), or under FSDP2 or DDP")


def check_sharded_trainer_args(args) -> None:
    """Trainer settings that cannot work with sharded (FSDP2, ZeRO-3) masks: refused by name before the first step."""
    strategy = str(getattr(getattr(args, "hub_strategy", None), "value", getattr(args, "hub_strategy", "")))
    if getattr(args, "push_to_hub", False) and strategy in _EARLY_PUSH_STRATEGIES:
        raise ValueError(f"push_to_hub with hub_strategy={strategy!r} under FSDP2 or ZeRO-3: the Trainer pushes each "
                         "checkpoint before every rank has gathered its pruner state into it; use hub_strategy='end' "
                         "(the final model, its masks' report and card are pushed once training ends)")
