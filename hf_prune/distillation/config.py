"""``DistillationConfig``: how a student learns from a frozen teacher. Same conventions as ``PruningConfig``."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict

logger = logging.getLogger(__name__)

__all__ = ["DistillationConfig", "DISTILLATION_CONFIG_NAME", "METHODS"]

DISTILLATION_CONFIG_NAME = "distillation_config.json"
METHODS = ("logits", "reused_classifier")


@dataclass
class DistillationConfig:
    """``logits``: KL(teacher || student) of temperature-softened logits, times T^2.
    ``reused_classifier`` (SimKD, arXiv 2203.14001): the teacher's head scores the student's projected
    features; the loss is ``feature_weight`` x MSE(projected student features, teacher features), plus logit KD
    through the shared head when ``distill_loss_weight`` > 0. ``hard_label_weight`` adds the student's own
    task loss (0 = KD replaces it, as in INC's QA example)."""

    method: str = "logits"
    temperature: float = 2.0
    distill_loss_weight: float = 1.0
    hard_label_weight: float = 0.0
    feature_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown distillation method {self.method!r}; allowed: {', '.join(METHODS)}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        for name in ("distill_loss_weight", "hard_label_weight", "feature_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        active = [self.distill_loss_weight, self.hard_label_weight]
        if self.method == "reused_classifier":
            active.append(self.feature_weight)
        if not any(active):
            raise ValueError(f"every loss weight of method {self.method!r} is 0: nothing would be learned")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "config") -> "DistillationConfig":
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{source}: unknown distillation config key(s) {unknown}")
        return cls(**data)

    def save_pretrained(self, save_directory: str) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, DISTILLATION_CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str) -> "DistillationConfig":
        file = os.path.join(path, DISTILLATION_CONFIG_NAME) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ValueError(f"no {DISTILLATION_CONFIG_NAME} found at {path!r}")
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) - known:
            logger.warning("ignoring unknown keys %s in %s", sorted(set(data) - known), file)
        return cls(**{k: v for k, v in data.items() if k in known})
