"""``sparsity_report``: what is really zero in a model, per Linear layer, with two totals.

Sparsity is measured from the weights themselves (exact zeros), so the same report describes a model
during training, after saving, and after loading it back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from .modules import prunable_modules
from .sharding import full_shape, local_values, sum_over_shards

__all__ = ["LayerSparsity", "SparsityReport", "sparsity_report", "DENSE", "FROZEN"]

DENSE = "dense"
#: a frozen layer that a gradient criterion left dense (it has no gradient to score it by)
FROZEN = "frozen (not pruned)"


@dataclass
class LayerSparsity:
    name: str
    shape: List[int]
    pattern: str
    zeros: int
    numel: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Per-layer rows plus the totals over pruned layers and over every Linear weight (INC's "Gemm ratio")."""

    layers: List[LayerSparsity] = field(default_factory=list)
    #: set when training ended before the schedule reached its target (an early stop): what was reached
    target_not_reached: Optional[str] = None

    def _total(self, rows: List[LayerSparsity]) -> float:
        numel = sum(row.numel for row in rows)
        return sum(row.zeros for row in rows) / numel if numel else 0.0

    @property
    def pruned_sparsity(self) -> float:
        return self._total([row for row in self.layers if row.pattern not in (DENSE, FROZEN)])

    @property
    def linear_sparsity(self) -> float:
        return self._total(self.layers)

    def to_dict(self) -> Dict[str, object]:
        return {
            "sparsity_pruned_layers": round(self.pruned_sparsity, 6),
            "sparsity_all_linear": round(self.linear_sparsity, 6),
            "layers": [dict(asdict(row), sparsity=round(row.sparsity, 6)) for row in self.layers],
            **({"target_reached": False, "target_not_reached": self.target_not_reached}
               if self.target_not_reached else {}),
        }

    def to_markdown(self) -> str:
        lines = ["| layer | shape | pattern | sparsity |", "|---|---|---|---|"]
        for row in self.layers:
            lines.append(f"| {row.name} | {'x'.join(map(str, row.shape))} | {row.pattern} | {row.sparsity:.4f} |")
        lines.append(f"| **total, pruned layers** | | | **{self.pruned_sparsity:.4f}** |")
        lines.append(f"| **total, all Linear weights** | | | **{self.linear_sparsity:.4f}** |")
        if self.target_not_reached:
            lines += ["", f"**Target not reached:** {self.target_not_reached}"]
        return "\n".join(lines)


@torch.no_grad()
def sparsity_report(model: nn.Module, patterns: Optional[Dict[str, str]] = None) -> SparsityReport:
    """Rows for every ``nn.Linear`` (and ``Conv1D``). ``patterns`` maps pruned layer names to their pattern;
    without it, a layer counts as pruned when any of its weights is exactly zero. Under FSDP2 the zeros of every
    rank's shard are summed (a collective: every rank calls it)."""
    rows = []
    modules = prunable_modules(model)
    weights = [module.weight for module in modules.values()]
    all_zeros = sum_over_shards(weights, [int((local_values(weight) == 0).sum()) for weight in weights])
    for (name, module), zeros in zip(modules.items(), all_zeros):
        weight = module.weight
        if patterns is None:
            pattern = "sparse" if zeros else DENSE
        else:
            pattern = patterns.get(name, DENSE)
        shape = full_shape(weight)
        rows.append(LayerSparsity(name, list(shape), pattern, zeros, shape.numel()))
    return SparsityReport(rows)
