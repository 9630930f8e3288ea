"""Masks and scores of sharded weights (FSDP2, DeepSpeed ZeRO-3): kept per shard, ranked on full tensors at events.

Under FSDP2 every pruned weight is a ``DTensor`` whose local part is a contiguous range of output rows
(``Shard(0)`` on a 1-D device mesh). Under ZeRO-3 a rank holds a contiguous slice of the flattened weight
(``param.ds_tensor``, plus its fp32 master copy in the optimizer), which is a range of rows when the slice size is a
multiple of the row length (checked). Every step stays local and needs no communication: the sharded gradient is
already averaged over ranks, so ``|w * grad|`` and the momentum update act on the local rows, and masking is a
local multiply (under ZeRO-3, of the working partition and the fp32 master alike). Only a pruning event talks to
other ranks: the block scores are gathered (rows concatenated; the per-unit partial sums of a head/channel
*column* module summed), so every rank ranks the same full scores, builds the same full masks as a single process
would, and keeps its own rows. The pruner state is gathered the same way for a checkpoint (one file, the format of
an unsharded run) and sliced again on resume, for any world size.

A block of a pattern must not straddle two shards: its rows (4 for ``4x1``, a head's ``head_dim`` rows) must
divide every shard's offset and length, which is checked before training. Replicated parameters (DDP, one
process) use :class:`WeightShards` as a no-op.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .modules import is_transposed

__all__ = ["RowShard", "WeightShards", "is_dtensor", "is_zero3", "full_shape", "local_tensor", "local_shape",
           "local_values", "local_gradient", "mask_local_", "mask_all_", "sum_over_shards"]


def is_dtensor(tensor) -> bool:
    return type(tensor).__name__ == "DTensor" or type(getattr(tensor, "data", None)).__name__ == "DTensor"


def is_zero3(tensor) -> bool:
    """A DeepSpeed ZeRO-3 partitioned parameter (outside forward its ``shape`` may be an empty placeholder)."""
    return hasattr(tensor, "ds_id") and hasattr(tensor, "ds_tensor")


def _persistent(tensor) -> bool:
    """A small ZeRO-3 parameter DeepSpeed keeps whole on every rank while it trains (below
    ``stage3_param_persistence_threshold``): the forward reads the whole copy, so masks of it are whole too."""
    return is_zero3(tensor) and bool(getattr(tensor, "ds_persist", False))


def _split(tensor) -> bool:
    """True when each rank holds only a part of ``tensor``'s values (FSDP2, non-persistent ZeRO-3)."""
    return is_dtensor(tensor) or (is_zero3(tensor) and not _persistent(tensor))


def full_shape(tensor: torch.Tensor) -> torch.Size:
    """The shape of the whole parameter, also for a ZeRO-3 partition."""
    return tensor.ds_shape if is_zero3(tensor) else tensor.shape


def _zero3_span(param) -> Tuple[int, int, int]:
    """(partition size, start, valid elements) of this rank's slice of the flattened ZeRO-3 parameter."""
    import torch.distributed as dist

    size = param.ds_tensor.numel()
    start = dist.get_rank(param.ds_process_group) * size
    return size, start, max(0, min(size, param.ds_numel - start))


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The rank's own part of a sharded parameter, sharing its storage (writes reach the parameter): a
    ``DTensor``'s local rows, a ZeRO-3 working partition (as rows where it holds whole rows), the whole copy of a
    persistent ZeRO-3 parameter; others as they are."""
    if is_dtensor(tensor):
        return tensor.to_local()
    if _persistent(tensor):
        return tensor.data
    if is_zero3(tensor):
        return _partition_rows(tensor, tensor.ds_tensor)
    return tensor


def _partition_rows(param, partition: torch.Tensor) -> torch.Tensor:
    """A flat ZeRO-3 partition of ``param`` (its values or its gradient), as rows where it holds whole rows."""
    _, _, valid = _zero3_span(param)
    flat, row = partition.view(-1)[:valid], math.prod(full_shape(param)[1:])
    return flat.view(-1, *full_shape(param)[1:]) if valid % row == 0 else flat


def local_shape(tensor: torch.Tensor) -> Tuple[int, ...]:
    """Shape of ``local_tensor(tensor)``, also before a persistent ZeRO-3 parameter is first gathered."""
    if _persistent(tensor):
        return tuple(full_shape(tensor))
    return tuple(local_tensor(tensor).shape)


def local_values(tensor: torch.Tensor) -> torch.Tensor:
    """``local_tensor(tensor)`` for reading; a persistent ZeRO-3 parameter not gathered yet (before the first
    forward) is read through DeepSpeed's gather (a collective: every rank calls it)."""
    if _persistent(tensor) and tensor.data.numel() == 0:
        import deepspeed

        with deepspeed.zero.GatheredParameters([tensor]):
            return tensor.data.detach().clone()
    return local_tensor(tensor)


