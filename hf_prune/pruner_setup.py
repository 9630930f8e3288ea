"""Building a ``Pruner``'s groups from a config, once: which Linear each group prunes (include/exclude, task heads,
frozen weights, a pruned model's recorded layers), and the checks that refuse a set-up before the first step
(tied weights, units a sharded rank would split, ``lock`` targets that are not what the weights hold)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, List, Tuple

from torch import nn

from .config import PruningConfig
from .criteria import get_criterion
from .groups import PruningGroup, check_units_reachable, oriented_shape, schedule_steps, select_modules, \
    structured_blocks
from .lora import BASE_LAYER, lora_layers
from .model_metadata import read_pruning_section, recorded_layers
from .modules import check_not_tied, prunable_modules, task_head_names
from .patterns import get_pattern
from .schedules import PruningSchedule
from .sharding import WeightShards

logger = logging.getLogger(__name__)

__all__ = ["build_groups", "check_shards", "lock_targets"]

#: (masked weights, all weights) of a list of pruned layers
PrunedCounter = Callable[[List[str]], Tuple[int, int]]


def build_groups(model: nn.Module, config: PruningConfig) -> Tuple[List[PruningGroup], Dict[str, nn.Module], List[str]]:
    """The groups of ``config`` over ``model``'s Linears, each module claimed by the first group that selects it;
    returns (groups, pruned modules by name, frozen layers a gradient criterion left dense)."""
    linears = prunable_modules(model)
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear module (nor Conv1D) to prune")
    heads = task_head_names(model, linears)
    recorded = recorded_layers(model)  # the pruned layers a pruned model's config.json names
    claimed: Dict[str, str] = {}
    modules: Dict[str, nn.Module] = {}
    frozen: List[str] = []
    groups = []
    group_configs = config.resolved_groups()
    for index, group_config in enumerate(group_configs):
        is_default = index == len(group_configs) - 1
        pattern = get_pattern(group_config.pattern)
        selected = select_modules(list(linears), group_config, claimed)
        if group_config.include is None:  # heads are pruned only when an include names them
            selected = [name for name in selected if name not in heads]
            if pattern.locked and recorded is not None:  # "lock" keeps the layers the model's config records
                selected = [name for name in selected if name in recorded]
        if get_criterion(group_config.criterion).needs_gradient and not pattern.locked:
            selected = _drop_frozen(model, selected, group_config, frozen)
        blocks = []
        if pattern.structured:  # whole units: the group prunes its blocks' modules, nothing else
            blocks = structured_blocks(model, pattern, group_config, selected)
            check_units_reachable(group_config, blocks)
            selected = [member for block in blocks for member in block.members]
        if not selected and not (is_default and config.groups):
            raise ValueError(
                f"pruning group {group_config.name!r} selects no nn.Linear module: every module its include "
                "matches is excluded, a task head, frozen, or taken by an earlier group"
            )
        if selected and group_config.end_step is None and not pattern.locked:
            raise ValueError(f"pruning group {group_config.name!r} has no end_step (its {group_config.pattern!r} "
                             "pattern needs a schedule; the top-level pattern 'lock' gives none): set its steps")
        for name in selected:
            if not pattern.structured and not pattern.locked:
                pattern.check_shape(name, oriented_shape(linears[name]))
            claimed[name] = group_config.name
            modules[name] = linears[name]
        if selected:
            schedule = PruningSchedule(group_config.schedule, *schedule_steps(group_config),
                                       group_config.target_sparsity or 0.0)
            groups.append(PruningGroup(group_config, pattern, get_criterion(group_config.criterion),
                                       schedule, selected, blocks))
    check_not_tied(model, modules)
    return groups, modules, frozen


def _drop_frozen(model: nn.Module, selected: List[str], group_config: PruningConfig, frozen: List[str]) -> List[str]:
    """A frozen weight never gets a gradient, so a gradient criterion would score it 0 and prune it first, by
    index order: leave it dense and say so (magnitude, which needs no gradient, may prune it)."""
    dropped = [name for name in selected if not model.get_submodule(name).weight.requires_grad]
    adapted = [name for name in dropped if name.endswith(f".{BASE_LAYER}")]
    if adapted:
        raise ValueError(f"criterion {group_config.criterion!r} scores weights by their gradients, which LoRA's "
                         f"frozen base weights (e.g. {adapted[0]}) never get: use criterion 'wanda' or "
                         "'magnitude' (or pattern 'lock' to keep existing zeros) with a LoRA model")
    if dropped:
        logger.warning("group %r: %d frozen layer(s) (requires_grad=False) left dense, criterion %r needs their "
                       "gradients: %s", group_config.name, len(dropped), group_config.criterion, ", ".join(dropped))
        frozen.extend(dropped)
    return [name for name in selected if name not in dropped]


def check_shards(model: nn.Module, groups: List[PruningGroup], shards: WeightShards) -> None:
    """Sharded weights: no block may straddle two ranks' rows, and LoRA's masked updates need whole masks."""
    if not shards.collective:
        return
    if lora_layers(model):
        raise ValueError("LoRA adapters on a sharded (FSDP2 / ZeRO-3) model are not supported by hf_prune (the "
                         "adapters' masked updates need whole masks): train the LoRA model under DDP")
    for group in groups:
        for name in group.names if not group.pattern.locked else ():
            rows = group.rows_per_score(name)
            if rows is not None:
                shards.check_rows(name, rows, f"a unit of pattern {group.pattern.name!r}")


def lock_targets(model: nn.Module, config: PruningConfig, groups: List[PruningGroup],
                 pruned_and_total: PrunedCounter) -> PruningConfig:
    """A ``lock`` group's target is the sparsity its layers were loaded with: refused when they hold no zeros, or
    when a stated ``target_sparsity`` is not what they have. Sets each lock group's target; returns ``config``
    with the measured target when its top-level pattern is ``lock`` (so reports state it)."""
    for group in groups:
        if not group.pattern.locked:
            continue
        zeros, total = pruned_and_total(group.names)
        measured = zeros / total
        if zeros == 0:
            raise ValueError(f"pattern 'lock' (group {group.config.name!r}) found no zero weights in its {total:,} "
                             f"weights ({len(group.names)} layers, e.g. {group.names[0]}): nothing to keep; load "
                             "the sparse checkpoint, or select its sparse layers with include/exclude")
        stated = group.config.target_sparsity
        if stated is not None and abs(stated - measured) > 0.005:
            raise ValueError(f"pattern 'lock' (group {group.config.name!r}): target_sparsity {stated} was given but "
                             f"the selected layers hold {measured:.4f} zeros; leave target_sparsity unset to keep "
                             "what was loaded")
        _check_recorded_sparsity(model, group, measured)
        logger.info("group %r: locking %d layers at their loaded sparsity %.4f", group.config.name,
                    len(group.names), measured)
        group.config = dataclasses.replace(group.config, target_sparsity=measured)
        if get_pattern(config.pattern).locked and group.config.name == (config.name or "default"):
            config = dataclasses.replace(config, target_sparsity=measured)
    return config


def _check_recorded_sparsity(model: nn.Module, group: PruningGroup, measured: float) -> None:
    """A lock over exactly the layers the model's config records must find the sparsity recorded there."""
    section = read_pruning_section(model)
    recorded = recorded_layers(model) if section is not None else None
    if recorded is None or set(group.names) != set(recorded):
        return
    if abs(section["sparsity_pruned_layers"] - measured) > 0.005:
        raise ValueError(f"pattern 'lock': the model's config records sparsity {section['sparsity_pruned_layers']:.4f} "
                         f"on its {len(recorded)} pruned layers, but the loaded weights hold {measured:.4f} zeros "
                         "there: these are not the weights the config describes (a dense base under a pruned "
                         "model's config?); load the pruned weights")
