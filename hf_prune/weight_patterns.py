"""What a weight's zeros really are, read from the weight alone: the pattern each layer satisfies.

Used by ``hf-prune report`` on any model folder, whatever tool made it: a layer is ``dense`` (no zeros),
``rows``/``columns`` removed (every zero lies in a whole zero output row or input column: heads and channels),
``RxC blocks`` (every zero lies in an all-zero block of R output rows by C input columns; the largest such block of
the usual shapes), ``N:M`` (at most N <= M/2 non-zeros in every M consecutive inputs, the smallest such N for M = 4
or 8), or ``unstructured``. Several may hold at once; the first in this order is named.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch

__all__ = ["LayerPattern", "weight_pattern", "BLOCK_SHAPES", "FAMILIES"]

#: the kinds of pattern a weight can satisfy, in the order they are tried after "dense"
FAMILIES = ("dense", "removed", "blocks", "N:M", "unstructured")

#: block shapes tried, largest first (rows x columns, hf_prune's and INC's orientation)
BLOCK_SHAPES = ((16, 1), (8, 1), (1, 8), (4, 4), (4, 1), (1, 4), (2, 2), (2, 1), (1, 2))


@dataclass
class LayerPattern:
    name: str
    shape: List[int]
    zeros: int
    numel: int
    pattern: str
    zero_rows: int
    zero_columns: int
    #: the kind of pattern, one of :data:`FAMILIES` (what the picture colours by); not part of the JSON report
    family: str = field(default="dense", compare=False)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def to_dict(self) -> Dict[str, object]:
        row = asdict(self)
        del row["family"]
        return dict(row, sparsity=round(self.sparsity, 6))


@torch.no_grad()
def weight_pattern(name: str, weight: torch.Tensor) -> LayerPattern:
    """The pattern a 2-D ``weight`` ``[out, in]`` satisfies (module docstring)."""
    zero = weight == 0
    zeros = int(zero.sum())
    rows, columns = int(zero.all(dim=1).sum()), int(zero.all(dim=0).sum())
    row = LayerPattern(name, list(weight.shape), zeros, weight.numel(), "dense", rows, columns)
    if zeros == 0:
        return row
    if rows * weight.shape[1] + columns * weight.shape[0] - rows * columns == zeros:
        row.pattern = " + ".join(part for part, count in (("rows removed", rows), ("columns removed", columns))
                                 if count)
        row.family = "removed"
        return row
    blocks = _blocks(zero, zeros)
    semi_structured = None if blocks else _semi_structured(zero)
    row.pattern = blocks or semi_structured or "unstructured"
    row.family = "blocks" if blocks else "N:M" if semi_structured else "unstructured"
    return row


def _semi_structured(zero: torch.Tensor) -> Optional[str]:
    for group in (4, 8):
        if zero.shape[1] % group:
            continue
        nonzeros = int((~zero).view(zero.shape[0], -1, group).sum(dim=-1).max())
        if nonzeros <= group // 2:   # 7:8 holds for most sparse weights by chance; only N <= M/2 is a pattern
            return f"{nonzeros}:{group}"
    return None


def _blocks(zero: torch.Tensor, zeros: int) -> Optional[str]:
    out, inp = zero.shape
    for block_rows, block_columns in BLOCK_SHAPES:
        if out % block_rows or inp % block_columns:
            continue
        blocks = zero.view(out // block_rows, block_rows, inp // block_columns, block_columns).all(dim=(1, 3))
        if int(blocks.sum()) * block_rows * block_columns == zeros:
            return f"{block_rows}x{block_columns} blocks"
    return None