def local_gradient(param: torch.Tensor) -> Optional[torch.Tensor]:
    """The gradient of ``local_tensor(param)``, laid out like it; ``None`` before any backward. Under ZeRO-3 it is
    DeepSpeed's reduced fp32 gradient partition, which exists between the engine's backward and its step only
    (a persistent parameter's whole gradient is gathered from the partitions: a collective, every rank calls it)."""
    if not is_zero3(param):
        return local_tensor(param.grad) if param.grad is not None else None
    optimizer = getattr(param, "_z3_optimizer", None)
    if optimizer is None or not param.requires_grad:
        return None
    if _persistent(param):
        return optimizer.get_fp32_grad_for_param(param)  # the same as deepspeed.utils.safe_get_full_grad's path
    from deepspeed.utils import safe_get_local_grad

    return _partition_rows(param, safe_get_local_grad(param))


def mask_local_(param: torch.Tensor, mask: torch.Tensor) -> None:
    """Multiply the rank's part of ``param`` by ``mask`` (of ``local_tensor(param)``'s shape) in place. Under
    ZeRO-3 every copy: the whole one of a persistent parameter, the working partition, and the optimizer's fp32
    master partition, from which DeepSpeed rewrites the others at its next step."""
    local = local_tensor(param)
    if mask.device != local.device:
        mask = mask.to(local.device)
    if local.numel() or not _persistent(param):  # a persistent copy not gathered yet is rebuilt from the partition
        local.masked_fill_(mask == 0, 0)  # not a product: NaN x 0 is NaN, and a masked entry must be zero
    if not is_zero3(param):
        return
    size, start, valid = _zero3_span(param)
    flat_mask = mask.reshape(-1)[start: start + valid] if _persistent(param) else mask.reshape(-1)
    if _persistent(param):
        param.ds_tensor.view(-1)[:valid].mul_(flat_mask.to(param.ds_tensor.device))
    if param.requires_grad and getattr(param, "_z3_optimizer", None) is not None:
        from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param

        master = safe_get_local_fp32_param(param)
        if master is not None:
            masked = master.detach().clone()
            masked.view(-1)[:valid].mul_(flat_mask.to(masked.device))
            safe_set_local_fp32_param(param, masked)


def mask_all_(params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], finite: bool = True) -> None:
    """:func:`mask_local_` of each pair; the plain tensors (not sharded, mask beside them) in one foreach call,
    so masking a model costs a few kernel launches instead of one per layer (which, on a GPU, is the cost). The
    product is exact only for finite weights (NaN x 0 is NaN): with ``finite=False`` each plain tensor is masked
    by ``masked_fill_`` instead, so masked entries are zero whatever the others hold."""
    plain_params, plain_masks = [], []
    for param, mask in zip(params, masks):
        if is_dtensor(param) or is_zero3(param) or mask.device != param.device:
            mask_local_(param, mask)
        else:
            plain_params.append(param)
            plain_masks.append(mask)
    if plain_params and finite:
        torch._foreach_mul_(plain_params, plain_masks)
    for param, mask in zip(plain_params if not finite else [], plain_masks):
        param.masked_fill_(mask == 0, 0)


