"""Gradient criteria under DeepSpeed ZeRO-3: scores taken inside the engine's step, where the gradients still exist.

Under ZeRO-3 each rank's reduced gradients live in DeepSpeed's fp32 partitions from the end of the boundary
backward until ``engine.step()``, which unscales, clips, steps and zeroes them. accelerate calls that step inside
``accelerator.backward``, so by the Trainer's ``on_pre_optimizer_step`` nothing is left to score. The engine's
``step`` is therefore wrapped to score first, on the gradient the optimizer is about to use: divided by the fp16
loss scale and clipped to ``gradient_clipping`` as ``torch.nn.utils.clip_grad_norm_`` would (the same scores as on
one process, where the Trainer clips before ``on_pre_optimizer_step``).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist

from .sharding import is_zero3

__all__ = ["gradient_scale", "update_scores_before_step", "score_inside_step"]

_WRAPPED = "_hf_prune_pruner"


def gradient_scale(engine) -> float:
    """The factor that turns the raw gradient partitions into the gradient the optimizer will use: 1 / loss scale,
    times the clipping coefficient of the global norm (one all-reduce of a scalar)."""
    loss_scale = float(getattr(engine.optimizer, "loss_scale", 1.0) or 1.0)
    max_norm = float(engine.gradient_clipping() or 0.0)
    if max_norm <= 0:
        return 1.0 / loss_scale
    from deepspeed.utils import safe_get_local_grad

    params = [param for param in engine.module.parameters() if param.requires_grad and is_zero3(param)]
    # each partition is counted on one rank; summed where the gradients live, so the host waits once, not per param
    partials = [torch.linalg.vector_norm(safe_get_local_grad(param), dtype=torch.float64).square() for param in params]
    squares = torch.stack(partials).sum() if partials else torch.zeros((), dtype=torch.float64)
    if dist.is_initialized():
        squares = squares.to(_collective_device())
        dist.all_reduce(squares, group=params[0].ds_process_group if params else None)
    norm = math.sqrt(float(squares)) / loss_scale
    return min(1.0, max_norm / (norm + 1e-6)) / loss_scale


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def update_scores_before_step(pruner, engine) -> None:
    """``pruner.update_scores`` on this step's final gradients; call it between ``engine.backward`` and
    ``engine.step`` at a gradient-accumulation boundary (a training loop of one's own)."""
    pruner.update_scores(gradient_scale=gradient_scale(engine))


def score_inside_step(engine, pruner) -> None:
    """Make ``engine.step()`` update ``pruner``'s scores first, at every gradient-accumulation boundary. Installed
    once per engine; a new pruner (another trial, a resumed run) replaces the previous one."""
    managed = getattr(engine, "managed_gradient_accumulation", None)
    if managed is not None and not managed():
        raise ValueError("DeepSpeed managed_gradient_accumulation=false with a gradient criterion: the gradients "
                         "are finalized inside engine.step(), after hf_prune would score them; use the default "
                         "managed gradient accumulation, or criterion 'magnitude'/'wanda'")
    step = engine.step
    if getattr(step, _WRAPPED, None) is not None:
        setattr(step, _WRAPPED, pruner)
        return

    @functools.wraps(step)
    def step_after_scoring(*args, **kwargs):
        if engine.is_gradient_accumulation_boundary():
            update_scores_before_step(getattr(step_after_scoring, _WRAPPED), engine)
        return step(*args, **kwargs)

    setattr(step_after_scoring, _WRAPPED, pruner)
    engine.step = step_after_scoring
