"""``Pruner``: masks and scores for every pruned Linear of a model. No Trainer import; any loop can drive it.

One optimizer step of a training loop::

    loss.backward()
    pruner.update_scores()       # criterion over each pattern's blocks, on the gradients about to be used
    optimizer.step()
    pruner.apply_masks()         # masked weights back to exactly 0, whatever the optimizer did
    pruner.step(global_step)     # at pruning events: rank blocks, rebuild masks, apply them

State is plain tensors keyed by module name (``state_dict``), so a checkpoint holds no modules or pickles.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import nn

from .config import PruningConfig
from .criteria import Criterion, get_criterion
from .patterns import Pattern, get_pattern
from .report import SparsityReport, sparsity_report
from .schedules import PruningSchedule

logger = logging.getLogger(__name__)

__all__ = ["Pruner", "PRUNER_STATE_NAME"]

PRUNER_STATE_NAME = "pruner_state.safetensors"


@dataclass
class PruningGroup:
    """Modules that share one pattern, criterion, schedule and ranking scope."""

    config: PruningConfig
    pattern: Pattern
    criterion: Criterion
    schedule: PruningSchedule
    names: List[str]

    @property
    def momentum(self) -> float:
        return self.config.momentum if self.criterion.uses_momentum else 0.0


class Pruner:
    """Owns a bool keep-mask per pruned weight and, for gradient criteria, one score per block."""

    def __init__(self, model: nn.Module, config: PruningConfig) -> None:
        if config.end_step is None:
            raise ValueError(
                "PruningConfig.end_step is unset; give the step at which pruning reaches the target "
                "(PruningTrainerCallback fills it in from the Trainer's max_steps)"
            )
        self.model = model
        self.config = config
        self.modules: Dict[str, nn.Linear] = {}
        self.groups: List[PruningGroup] = self._build_groups(model, config)
        self.masks: Dict[str, torch.Tensor] = {}
        self.scores: Dict[str, torch.Tensor] = {}
        for group in self.groups:
            for name in group.names:
                weight = self.modules[name].weight
                self.masks[name] = torch.ones_like(weight, dtype=torch.bool)
                if group.criterion.needs_gradient:
                    shape = group.pattern.score_shape(tuple(weight.shape))
                    self.scores[name] = torch.zeros(shape, dtype=torch.float32, device=weight.device)
        self.last_event_step: Optional[int] = None

    # ---- set-up -------------------------------------------------------------------------------------
    def _build_groups(self, model: nn.Module, config: PruningConfig) -> List[PruningGroup]:
        linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no nn.Linear module to prune")
        claimed: Dict[str, str] = {}
        groups = []
        group_configs = config.resolved_groups()
        for index, group_config in enumerate(group_configs):
            is_default = index == len(group_configs) - 1
            selected = self._select(linears, group_config, claimed)
            if not selected and not (is_default and config.groups):
                raise ValueError(
                    f"pruning group {group_config.name!r} selects no nn.Linear module: every module its include "
                    "matches is excluded or taken by an earlier group"
                )
            pattern = get_pattern(group_config.pattern)
            for name in selected:
                pattern.check_shape(name, tuple(self.modules[name].weight.shape))
                claimed[name] = group_config.name
            if selected:
                schedule = PruningSchedule(group_config.schedule, group_config.start_step, group_config.end_step,
                                           group_config.frequency, group_config.target_sparsity)
                groups.append(PruningGroup(group_config, pattern, get_criterion(group_config.criterion),
                                           schedule, selected))
        return groups

    def _select(self, linears, group_config: PruningConfig, claimed: Dict[str, str]) -> List[str]:
        names = [name for name, _ in linears]
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
        selected = []
        for name, module in linears:
            if name not in included or name in claimed:
                continue
            if any(re.search(regex, name) for regex in group_config.exclude):
                continue
            self.modules[name] = module
            selected.append(name)
        return selected

    # ---- the training-loop API --------------------------------------------------------------------
    @torch.no_grad()
    def update_scores(self) -> None:
        """Fold this step's criterion into the running block scores. Call after the gradients are final
        (after accumulation and unscaling) and before ``optimizer.step()``. A step whose gradients are not
        finite (an fp16 overflow the optimizer will skip) leaves every score unchanged."""
        updates = []
        for group in self.groups:
            if not group.criterion.needs_gradient:
                continue
            for name in group.names:
                weight = self.modules[name].weight
                if weight.grad is not None:
                    element = group.criterion.element_scores(weight, weight.grad)
                    updates.append((name, group.momentum, group.pattern.reduce(element, group.config.block_reduce)))
        if not updates:
            return
        # one check for the whole step: a sum is inf/nan as soon as any of its terms is
        if not bool(torch.isfinite(torch.stack([block.sum().to(updates[0][2].device) for _, _, block in updates]).sum())):
            logger.warning("non-finite gradients: scores left unchanged this step")
            return
        for name, momentum, block in updates:
            score = self.scores[name]
            if score.device != block.device:
                score = self.scores[name] = score.to(block.device)
            if momentum == 0.0:
                score.copy_(block)
            else:
                score.mul_(momentum).add_(block)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Set every masked weight to exactly zero."""
        if self.last_event_step is None:
            return  # nothing pruned yet: all masks are ones
        for name, mask in self.masks.items():
            weight = self.modules[name].weight
            if mask.device != weight.device:
                mask = self.masks[name] = mask.to(weight.device)
            weight.mul_(mask)

    def step(self, global_step: int) -> bool:
        """Run the pruning events scheduled for ``global_step``; returns whether any group pruned."""
        fired = False
        for group in self.groups:
            if group.schedule.is_event(global_step):
                sparsity = group.schedule.sparsity_at(global_step)
                self._prune_group(group, sparsity)
                logger.info("step %d: group %r pruned to %.4f", global_step, group.config.name, sparsity)
                fired = True
        if fired:
            self.last_event_step = global_step
            self.apply_masks()
        return fired

    # ---- ranking ------------------------------------------------------------------------------------
    def _block_scores(self, group: PruningGroup, name: str) -> torch.Tensor:
        if group.criterion.needs_gradient:
            return self.scores[name]
        element = group.criterion.element_scores(self.modules[name].weight, None)
        return group.pattern.reduce(element, group.config.block_reduce)

    @torch.no_grad()
    def _prune_group(self, group: PruningGroup, sparsity: float) -> None:
        pattern, config = group.pattern, group.config
        per_unit = pattern.elements_per_unit
        block_scores = {name: self._block_scores(group, name) for name in group.names}
        costs = {name: pattern.unit_costs(scores) for name, scores in block_scores.items()}
        orders = {name: torch.sort(cost, stable=True).indices for name, cost in costs.items()}
        sizes = {name: self.modules[name].weight.numel() for name in group.names}
        if config.scope == "local":
            counts = {name: min(costs[name].numel(), round(sparsity * sizes[name] / per_unit)) for name in group.names}
        else:
            counts = self._global_counts(group, sparsity, costs, orders, sizes)
        for name in group.names:
            pruned = torch.zeros(costs[name].numel(), dtype=torch.bool, device=costs[name].device)
            pruned[orders[name][: counts[name]]] = True
            shape = tuple(self.modules[name].weight.shape)
            self.masks[name] = pattern.build_mask(block_scores[name], pruned, shape).to(self.modules[name].weight.device)

    @staticmethod
    def _global_counts(group, sparsity, costs, orders, sizes) -> Dict[str, int]:
        """How many units each layer loses when all layers' units compete in one ranking, with every
        layer kept between its min and max sparsity. Ties go to the earlier layer, then the lower index."""
        config, per_unit = group.config, group.pattern.elements_per_unit
        names = group.names
        low_sparsity = min(config.min_sparsity_per_layer, sparsity)
        low = {n: min(costs[n].numel(), math.ceil(low_sparsity * sizes[n] / per_unit - 1e-9)) for n in names}
        high = {n: max(low[n], min(costs[n].numel(), math.floor(config.max_sparsity_per_layer * sizes[n] / per_unit + 1e-9)))
                for n in names}
        wanted = round(sparsity * sum(sizes.values()) / per_unit)
        extra = max(0, min(wanted, sum(high.values())) - sum(low.values()))
        device = costs[names[0]].device
        candidates = [costs[n][orders[n][low[n]: high[n]]].to(device) for n in names]
        owners = torch.cat([torch.full((len(c),), i, dtype=torch.long, device=device) for i, c in enumerate(candidates)])
        chosen = owners[torch.sort(torch.cat(candidates), stable=True).indices[:extra]]
        taken = torch.bincount(chosen, minlength=len(names)).tolist()
        return {n: low[n] + taken[i] for i, n in enumerate(names)}

    # ---- reporting ----------------------------------------------------------------------------------
    def sparsity(self) -> float:
        """Masked fraction over all pruned weights."""
        pruned = sum(int((~mask).sum()) for mask in self.masks.values())
        total = sum(mask.numel() for mask in self.masks.values())
        return pruned / total if total else 0.0

    def group_sparsity(self) -> Dict[str, float]:
        result = {}
        for group in self.groups:
            pruned = sum(int((~self.masks[name]).sum()) for name in group.names)
            result[group.config.name] = pruned / sum(self.masks[name].numel() for name in group.names)
        return result

    def patterns(self) -> Dict[str, str]:
        return {name: group.pattern.name for group in self.groups for name in group.names}

    def sparsity_report(self) -> SparsityReport:
        return sparsity_report(self.model, self.patterns())

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, object]:
        return {
            "masks": {name: mask.clone() for name, mask in self.masks.items()},
            "scores": {name: score.clone() for name, score in self.scores.items()},
            "last_event_step": self.last_event_step,
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore masks and scores saved by ``state_dict``; the set of modules and shapes must match."""
        for key, current in (("masks", self.masks), ("scores", self.scores)):
            saved = state[key]
            if set(saved) != set(current):
                missing, unexpected = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
                raise ValueError(f"pruner state {key} do not match this model: missing {missing}, unexpected {unexpected}")
            for name, tensor in saved.items():
                if tuple(tensor.shape) != tuple(current[name].shape):
                    raise ValueError(f"pruner state {key}[{name!r}] has shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(current[name].shape)}")
                current[name] = tensor.to(device=current[name].device, dtype=current[name].dtype).clone()
        self.last_event_step = state.get("last_event_step")

    def save_state(self, directory: str) -> str:
        """Write masks and scores as safetensors (no pickle) into ``directory``."""
        from safetensors.torch import save_file

        state = self.state_dict()
        tensors = {f"mask.{n}": t.contiguous().cpu() for n, t in state["masks"].items()}
        tensors.update({f"score.{n}": t.contiguous().cpu() for n, t in state["scores"].items()})
        metadata = {"last_event_step": json.dumps(state["last_event_step"]), "config": json.dumps(state["config"])}
        path = os.path.join(directory, PRUNER_STATE_NAME)
        save_file(tensors, path, metadata=metadata)
        return path

    def load_state(self, directory: str) -> None:
        from safetensors import safe_open

        path = os.path.join(directory, PRUNER_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"no pruner state {PRUNER_STATE_NAME} in {directory!r}")
        masks, scores = {}, {}
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            for key in handle.keys():
                kind, name = key.split(".", 1)
                (masks if kind == "mask" else scores)[name] = handle.get_tensor(key)
        self.load_state_dict({"masks": masks, "scores": scores,
                              "last_event_step": json.loads(metadata.get("last_event_step", "null"))})
