"""Input-activation statistics for activation-aware criteria (Wanda): per input feature of each pruned layer, the
sum of squares of its inputs over every token seen, so ``||X_j||_2 = sqrt(sum)``.

Forward pre-hooks accumulate while the model trains and during calibration batches (before a one-shot event);
evaluation forwards are not counted, so validation data never shapes a mask. Under DDP every rank sees other data,
so the sums are all-reduced before they rank anything.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from .modules import is_transposed
from .sharding import full_shape

logger = logging.getLogger(__name__)

__all__ = ["InputNorms", "run_calibration"]


class InputNorms:
    """Running per-input-feature sums of squared inputs for ``modules`` (name -> Linear or Conv1D)."""

    def __init__(self, modules: Dict[str, nn.Module]) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.tokens: Dict[str, int] = {}
        self.calibrating = False
        self._handles = [module.register_forward_pre_hook(self._hook(name)) for name, module in modules.items()]
        for name, module in modules.items():
            shape = full_shape(module.weight)  # a ZeRO-3 partition's own shape may be an empty placeholder
            features = shape[0] if is_transposed(module) else shape[1]
            self.sums[name] = torch.zeros(features, dtype=torch.float32, device=module.weight.device)

    def _hook(self, name: str):
        def accumulate(module, args):
            if not (module.training or self.calibrating) or not args or not torch.is_tensor(args[0]):
                return
            inputs = args[0].detach()
            flat = inputs.reshape(-1, inputs.shape[-1]).float()
            sums = self.sums[name]
            if sums.device != flat.device:
                sums = self.sums[name] = sums.to(flat.device)
            sums.add_(flat.pow(2).sum(dim=0))
            self.tokens[name] = self.tokens.get(name, 0) + flat.shape[0]
        return accumulate

    @property
    def seen(self) -> bool:
        return any(self.tokens.values()) or any(bool(s.any()) for s in self.sums.values())

    def norms(self, name: str) -> torch.Tensor:
        """``||X_j||_2`` per input feature, summed over every process of a distributed run."""
        sums = self.sums[name].clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        return sums.sqrt_()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@torch.no_grad()
def run_calibration(model: nn.Module, batches: Iterable[dict], max_batches: int,
                    device: Optional[torch.device] = None) -> int:
    """Run up to ``max_batches`` forward passes (eval mode, no labels needed) so the hooks see real inputs;
    returns how many batches ran."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in batches:
            if count >= max_batches:
                break
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()
                      if k not in ("labels", "start_positions", "end_positions")}
            model(**inputs)
            count += 1
    finally:
        model.train(was_training)
    logger.info("calibration: %d batches run for activation statistics", count)
    return count
