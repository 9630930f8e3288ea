"""Sparsity patterns: how a Linear weight ``[out_features, in_features]`` is cut into prunable units.

A pattern owns geometry only. It turns element scores into block scores, block scores into the cost of
pruning each unit, and a set of pruned units back into an element mask. Scores come from
:mod:`hf_prune.criteria`; which units to prune is decided by :mod:`hf_prune.pruner`.

``"NxM"`` — blocks of N consecutive output rows by M consecutive input columns (INC's orientation:
``"4x1"`` is 4 rows x 1 column, ``"1x1"`` is unstructured). A unit is one block.

``"N:M"`` — semi-structured, the NVIDIA / ``torch.sparse`` convention: at most N non-zeros in every M
consecutive weights along the input dimension. A unit is one group of M weights; pruning it removes its
M - N lowest-scoring weights, so a layer can be at most ``1 - N/M`` sparse.

``"lock"`` — no pruning: the zeros the loaded weights already have become the mask and stay exactly zero while
the model fine-tunes (a sparse checkpoint from hf_prune, INC, SparseML, or a one-shot SparseGPT/Wanda model).

``"head"`` / ``"channel"`` — structured: a unit is a whole attention head or FFN channel, which spans several
Linear modules (:mod:`hf_prune.architectures` says which); pruned units can be removed for real
(:func:`hf_prune.slim`).
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Optional, Tuple

import torch

from .registry import Registry
from .value_checks import short

__all__ = ["Pattern", "WeightPattern", "BlockPattern", "SemiStructuredPattern", "StructuredPattern", "LockPattern",
           "PATTERN_FAMILIES", "get_pattern"]


class Pattern(ABC):
    """Geometry of one pattern. Subclasses are stateless and cheap to build."""

    name: str
    #: True when a unit spans several modules (heads, channels) rather than lying inside one weight
    structured: bool = False
    #: True when the mask is the loaded weights' zeros (``"lock"``): nothing is scored, ranked or scheduled
    locked: bool = False

    @property
    def max_sparsity(self) -> float:
        """Largest sparsity a layer can reach with this pattern."""
        return 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class WeightPattern(Pattern):
    """A pattern whose units lie inside one weight: each Linear is ranked and masked on its own."""

    @abstractmethod
    def check_shape(self, layer_name: str, shape: Tuple[int, ...]) -> None:
        """Raise ``ValueError`` naming the layer and its shape if the pattern cannot tile it."""

    @abstractmethod
    def score_shape(self, shape: Tuple[int, int]) -> Tuple[int, int]:
        """Shape of the score tensor kept for a weight of ``shape`` (one score per block)."""

    @abstractmethod
    def reduce(self, element_scores: torch.Tensor, how: str) -> torch.Tensor:
        """Turn element scores (weight-shaped) into block scores (``score_shape``) by ``how`` = sum | mean."""

    @abstractmethod
    def unit_costs(self, block_scores: torch.Tensor) -> torch.Tensor:
        """1-D cost of pruning each unit (lower = prune first)."""

    @property
    @abstractmethod
    def elements_per_unit(self) -> int:
        """How many weights pruning one unit zeroes."""

    @abstractmethod
    def build_mask(self, block_scores: torch.Tensor, pruned_units: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
        """Element keep-mask (bool, weight-shaped) with ``pruned_units`` (1-D bool) removed."""

    @property
    def block_rows(self) -> int:
        """Output rows one row of block scores covers (a row-sharded weight must not split them)."""
        return 1

    def blocks_view(self, weight_like: torch.Tensor) -> torch.Tensor:
        """A view of an ``[out, in]`` tensor whose leading dims index the blocks in score order and whose trailing
        dims hold each block's elements: copied into a flat buffer, every block's elements are contiguous, so one
        reduction over the buffer scores every layer at once (:mod:`hf_prune.score_buffers`)."""
        return weight_like.unsqueeze(-1)  # one score per element


class BlockPattern(WeightPattern):
    """``NxM``: blocks of ``rows`` output rows x ``cols`` input columns."""

    syntax = "'NxM' blocks of N output rows x M input columns (e.g. '4x1', '2x2', '1x4'; '1x1' = unstructured)"
    _regex = re.compile(r"^(\d+)x(\d+)$")

    def __init__(self, rows: int, cols: int) -> None:
        if rows < 1 or cols < 1:
            raise ValueError(f"block pattern '{rows}x{cols}' needs positive sizes")
        self.rows, self.cols = rows, cols
        self.name = f"{rows}x{cols}"

    @classmethod
    def parse(cls, name: str) -> Optional["BlockPattern"]:
        match = cls._regex.match(name)
        return cls(int(match.group(1)), int(match.group(2))) if match else None

    def check_shape(self, layer_name: str, shape: Tuple[int, ...]) -> None:
        if len(shape) != 2 or shape[0] % self.rows or shape[1] % self.cols:
            raise ValueError(
                f"layer {layer_name!r} has weight shape {tuple(shape)}, which pattern {self.name!r} cannot tile: "
                f"out_features must be divisible by {self.rows} and in_features by {self.cols}; "
                f"exclude the layer or choose another pattern"
            )

    def score_shape(self, shape: Tuple[int, int]) -> Tuple[int, int]:
        return shape[0] // self.rows, shape[1] // self.cols

    def reduce(self, element_scores: torch.Tensor, how: str) -> torch.Tensor:
        out, inp = element_scores.shape
        if self.cols == 1:  # contiguous reductions are faster than the general 4-d one
            blocks, dims = element_scores.view(out // self.rows, self.rows, inp), (1,)
        elif self.rows == 1:
            blocks, dims = element_scores.view(out, inp // self.cols, self.cols), (2,)
        else:
            blocks, dims = element_scores.view(out // self.rows, self.rows, inp // self.cols, self.cols), (1, 3)
        return blocks.sum(dim=dims) if how == "sum" else blocks.mean(dim=dims)

    def unit_costs(self, block_scores: torch.Tensor) -> torch.Tensor:
        return block_scores.reshape(-1)

    @property
    def block_rows(self) -> int:
        return self.rows

    def blocks_view(self, weight_like: torch.Tensor) -> torch.Tensor:
        out, inp = weight_like.shape
        blocks = weight_like.unflatten(1, (inp // self.cols, self.cols)).unflatten(0, (out // self.rows, self.rows))
        return blocks.permute(0, 2, 1, 3)  # [out/N, in/M, N, M]

    @property
    def elements_per_unit(self) -> int:
        return self.rows * self.cols

    def build_mask(self, block_scores: torch.Tensor, pruned_units: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
        keep = ~pruned_units.view(block_scores.shape)
        return keep.repeat_interleave(self.rows, dim=0).repeat_interleave(self.cols, dim=1)


class SemiStructuredPattern(WeightPattern):
    """``N:M``: at most ``n`` non-zeros in each group of ``m`` consecutive weights along the input dimension."""

    syntax = "'N:M' semi-structured, at most N non-zeros in every M inputs (e.g. '2:4', '1:4', '4:8')"
    _regex = re.compile(r"^(\d+):(\d+)$")

    def __init__(self, n: int, m: int) -> None:
        if not 0 < n < m:
            raise ValueError(f"semi-structured pattern '{n}:{m}' needs 0 < N < M")
        self.n, self.m = n, m
        self.name = f"{n}:{m}"

    @classmethod
    def parse(cls, name: str) -> Optional["SemiStructuredPattern"]:
        match = cls._regex.match(name)
        return cls(int(match.group(1)), int(match.group(2))) if match else None

    @property
    def max_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def check_shape(self, layer_name: str, shape: Tuple[int, ...]) -> None:
        if len(shape) != 2 or shape[1] % self.m:
            raise ValueError(
                f"layer {layer_name!r} has weight shape {tuple(shape)}, which pattern {self.name!r} cannot tile: "
                f"in_features must be divisible by {self.m}; exclude the layer or choose another pattern"
            )

    def score_shape(self, shape: Tuple[int, int]) -> Tuple[int, int]:
        return tuple(shape)

    def reduce(self, element_scores: torch.Tensor, how: str) -> torch.Tensor:
        return element_scores  # each weight competes inside its group, so scores stay per element

    def _grouped_order(self, block_scores: torch.Tensor) -> torch.Tensor:
        out, inp = block_scores.shape
        return torch.sort(block_scores.view(out, inp // self.m, self.m), dim=-1, stable=True)

    def unit_costs(self, block_scores: torch.Tensor) -> torch.Tensor:
        lowest = self._grouped_order(block_scores).values[..., : self.m - self.n]
        return lowest.sum(dim=-1).reshape(-1)

    @property
    def elements_per_unit(self) -> int:
        return self.m - self.n

    def build_mask(self, block_scores: torch.Tensor, pruned_units: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
        lowest_idx = self._grouped_order(block_scores).indices[..., : self.m - self.n]
        drop = torch.zeros(shape[0], shape[1] // self.m, self.m, dtype=torch.bool, device=block_scores.device)
        drop.scatter_(-1, lowest_idx, True)
        drop &= pruned_units.view(shape[0], shape[1] // self.m, 1)
        return ~drop.view(shape)


class StructuredPattern(Pattern):
    """``"head"`` (attention heads) or ``"channel"`` (FFN channels; INC's name ``"channelx1"`` is an alias).

    A unit is ``unit_size`` consecutive output rows of each *row* module (query/key/value, or the FFN up
    projection), with their biases, plus the same input columns of each *column* module (attention output, or
    the FFN down projection). Its score is the sum of its members' element scores.
    """

    syntax = "'head' (whole attention heads) or 'channel' (FFN channels, alias 'channelx1')"
    structured = True
    _aliases = {"head": "head", "channel": "channel", "channelx1": "channel"}

    def __init__(self, kind: str) -> None:
        self.kind = self.name = kind

    @classmethod
    def parse(cls, name: str) -> Optional["StructuredPattern"]:
        kind = cls._aliases.get(name)
        return cls(kind) if kind else None

    def unit_scores(self, element_scores: torch.Tensor, role: str, unit_size: int) -> torch.Tensor:
        """1-D score per unit of one member module: the sum over the unit's rows or columns."""
        out, inp = element_scores.shape
        if role == "rows":
            return element_scores.view(out // unit_size, unit_size * inp).sum(dim=1)
        return element_scores.view(out, inp // unit_size, unit_size).sum(dim=(0, 2))

    def unit_view(self, weight_like: torch.Tensor, role: str, unit_size: int) -> torch.Tensor:
        """Like :meth:`WeightPattern.blocks_view` for one member module: leading dim = units, the rest = the
        unit's elements (its rows, or its columns across every row)."""
        out, inp = weight_like.shape
        if role == "rows":
            return weight_like.unflatten(0, (out // unit_size, unit_size))
        return weight_like.unflatten(1, (inp // unit_size, unit_size)).permute(1, 0, 2)

    def unit_mask(self, keep_units: torch.Tensor, role: str, unit_size: int, shape: Tuple[int, int]) -> torch.Tensor:
        """Element keep-mask of one member module from the 1-D keep-mask of its block's units."""
        keep = keep_units.repeat_interleave(unit_size)
        mask = keep.view(-1, 1).expand(shape) if role == "rows" else keep.view(1, -1).expand(shape)
        return mask.contiguous()


class LockPattern(Pattern):
    """``"lock"``: keep the loaded weights' zeros, prune nothing more."""

    syntax = "'lock' (keep the zeros the loaded weights already have)"
    name = "lock"
    locked = True

    @classmethod
    def parse(cls, name: str) -> Optional["LockPattern"]:
        return cls() if name == "lock" else None


PATTERN_FAMILIES: Registry = Registry("pattern family")
PATTERN_FAMILIES.register("block", BlockPattern)
PATTERN_FAMILIES.register("semi_structured", SemiStructuredPattern)
PATTERN_FAMILIES.register("structured", StructuredPattern)
PATTERN_FAMILIES.register("lock", LockPattern)


def get_pattern(name: str) -> Pattern:
    """Parse a pattern name such as ``"4x1"`` or ``"2:4"``; unknown names raise ``ValueError``."""
    allowed = "; ".join(PATTERN_FAMILIES.get(family).syntax for family in PATTERN_FAMILIES)
    if isinstance(name, str) and not name.isascii():  # int() reads full-width digits: '４x１' would pass as 4x1
        raise ValueError(f"pruning pattern {short(name)} must be written in ASCII characters; allowed: {allowed}")
    if isinstance(name, str):
        for family in PATTERN_FAMILIES:
            try:
                pattern = PATTERN_FAMILIES.get(family).parse(name.strip().lower())
            except ValueError as err:
                raise ValueError(f"invalid pruning pattern {short(name)}: {err}; allowed: {allowed}") from None
            if pattern is not None:
                return pattern
    raise ValueError(f"unknown pruning pattern {short(name)}; allowed: {allowed}")