def _shard_group(tensor):
    return tensor.device_mesh.get_group() if is_dtensor(tensor) else tensor.ds_process_group


def sum_over_shards(weights: Sequence[torch.Tensor], counts: Sequence[int]) -> Tuple[int, ...]:
    """``counts[i]`` counted on the local part of ``weights[i]``: summed over ranks for the sharded weights (a
    collective every rank calls), kept as they are for the others."""
    sharded = [i for i, weight in enumerate(weights) if _split(weight)]
    if not sharded:
        return tuple(counts)
    import torch.distributed as dist

    first = weights[sharded[0]]
    summed = torch.tensor([counts[i] for i in sharded], dtype=torch.long, device=local_tensor(first).device)
    dist.all_reduce(summed, group=_shard_group(first))
    result = list(counts)
    for i, value in zip(sharded, summed.tolist()):
        result[i] = int(value)
    return tuple(result)


@dataclass(frozen=True)
class RowShard:
    """Which rows of a weight of ``full_rows`` rows each rank of ``group`` holds."""

    group: object          # torch.distributed ProcessGroup of the mesh
    rank: int
    offsets: Tuple[int, ...]
    lengths: Tuple[int, ...]
    full_rows: int

    @property
    def local_rows(self) -> slice:
        return slice(self.offsets[self.rank], self.offsets[self.rank] + self.lengths[self.rank])


