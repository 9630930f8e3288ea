"""Running scores of the gradient-ranked weights in flat buffers, updated by a fixed number of kernels a step.

Scores of weights that share a device, a criterion, a block size, a reduction, a momentum and a score dtype live
in one flat buffer (a bucket: fp32, or bf16 with ``score_dtype="bfloat16"``, where each step's update is computed
in fp32 and rounded once); each weight's scores are a view into it. A step copies every weight's gradient into a
transient flat buffer laid out block by block (:meth:`~hf_prune.pruned_weight.PrunedWeight.blocks_view`), so the
criterion, the block reduction, the finiteness check and the momentum update are each one kernel over the whole
bucket — a 48-layer model costs the same number of kernels as a 4-layer one. The transient buffer is cut into
chunks of at most ``CHUNK_ELEMENTS`` weights, so a large model costs one set of kernels per chunk, never a copy of
every gradient at once beyond what the previous per-layer code held.

A weight whose gradient is missing this step (a layer the forward did not use) keeps its scores unchanged, as
before: its chunk takes the per-weight path that step.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .criteria import fused_form
from .pruned_weight import PrunedWeight
from .sharding import local_shape

__all__ = ["ScoreBuffers", "CHUNK_ELEMENTS"]

#: most weights one transient work buffer holds (256 MiB in fp32)
CHUNK_ELEMENTS = 1 << 26


class _Chunk:
    """Consecutive records of a bucket whose scores are the range ``start:stop`` of the bucket's buffer."""

    def __init__(self, records: List[PrunedWeight], start: int, stop: int) -> None:
        self.records, self.start, self.stop = records, start, stop


class _Bucket:
    def __init__(self, records: List[PrunedWeight], device: torch.device, how: str, dtype: torch.dtype) -> None:
        self.records = records
        self.how = how
        self.momentum = records[0].momentum
        self.criterion = records[0].group.criterion
        self.elements_per_score = records[0].elements_per_score
        sizes = [_numel(record.local_score_shape) for record in records]
        self.scores = torch.zeros(sum(sizes), dtype=dtype, device=device)
        self.offsets: List[int] = [sum(sizes[:index]) for index in range(len(sizes) + 1)]
        self.chunks: List[_Chunk] = []
        first, elements = 0, 0
        for index, size in enumerate(sizes):
            weight_elements = size * self.elements_per_score
            if index > first and elements + weight_elements > CHUNK_ELEMENTS:
                self.chunks.append(_Chunk(records[first:index], self.offsets[first], self.offsets[index]))
                first, elements = index, 0
            elements += weight_elements
        self.chunks.append(_Chunk(records[first:], self.offsets[first], self.offsets[-1]))

    def views(self) -> Dict[str, torch.Tensor]:
        return {record.name: self.scores[self.offsets[index]:self.offsets[index + 1]].view(record.local_score_shape)
                for index, record in enumerate(self.records)}


