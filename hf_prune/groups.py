"""Pruning groups: the modules that share one pattern, criterion, schedule and ranking scope, how a group's
include/exclude picks them, and how a global ranking shares a group's pruned units out among its entries."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .architectures import StructuredBlock, find_blocks
from .config import DEFAULT_EXCLUDE, PruningConfig
from .criteria import Criterion
from .modules import is_transposed
from .patterns import Pattern, get_pattern
from .schedules import PruningSchedule
from .sharding import full_shape

__all__ = ["PruningGroup", "oriented_shape", "schedule_steps", "select_modules", "structured_blocks",
           "global_unit_counts", "round_kept_units", "check_units_reachable"]


@dataclass
class PruningGroup:
    """Modules that share one pattern, criterion, schedule and ranking scope.

    Ranking entries are the modules themselves for weight patterns (NxM, N:M) and the ``blocks`` (attention
    blocks, FFNs) for structured patterns, whose units span several modules.
    """

    config: PruningConfig
    pattern: Pattern
    criterion: Criterion
    schedule: PruningSchedule
    names: List[str]
    blocks: List[StructuredBlock] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.roles: Dict[str, Tuple[StructuredBlock, str]] = {
            member: (block, role) for block in self.blocks
            for role, members in (("rows", block.rows), ("columns", block.columns)) for member in members}

    @property
    def momentum(self) -> float:
        return self.config.momentum if self.criterion.uses_momentum else 0.0

    def score_shape(self, name: str, weight_shape: Tuple[int, int]) -> Tuple[int, ...]:
        """Stored scores of an oriented weight of ``weight_shape`` (the full weight, or a rank's rows of it)."""
        if name in self.roles:
            block, role = self.roles[name]
            return (weight_shape[0 if role == "rows" else 1] // block.size_of(name),)
        return self.pattern.score_shape(weight_shape)

    def rows_per_score(self, name: str) -> Optional[int]:
        """Weight rows one dim-0 entry of ``name``'s scores covers; None when each entry sums over all rows (the
        units of a head/channel column module), so a rank's rows give a partial sum."""
        if name in self.roles:
            block, role = self.roles[name]
            return block.size_of(name) if role == "rows" else None
        return self.pattern.block_rows

    def reduce(self, name: str, element_scores: torch.Tensor) -> torch.Tensor:
        """Element scores of module ``name`` -> its stored scores (per block, or per structured unit)."""
        if name in self.roles:
            block, role = self.roles[name]
            return self.pattern.unit_scores(element_scores, role, block.size_of(name))
        return self.pattern.reduce(element_scores, self.config.block_reduce)


def oriented_shape(module: nn.Module) -> Tuple[int, int]:
    """``[out, in]`` shape of the whole weight (also when a ZeRO-3 partition leaves ``weight.shape`` empty)."""
    shape = tuple(full_shape(module.weight))
    return shape[::-1] if is_transposed(module) else shape


def schedule_steps(config: PruningConfig) -> Tuple[int, int, int]:
    """(start, end, frequency); a ``lock`` group has no schedule (no event ever fires for it)."""
    if get_pattern(config.pattern).locked:
        return 0, 0, 1
    return config.start_step, config.end_step, config.frequency


def select_modules(names: List[str], group_config: PruningConfig, claimed: Dict[str, str]) -> List[str]:
    """Linear modules the group's include/exclude pick, minus those an earlier group took."""
    if group_config.include is None:
        included = set(names)
    else:
        included = set()
        for regex in group_config.include:
            hits = {name for name in names if re.search(regex, name)}
            if not hits:
                sample = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                raise ValueError(
                    f"include pattern {regex!r} (group {group_config.name!r}) matches no nn.Linear module; "
                    f"the model's Linear modules are named like: {sample}"
                )
            included |= hits
    def excluded(name: str) -> bool:
        # the default exclusion (task heads) yields to an include that names the module; a user's own exclude wins
        rules = group_config.exclude if group_config.include is None else \
            [regex for regex in group_config.exclude if regex not in DEFAULT_EXCLUDE]
        return any(re.search(regex, name) for regex in rules)

    return [name for name in names if name in included and name not in claimed and not excluded(name)]


def structured_blocks(model: nn.Module, pattern: Pattern, group_config: PruningConfig,
                      selected: List[str]) -> List[StructuredBlock]:
    """The attention blocks / FFNs whose modules the group selected. A unit spans all of its block's
    modules, so a block the group selects only in part is refused rather than pruned half-way."""
    chosen = set(selected)
    blocks = [block for block in find_blocks(model, pattern.kind) if chosen & set(block.members)]
    for block in blocks:
        missing = [member for member in block.members if member not in chosen]
        if missing:
            raise ValueError(
                f"pattern {group_config.pattern!r} (group {group_config.name!r}) prunes whole units of "
                f"{block.name!r}, but its modules {missing} are excluded or taken by another group; "
                f"select all of {list(block.members)} or none"
            )
    if not blocks:
        raise ValueError(f"pattern {group_config.pattern!r} (group {group_config.name!r}) found no "
                         f"{'attention block' if pattern.kind == 'head' else 'FFN'} among the modules it selects")
    return blocks


def global_unit_counts(config: PruningConfig, sparsity: float, costs, orders, sizes, per_unit: int,
                       max_units: Dict[str, int]) -> Dict[str, int]:
    """How many units each entry (layer or block) loses when all entries' units compete in one ranking,
    with every entry kept between its min and max sparsity. Ties go to the earlier entry, then the lower
    index."""
    names = list(costs)
    low_sparsity = min(config.min_sparsity_per_layer, sparsity)
    low = {n: min(max_units[n], math.ceil(low_sparsity * sizes[n] / per_unit - 1e-9)) for n in names}
    high = {n: max(low[n], min(max_units[n], math.floor(config.max_sparsity_per_layer * sizes[n] / per_unit + 1e-9)))
            for n in names}
    wanted = round(sparsity * sum(sizes.values()) / per_unit)
    extra = max(0, min(wanted, sum(high.values())) - sum(low.values()))
    device = costs[names[0]].device
    candidates = [costs[n][orders[n][low[n]: high[n]]].to(device) for n in names]
    owners = torch.cat([torch.full((len(c),), i, dtype=torch.long, device=device) for i, c in enumerate(candidates)])
    chosen = owners[torch.sort(torch.cat(candidates), stable=True).indices[:extra]]
    taken = torch.bincount(chosen, minlength=len(names)).tolist()
    return {n: low[n] + taken[i] for i, n in enumerate(names)}


def round_kept_units(num_units: int, pruned: int, multiple: int) -> int:
    """Units to prune from a layer of ``num_units`` so that the number it keeps is the multiple of ``multiple``
    nearest to ``num_units - pruned`` (at least one multiple, at most every unit): a slimmed matmul whose width is a
    multiple of 8 (fp16 tensor cores) or 64 runs on fast GPU kernels, an odd width does not."""
    kept = num_units - pruned
    kept = min(num_units, max(multiple, multiple * round(kept / multiple)))
    return num_units - kept


def check_units_reachable(config: PruningConfig, blocks: List[StructuredBlock]) -> None:
    """Refuse, before training, a head/channel group that ``keep_multiple_of`` keeps from pruning: a layer with no
    more units than the multiple keeps them all, and a target above what the rounding allows is never reached."""
    multiple = config.keep_multiple_of
    if multiple <= 1 or not blocks:
        return
    stuck = [block for block in blocks if block.num_units <= multiple]
    if stuck:
        raise ValueError(f"group {config.name!r}: keep_multiple_of={multiple} but {stuck[0].name} has "
                         f"{stuck[0].num_units} {stuck[0].kind} units ({len(stuck)} of {len(blocks)} layers have at "
                         f"most {multiple}): they can never be pruned; use a keep_multiple_of below the unit count")
    prunable = sum(block.num_units - multiple for block in blocks)
    reachable = prunable / sum(block.num_units for block in blocks)
    target = config.target_sparsity or 0.0
    if target > reachable + 1e-9:
        raise ValueError(f"group {config.name!r}: target_sparsity {target} cannot be reached with keep_multiple_of="
                         f"{multiple} (every layer keeps at least {multiple} units: at most {reachable:.4f}); lower "
                         "the target or keep_multiple_of")
