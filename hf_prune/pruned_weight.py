"""One record per pruned weight, built once when the :class:`~hf_prune.pruner.Pruner` is: its module, its group
(pattern, criterion, schedule), its orientation, its structured role and its shard geometry.

The step and the events then loop over records instead of asking groups, patterns and sharding about a layer name
again at every turn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from .groups import PruningGroup
from .modules import is_transposed
from .sharding import local_gradient, local_shape, local_values

__all__ = ["PrunedWeight"]


@dataclass
class PrunedWeight:
    """A pruned Linear (or Conv1D) weight and everything the pruner needs to know about it."""

    name: str
    module: nn.Module
    group: PruningGroup

    def __post_init__(self) -> None:
        self.transposed = is_transposed(self.module)
        #: ``"rows"`` / ``"columns"`` for a member of a head or channel block, None for a weight pattern
        self.role: Optional[str] = self.group.roles[self.name][1] if self.name in self.group.roles else None
        self.unit_size = self.group.roles[self.name][0].size_of(self.name) if self.role else 1
        #: scores kept for this rank's part of the weight (per block, per unit); empty for unscored weights
        shape = local_shape(self.module.weight)
        locked = self.group.pattern.locked
        self.local_score_shape: Tuple[int, ...] = () if locked else tuple(self.group.score_shape(
            self.name, tuple(shape[::-1]) if self.transposed else tuple(shape)))
        #: weight rows one dim-0 score entry covers (None: every entry sums over all rows, a per-rank partial sum)
        self.rows_per_score: Optional[int] = None if locked else self.group.rows_per_score(self.name)

    @property
    def scored_by_gradient(self) -> bool:
        return self.group.criterion.needs_gradient and not self.group.pattern.locked

    @property
    def momentum(self) -> float:
        return self.group.momentum

    def oriented(self, tensor: torch.Tensor) -> torch.Tensor:
        """A weight-shaped tensor seen as ``[out, in]`` (a view)."""
        return tensor.t() if self.transposed else tensor

    def local_weight(self) -> torch.Tensor:
        """This rank's part of the weight, ``[out, in]``."""
        return self.oriented(local_values(self.module.weight))

    def local_gradient(self) -> Optional[torch.Tensor]:
        """This rank's part of the gradient, ``[out, in]``; None before any backward."""
        gradient = local_gradient(self.module.weight)
        return None if gradient is None else self.oriented(gradient)

    def blocks_view(self, weight_like: torch.Tensor) -> torch.Tensor:
        """``weight_like`` (``[out, in]``) with one leading entry per score and each score's elements trailing."""
        if self.role is not None:
            return self.group.pattern.unit_view(weight_like, self.role, self.unit_size)
        return self.group.pattern.blocks_view(weight_like)

    @property
    def elements_per_score(self) -> int:
        """How many weights of this rank's part one score sums (``blocks_view``'s trailing size)."""
        count = 1
        for size in local_shape(self.module.weight):
            count *= size
        scores = 1
        for size in self.local_score_shape:
            scores *= size
        return count // scores if scores else 1