def _zero3_row_shard(name: str, weight) -> RowShard:
    import torch.distributed as dist

    group, (rows, row) = weight.ds_process_group, tuple(full_shape(weight))
    size, _, _ = _zero3_span(weight)
    if size % row:
        raise ValueError(f"{name}.weight: ZeRO-3 gives each rank {size} of its {rows}x{row} elements, which is not a "
                         "whole number of rows, so masks cannot follow the partitions; use a world size that divides "
                         f"its {rows} rows, or FSDP2")
    world = dist.get_world_size(group)
    lengths = tuple(max(0, min(size, rows * row - r * size)) // row for r in range(world))
    return RowShard(group, dist.get_rank(group), tuple(r * size // row for r in range(world)), lengths, rows)


def _row_shard(name: str, weight: torch.Tensor) -> RowShard:
    import torch.distributed as dist
    from torch.distributed.tensor import Shard

    if is_zero3(weight):
        return _zero3_row_shard(name, weight)

    mesh, placements = weight.device_mesh, tuple(weight.placements)
    if mesh.ndim != 1 or len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise ValueError(f"{name}.weight is a DTensor placed {placements} on a {mesh.ndim}-D mesh: hf_prune prunes "
                         "FSDP2's row sharding only (Shard(0) on a 1-D mesh); tensor parallelism and HSDP are not "
                         "supported")
    group = mesh.get_group()
    local_rows = torch.tensor([weight.to_local().shape[0]], dtype=torch.long, device=weight.to_local().device)
    gathered = [torch.zeros_like(local_rows) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local_rows, group=group)
    lengths = tuple(int(t.item()) for t in gathered)
    offsets = tuple(sum(lengths[:i]) for i in range(len(lengths)))
    return RowShard(group, dist.get_rank(group), offsets, lengths, int(weight.shape[0]))


class WeightShards:
    """The row shards of the sharded weights among ``modules`` (none when nothing is sharded)."""

    def __init__(self, modules: Dict[str, nn.Module]) -> None:
        self.shards: Dict[str, RowShard] = {}
        self.device: Optional[torch.device] = None  # where collectives' tensors live (NCCL needs the GPU)
        #: True under ZeRO-3: gradients are read inside DeepSpeed's step (hf_prune.deepspeed_step), state is collective
        self.zero3 = False
        for name, module in modules.items():
            self.zero3 = self.zero3 or is_zero3(module.weight)
            if not _split(module.weight):
                continue
            if is_transposed(module):
                raise ValueError(f"{name} is a Conv1D (weight stored [in, out]) sharded across processes: hf_prune "
                                 "prunes sharded nn.Linear weights only; train this model under DDP")
            self.shards[name] = _row_shard(name, module.weight)
            self.device = local_tensor(module.weight).device

    @property
    def active(self) -> bool:
        """Some pruned weight is split by rows across ranks."""
        return bool(self.shards)

    @property
    def collective(self) -> bool:
        """State, sparsity and reports need every rank (a split weight, or any ZeRO-3 parameter, even a whole one)."""
        return self.active or self.zero3

    def check_rows(self, name: str, block_rows: int, what: str) -> None:
        """Refuse a shard boundary inside a block of ``block_rows`` rows: its score would be split across ranks."""
        shard = self.shards.get(name)
        if shard is None or block_rows == 1:
            return
        bad = [(offset, length) for offset, length in zip(shard.offsets, shard.lengths)
               if offset % block_rows or length % block_rows]
        if bad:
            raise ValueError(f"{name}: sharding splits its {shard.full_rows} rows into shards of {list(shard.lengths)} "
                             f"rows, and {what} spans {block_rows} rows, so a block would straddle two ranks; use a "
                             "world size that divides the rows into multiples of it, or another pattern")

    # ---- events and checkpoints: full tensors from shards, and back ---------------------------------------
    def gather_rows(self, name: str, local: torch.Tensor, rows_per_entry: int = 1) -> torch.Tensor:
        """Concatenate every rank's ``local`` along dim 0, where each entry covers ``rows_per_entry`` weight rows."""
        shard = self.shards.get(name)
        if shard is None:
            return local
        import torch.distributed as dist

        lengths = [length // rows_per_entry for length in shard.lengths]
        padded = torch.zeros((max(lengths), *local.shape[1:]), dtype=_wire_dtype(local), device=local.device)
        padded[: local.shape[0]] = local
        pieces = [torch.empty_like(padded) for _ in lengths]
        dist.all_gather(pieces, padded, group=shard.group)
        return torch.cat([piece[:length] for piece, length in zip(pieces, lengths)]).to(local.dtype)

    def sum_partials(self, name: str, local: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of per-rank partial scores (each rank summed its own rows)."""
        shard = self.shards.get(name)
        if shard is None:
            return local
        import torch.distributed as dist

        total = local.clone()
        dist.all_reduce(total, group=shard.group)
        return total

    def local_rows(self, name: str, full: torch.Tensor, rows_per_entry: int = 1) -> torch.Tensor:
        """This rank's entries of a full tensor (dim 0 covering the weight's rows, ``rows_per_entry`` each)."""
        shard = self.shards.get(name)
        if shard is None:
            return full
        rows = shard.local_rows
        return full[rows.start // rows_per_entry: rows.stop // rows_per_entry].clone()

    def local_partial(self, name: str, total: torch.Tensor) -> torch.Tensor:
        """A summed score split back into partials: rank 0 holds the total, the others zeros (sums stay exact)."""
        shard = self.shards.get(name)
        if shard is None or shard.rank == 0:
            return total
        return torch.zeros_like(total)

    def total(self, counts: Sequence[int]) -> Tuple[int, ...]:
        """``counts`` (of local shards) summed over the ranks that share the shards."""
        if not self.active:
            return tuple(counts)
        import torch.distributed as dist

        group = next(iter(self.shards.values())).group
        summed = torch.tensor(list(counts), dtype=torch.long, device=self.device)
        dist.all_reduce(summed, group=group)
        return tuple(int(value) for value in summed.tolist())


def _wire_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Collectives of some backends take no bool tensors: masks travel as uint8."""
    return torch.uint8 if tensor.dtype == torch.bool else tensor.dtype
