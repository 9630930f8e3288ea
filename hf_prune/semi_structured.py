"""2:4 export: turn 2:4-masked Linear weights into ``torch.sparse`` semi-structured tensors (sparse tensor cores).

Only NVIDIA GPUs with sparse tensor cores (Ampere and newer) can run these faster, only in fp16/bf16 (or int8), and
only for weights whose shape meets the kernel's tiling rules. Everything else stays dense, and the report says
which layer and why. On a CPU there is nothing to gain: :func:`to_semi_structured` refuses, and
:func:`semi_structured_plan` still tells which layers would convert. Measured on an H200 with torch 2.11 the
converted layers are 4-11x *slower* than dense (cuSPARSELt costs about 1 ms a call; the CUTLASS backend runs on
compute capability 8.x only; benchmarks/RESULTS.md): time the converted model on the target GPU before deploying.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["SemiStructuredPlan", "semi_structured_plan", "to_semi_structured", "is_two_four"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
# the strictest minimum (rows, columns) tile of torch's backends (CUTLASS) for fp16/bf16 weights
_FALLBACK_TILE = (32, 64)


@dataclass
class SemiStructuredPlan:
    """Layers that meet the 2:4 and shape rules, and every other Linear with the reason it stays dense."""

    convertible: List[str] = field(default_factory=list)
    dense: Dict[str, str] = field(default_factory=dict)


def is_two_four(weight: torch.Tensor) -> bool:
    """At most 2 non-zeros in every 4 consecutive weights along the input dimension."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.view(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def _min_tile(dtype: torch.dtype) -> tuple:
    """(rows, columns) multiples the default semi-structured backend needs for ``dtype``."""
    try:
        from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT, \
            SparseSemiStructuredTensorCUTLASS

        backend = SparseSemiStructuredTensorCUTLASS if SparseSemiStructuredTensor._FORCE_CUTLASS \
            else SparseSemiStructuredTensorCUSPARSELT
        constraints = backend._DTYPE_SHAPE_CONSTRAINTS[dtype]
        cutlass = SparseSemiStructuredTensorCUTLASS._DTYPE_SHAPE_CONSTRAINTS[dtype]
        # the default backend falls back to CUTLASS when cuSPARSELt is missing: meet both
        return (max(constraints.sparse_min_rows, cutlass.sparse_min_rows),
                max(constraints.sparse_min_cols, cutlass.sparse_min_cols))
    except (ImportError, AttributeError, KeyError):
        return _FALLBACK_TILE


def semi_structured_plan(model: nn.Module, dtype: Optional[torch.dtype] = None) -> SemiStructuredPlan:
    """Which Linear weights of ``model`` can become semi-structured in ``dtype`` (default: their own)."""
    plan = SemiStructuredPlan()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        target = dtype or weight.dtype
        rows, cols = _min_tile(target) if target in SUPPORTED_DTYPES else _FALLBACK_TILE
        if target not in SUPPORTED_DTYPES:
            plan.dense[name] = f"dtype {target} (semi-structured needs float16 or bfloat16)"
        elif not is_two_four(weight):
            plan.dense[name] = "weight is not 2:4 sparse"
        elif weight.shape[0] % rows or weight.shape[1] % cols:
            plan.dense[name] = (f"shape {tuple(weight.shape)}: out_features must be a multiple of {rows} and "
                                f"in_features of {cols}")
        else:
            plan.convertible.append(name)
    return plan


@torch.no_grad()
def to_semi_structured(model: nn.Module) -> SemiStructuredPlan:
    """Replace, in place, every eligible Linear weight by ``torch.sparse.to_sparse_semi_structured`` of it.

    The model must be on a CUDA device in float16 or bfloat16 (``model.half().cuda()``). A layer the kernel
    still refuses stays dense, with torch's reason in the returned plan.
    """
    parameter = next(model.parameters())
    if parameter.device.type != "cuda" or parameter.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"to_semi_structured needs the model on a CUDA GPU in float16 or bfloat16; it is on "
                         f"{parameter.device} in {parameter.dtype}. Semi-structured kernels exist only for CUDA.")
    from torch.sparse import to_sparse_semi_structured

    plan = semi_structured_plan(model)
    converted = []
    for name in plan.convertible:
        module = model.get_submodule(name)
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight), requires_grad=False)
            converted.append(name)
        except RuntimeError as err:
            plan.dense[name] = f"torch refused: {str(err).splitlines()[0]}"
    plan.convertible = converted
    logger.info("semi-structured 2:4: %d Linear layers converted, %d left dense", len(converted), len(plan.dense))
    return plan
