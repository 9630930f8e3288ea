"""A pruning event for one group: rank its units by cost and turn the cheapest into keep-masks.

Works on whole-model tensors (a sharded ``Pruner`` gathers the scores first and keeps its rows of the masks), so
the ranking is the same at any world size. Weight patterns (NxM, N:M) rank each weight's blocks; structured
patterns (heads, channels) rank units that span a block's modules, their cost summed over the members.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from .architectures import StructuredBlock
from .groups import PruningGroup, global_unit_counts, oriented_shape, round_kept_units
from .modules import oriented
from .sharding import full_shape

__all__ = ["keep_masks"]

Masks = Dict[str, torch.Tensor]


@torch.no_grad()
def keep_masks(group: PruningGroup, block_scores: Masks, modules: Dict[str, nn.Module],
               sparsity: float) -> Tuple[Masks, Masks]:
    """Keep-masks of the whole weights of ``group`` pruned to ``sparsity`` by ``block_scores`` (whole-model
    block scores per weight), and of the biases of the structured units' output rows."""
    blocks = {block.name: block for block in group.blocks}
    if group.pattern.structured:
        costs, per_unit = _structured_costs(group, block_scores, modules)
        max_units = {block.name: block.num_units - 1 for block in group.blocks}  # a layer keeps one unit
        sizes = {block.name: sum(full_shape(modules[n].weight).numel() for n in block.members)
                 for block in group.blocks}
    else:
        costs = {name: group.pattern.unit_costs(scores) for name, scores in block_scores.items()}
        per_unit = group.pattern.elements_per_unit
        max_units = {name: cost.numel() for name, cost in costs.items()}
        sizes = {name: full_shape(modules[name].weight).numel() for name in group.names}
    orders = {entry: torch.sort(cost, stable=True).indices for entry, cost in costs.items()}
    if group.config.scope == "local":
        counts = {entry: min(max_units[entry], round(sparsity * sizes[entry] / per_unit)) for entry in costs}
    else:
        counts = global_unit_counts(group.config, sparsity, costs, orders, sizes, per_unit, max_units)
    if group.config.keep_multiple_of > 1:  # structured only (checked by the config)
        counts = {entry: round_kept_units(blocks[entry].num_units, count, group.config.keep_multiple_of)
                  for entry, count in counts.items()}
    masks: Masks = {}
    bias_masks: Masks = {}
    for entry, cost in costs.items():
        pruned = torch.zeros(cost.numel(), dtype=torch.bool, device=cost.device)
        pruned[orders[entry][: counts[entry]]] = True
        if group.pattern.structured:
            _unit_masks(group, blocks[entry], ~pruned, modules, masks, bias_masks)
        else:
            module = modules[entry]
            mask = group.pattern.build_mask(block_scores[entry], pruned, oriented_shape(module))
            masks[entry] = oriented(module, mask).contiguous()
    return masks, bias_masks


def _structured_costs(group: PruningGroup, unit_scores: Masks, modules: Dict[str, nn.Module]):
    """Cost of each unit of each block: its members' unit scores summed. Every unit of a group holds the
    same number of weights (checked), so ``block_reduce`` (sum or mean) would not change the ranking."""
    per_unit = {}
    costs = {}
    for block in group.blocks:
        per_unit[block.name] = (sum(block.size_of(n) * modules[n].in_features for n in block.rows)
                                + sum(block.size_of(n) * modules[n].out_features for n in block.columns))
        costs[block.name] = sum(unit_scores[m].to(unit_scores[block.rows[0]].device) for m in block.members)
    if len(set(per_unit.values())) != 1:
        raise ValueError(f"group {group.config.name!r}: units of different sizes {per_unit} cannot share a "
                         "ranking; prune them in separate groups")
    return costs, next(iter(per_unit.values()))


def _unit_masks(group: PruningGroup, block: StructuredBlock, keep_units: torch.Tensor, modules: Dict[str, nn.Module],
                masks: Masks, bias_masks: Masks) -> None:
    """Masks of every member of ``block`` keeping ``keep_units``: output rows of the row members (and their
    biases), input columns of the column members."""
    for role, members in (("rows", block.rows), ("columns", block.columns)):
        for name in members:
            module = modules[name]
            masks[name] = group.pattern.unit_mask(keep_units, role, block.size_of(name), tuple(full_shape(module.weight)))
            if role == "rows" and module.bias is not None:
                bias_masks[name] = keep_units.repeat_interleave(block.size_of(name))
