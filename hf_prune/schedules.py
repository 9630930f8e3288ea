"""Sparsity schedules: how sparse the model is at each pruning event. Pure functions of progress.

Pruning events happen at the end of optimizer steps ``start_step, start_step + frequency, ...`` and always
at ``end_step``. Event progress is ``p(t) = (t - start + f) / (end - start + f)``: the first event already
has ``p > 0`` (so it prunes something) and the last has ``p = 1`` (so it reaches the target exactly).
``start_step == end_step`` (or ``schedule="oneshot"``) is a single event at ``start_step`` with ``p = 1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List

from .registry import Registry

__all__ = ["SCHEDULES", "PruningSchedule", "cubic", "exponential", "linear", "cosine", "oneshot"]

ScheduleFn = Callable[[float, float], float]
SCHEDULES: Registry = Registry("pruning schedule")


@SCHEDULES.decorator("cubic")
def cubic(progress: float, target: float) -> float:
    """Zhu & Gupta (arXiv 1710.01878): ``s = target * (1 - (1 - p)^3)``; prunes fast early, gently late."""
    return target * (1.0 - (1.0 - progress) ** 3)


@SCHEDULES.decorator("exp")
def exponential(progress: float, target: float) -> float:
    """Density decays geometrically: ``s = 1 - (1 - target)^p`` (the shape of INC's default)."""
    return 1.0 - (1.0 - target) ** progress


@SCHEDULES.decorator("linear")
def linear(progress: float, target: float) -> float:
    """``s = target * p``."""
    return target * progress


@SCHEDULES.decorator("cos")
def cosine(progress: float, target: float) -> float:
    """``s = target * (1 - cos(pi * p)) / 2``; slow at both ends."""
    return target * (1.0 - math.cos(math.pi * progress)) / 2.0


@SCHEDULES.decorator("oneshot")
def oneshot(progress: float, target: float) -> float:
    """The whole target at the single event."""
    return target


@dataclass(frozen=True)
class PruningSchedule:
    """When pruning events happen and which sparsity each one targets."""

    kind: str
    start_step: int
    end_step: int
    frequency: int
    target: float

    def __post_init__(self) -> None:
        SCHEDULES.get(self.kind)  # validates the name
        if self.frequency <= 0:
            raise ValueError(f"frequency must be a positive number of steps, got {self.frequency}")
        if self.start_step > self.end_step:
            raise ValueError(f"start_step ({self.start_step}) must be <= end_step ({self.end_step})")

    @property
    def is_oneshot(self) -> bool:
        return self.kind == "oneshot" or self.start_step == self.end_step

    def is_event(self, step: int) -> bool:
        if self.is_oneshot:
            return step == self.start_step
        in_window = self.start_step <= step <= self.end_step
        return in_window and ((step - self.start_step) % self.frequency == 0 or step == self.end_step)

    def progress(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        if self.is_oneshot or step >= self.end_step:
            return 1.0
        span = self.end_step - self.start_step + self.frequency
        return (step - self.start_step + self.frequency) / span

    def sparsity_at(self, step: int) -> float:
        """Target sparsity of the event at ``step`` (exactly ``target`` from the last event on)."""
        progress = self.progress(step)
        if progress <= 0.0:
            return 0.0
        if progress >= 1.0:
            return self.target
        return min(self.target, max(0.0, SCHEDULES.get(self.kind)(progress, self.target)))

    def event_steps(self) -> List[int]:
        if self.is_oneshot:
            return [self.start_step]
        steps = list(range(self.start_step, self.end_step + 1, self.frequency))
        return steps if steps[-1] == self.end_step else steps + [self.end_step]