def _numel(shape: Tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _fusable(record: PrunedWeight) -> bool:
    """A weight of a criterion of the fused form whose part on this rank is a 2-D ``[out, in]`` tensor (a flat
    ZeRO-3 partition is not)."""
    shape = local_shape(record.module.weight)
    return (fused_form(record.group.criterion) is not None and len(shape) == 2
            and _numel(record.local_score_shape) * record.elements_per_score == _numel(shape))


class ScoreBuffers:
    """Flat score buffers of the records ranked by gradients; ``views`` maps a weight's name to its scores."""

    def __init__(self, records: Sequence[PrunedWeight]) -> None:
        keyed: Dict[tuple, List[PrunedWeight]] = {}
        self.separate: List[PrunedWeight] = []  # scored one by one (their local part is not a plain matrix)
        self._separate_scores: Dict[str, torch.Tensor] = {}
        for record in records:
            if not record.scored_by_gradient:
                continue
            device = record.module.weight.device
            dtype = getattr(torch, record.group.config.score_dtype)
            if not _fusable(record):
                self.separate.append(record)
                self._separate_scores[record.name] = torch.zeros(record.local_score_shape, dtype=dtype, device=device)
                continue
            how = "sum" if record.role is not None or record.elements_per_score == 1 else record.group.config.block_reduce
            key = (str(device), type(record.group.criterion).__name__, record.elements_per_score, how, record.momentum,
                   dtype)
            keyed.setdefault(key, []).append(record)
        self.buckets = [_Bucket(members, members[0].module.weight.device, key[3], key[5])
                        for key, members in keyed.items()]
        self.views: Dict[str, torch.Tensor] = {}
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.views = {name: view for bucket in self.buckets for name, view in bucket.views().items()}
        self.views.update(self._separate_scores)

    def release(self) -> None:
        """Free every score (the schedule has had its last event: only the masks matter from now on)."""
        self.buckets, self.separate, self._separate_scores, self.views = [], [], {}, {}

    def state_bytes(self) -> int:
        return sum(view.numel() * view.element_size() for view in self.views.values())

    @torch.no_grad()
    def update(self, gradient_scale: float = 1.0) -> bool:
        """Fold this step's criterion into the scores; returns False (scores untouched) when a gradient is not
        finite (an fp16 overflow the optimizer will skip)."""
        self._follow_model()
        pending: List[Tuple[torch.Tensor, Optional[_Bucket], Optional[_Chunk], Optional[List[PrunedWeight]]]] = []
        for bucket in self.buckets:
            for chunk in bucket.chunks:
                gradients = [record.local_gradient() for record in chunk.records]
                if all(gradient is None for gradient in gradients):
                    continue
                if any(gradient is None for gradient in gradients):  # scored one by one this step
                    for record, gradient in zip(chunk.records, gradients):
                        if gradient is not None:
                            pending.append((self._one(record, gradient, gradient_scale), None, None, [record]))
                    continue
                pending.append((self._chunk_scores(bucket, chunk, gradients, gradient_scale), bucket, chunk, None))
        for record in self.separate:
            gradient = record.local_gradient()
            if gradient is not None:
                pending.append((self._one(record, gradient, gradient_scale), None, None, [record]))
        if not pending:
            return True
        device = pending[0][0].device
        totals = torch.stack([total if total.device == device else total.to(device)
                              for total in (block.sum() for block, _, _, _ in pending)])
        if not bool(torch.isfinite(totals.sum())):
            return False
        for block, bucket, chunk, records in pending:
            if bucket is not None:
                self._fold(bucket.scores[chunk.start:chunk.stop], block, bucket.momentum)
            else:
                record = records[0]
                self._fold(self.views[record.name], block.view(record.local_score_shape), record.momentum)
        return True

    @staticmethod
    def _fold(scores: torch.Tensor, block: torch.Tensor, momentum: float) -> None:
        if momentum == 0.0:
            scores.copy_(block)
        elif scores.dtype == torch.float32:
            scores.mul_(momentum).add_(block)
        else:  # computed in fp32, rounded once
            scores.copy_(scores.float().mul_(momentum).add_(block))

    def _follow_model(self) -> None:
        """Scores follow their weights when the model moved to another device after the pruner was built."""
        moved = False
        for bucket in self.buckets:
            device = bucket.records[0].module.weight.device
            if bucket.scores.device != device:
                bucket.scores, moved = bucket.scores.to(device), True
        for record in self.separate:
            scores = self._separate_scores[record.name]
            if scores.device != record.module.weight.device:
                self._separate_scores[record.name], moved = scores.to(record.module.weight.device), True
        if moved:
            self._refresh_views()

    @staticmethod
    def _chunk_scores(bucket: _Bucket, chunk: _Chunk, gradients: List[torch.Tensor], scale: float) -> torch.Tensor:
        """Block scores of a chunk: its gradients (times its weights for SNIP) laid out block by block in one
        buffer, then one absolute value and one reduction over all of them."""
        gradient_views = [record.blocks_view(gradient) for record, gradient in zip(chunk.records, gradients)]
        elements = (chunk.stop - chunk.start) * bucket.elements_per_score
        work = torch.empty(elements, dtype=torch.float32, device=gradients[0].device)
        segments, offset = [], 0
        for view in gradient_views:
            segments.append(work[offset:offset + view.numel()].view(view.shape))
            offset += view.numel()
        torch._foreach_copy_(segments, gradient_views)
        if scale != 1.0:
            work.mul_(scale)
        if fused_form(bucket.criterion):
            torch._foreach_mul_(segments, [record.blocks_view(record.local_weight()) for record in chunk.records])
        work.abs_()
        if bucket.elements_per_score == 1:
            return work
        blocks = work.view(-1, bucket.elements_per_score)
        return blocks.sum(dim=1) if bucket.how == "sum" else blocks.mean(dim=1)

    @staticmethod
    def _one(record: PrunedWeight, gradient: torch.Tensor, scale: float) -> torch.Tensor:
        if scale != 1.0:
            gradient = gradient * scale
        element = record.group.criterion.element_scores(record.local_weight(), gradient)
        return record.group.reduce(record.name, element).reshape(-1)
