"""Launch modes whose parameters hf_prune cannot mask yet, refused before the first step instead of pruned wrongly.

Under FSDP2 every parameter is a ``DTensor`` holding one shard: scores, ranking and the sparsity figure would mix
shards and full tensors (a crash at best, one rank's shard counted as the whole at worst). Under DeepSpeed ZeRO-3
a parameter outside forward is an empty ``(0,)`` placeholder with its shard elsewhere. FSDP1 flattens parameters
into one ``FlatParameter``. Until sharded masks exist, each is refused by name; DDP (replicated parameters) is
supported.
"""
from __future__ import annotations

from typing import Dict

from torch import nn

__all__ = ["check_launch_mode"]


def check_launch_mode(model: nn.Module, modules: Dict[str, nn.Module]) -> None:
    """Raise ``ValueError`` naming the launch mode when a module to prune holds sharded parameters."""
    if any(type(module).__name__ == "FullyShardedDataParallel" for module in model.modules()) or any(
            type(parameter).__name__ == "FlatParameter" for parameter in model.parameters()):
        raise ValueError("FSDP1 (flattened parameters) is not supported by hf_prune; use DDP for now (FSDP2 sharded "
                         "pruning is not implemented yet either)")
    for name, module in modules.items():
        weight = module.weight
        if type(weight).__name__ == "DTensor" or type(getattr(weight, "data", None)).__name__ == "DTensor":
            raise ValueError(f"{name}.weight is a DTensor (FSDP2 / tensor parallelism shards it across processes): "
                             "hf_prune's masks and scores are not sharded yet; prune under DDP, or without sharding")
        if hasattr(weight, "ds_id") or (weight.dim() == 1 and weight.numel() == 0):
            raise ValueError(f"{name}.weight is partitioned by DeepSpeed ZeRO-3 (shape {tuple(weight.shape)} outside "
                             "forward): hf_prune does not prune ZeRO-3 partitions yet; use ZeRO stage 1/2 or DDP")
