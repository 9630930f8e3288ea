"""``DistillationConfig``: how a student learns from a frozen teacher. Same conventions as ``PruningConfig``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional

from ..config_io import JsonConfigMixin
from ..value_checks import finite, short
from .layerwise import HIDDEN_LOSSES, resolve_layer_map

__all__ = ["DistillationConfig", "DISTILLATION_CONFIG_NAME", "METHODS", "KD_TOKENS"]

DISTILLATION_CONFIG_NAME = "distillation_config.json"
METHODS = ("logits", "reused_classifier")
#: which positions a language model's token KD averages over: those with a label, or every real token
KD_TOKENS = ("labels", "all")


@dataclass
class DistillationConfig(JsonConfigMixin):
    """``logits``: KL(teacher || student) of temperature-softened logits, times T^2.
    ``reused_classifier`` (SimKD, arXiv 2203.14001): the teacher's head scores the student's projected
    features; the loss is ``feature_weight`` x MSE(projected student features, teacher features), plus logit KD
    through the shared head when ``distill_loss_weight`` > 0. ``hard_label_weight`` adds the student's own
    task loss (0 = KD replaces it, as in INC's QA example). ``kd_tokens`` (causal language models): token KD over
    the positions with a label (``"labels"``: in SFT with a completion-only loss, the answer) or over every real
    token (``"all"``: the prompt too, while the hard-label loss stays on the labels).

    Layer-wise terms, with any method: ``hidden_state_weight`` x the hidden-state loss (``hidden_state_loss``:
    ``mse`` per element, ``channel_mse`` per element with each channel divided by the teacher's mean square, or
    ``cosine`` per token) over the ``layer_map`` pairs ``[[student, teacher], ...]`` of
    ``hidden_states`` indexes (0 = embeddings; unset: every student layer to the teacher layer at the same relative
    depth); ``attention_weight`` x the KL divergence of head-averaged attention maps over the same pairs (needs
    ``attn_implementation="eager"``: the fused kernels return no attention maps)."""

    method: str = "logits"
    temperature: float = 2.0
    distill_loss_weight: float = 1.0
    hard_label_weight: float = 0.0
    feature_weight: float = 1.0
    hidden_state_weight: float = 0.0
    hidden_state_loss: str = "mse"
    layer_map: Optional[List[List[int]]] = None
    attention_weight: float = 0.0
    kd_tokens: str = "labels"

    config_name: ClassVar[str] = DISTILLATION_CONFIG_NAME
    config_kind: ClassVar[str] = "distillation"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown distillation method {short(self.method)}; allowed: {', '.join(METHODS)}")
        finite("temperature", self.temperature, minimum=0, above=True)
        if self.kd_tokens not in KD_TOKENS:
            raise ValueError(f"unknown kd_tokens {short(self.kd_tokens)}; allowed: {', '.join(KD_TOKENS)}")
        if self.hidden_state_loss not in HIDDEN_LOSSES:
            raise ValueError(f"unknown hidden_state_loss {short(self.hidden_state_loss)}; allowed: {', '.join(HIDDEN_LOSSES)}")
        if self.layer_map is not None:
            self.layer_map = [list(pair) for pair in resolve_layer_map(self.layer_map, 10 ** 6, 10 ** 6)]
        for name in ("distill_loss_weight", "hard_label_weight", "feature_weight", "hidden_state_weight",
                     "attention_weight"):
            finite(name, getattr(self, name), minimum=0)
        active = [self.distill_loss_weight, self.hard_label_weight, self.hidden_state_weight, self.attention_weight]
        if self.method == "reused_classifier":
            active.append(self.feature_weight)
        if not any(active):
            raise ValueError(f"every loss weight of method {self.method!r} is 0: nothing would be learned")
