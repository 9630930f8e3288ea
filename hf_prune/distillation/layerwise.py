"""Layer-wise distillation: the student's hidden states (and optionally attention maps) follow the teacher's.

Logit KD gives a pruned student one signal per example; the methods that recover best at high sparsity (TinyBERT,
CoFi) also match intermediate layers. A *layer map* pairs ``hidden_states`` indexes of student and teacher
(0 = the embeddings' output, ``i`` = the output of layer ``i``); the default maps every student layer ``i`` to
teacher layer ``round(i * teacher_layers / student_layers)``, the identity when both have the same depth. When the
student is narrower than the teacher, a trainable Linear per mapped layer projects the student's states to the
teacher's width. The projections are attached to the student while it trains (so the optimizer, the device
placement and DDP treat them like the student's own weights) and detached whenever the student is saved.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .losses import attention_kl, channel_mse, cosine_distance, feature_mse

__all__ = ["uniform_layer_map", "resolve_layer_map", "HiddenStateProjections", "install_projections",
           "detached_projections", "hidden_state_loss", "attention_loss", "PROJECTIONS_ATTRIBUTE", "HIDDEN_LOSSES"]

#: The student's attribute holding the projections while it trains (outside ``base_model``: never pruned).
PROJECTIONS_ATTRIBUTE = "hf_prune_hidden_projections"
#: the hidden-state losses by name (``DistillationConfig.hidden_state_loss``)
HIDDEN_LOSSES = {"mse": feature_mse, "channel_mse": channel_mse, "cosine": cosine_distance}

LayerMap = List[Tuple[int, int]]


def uniform_layer_map(student_layers: int, teacher_layers: int) -> LayerMap:
    """Student layer ``i`` (1-based) learns from teacher layer ``round(i * teacher_layers / student_layers)``."""
    return [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]


def resolve_layer_map(layer_map: Optional[Sequence[Sequence[int]]], student_layers: int,
                      teacher_layers: int) -> LayerMap:
    """The given ``[[student, teacher], ...]`` pairs checked against both depths, or the uniform map."""
    if layer_map is None:
        return uniform_layer_map(student_layers, teacher_layers)
    pairs = []
    for pair in layer_map:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair)):
            raise ValueError(f"layer_map entries are [student_layer, teacher_layer] integer pairs, got {pair!r}")
        student, teacher = pair
        if not 0 <= student <= student_layers or not 0 <= teacher <= teacher_layers:
            raise ValueError(f"layer_map pair {list(pair)} is out of range: the student has hidden states 0-"
                             f"{student_layers}, the teacher 0-{teacher_layers} (0 = embeddings)")
        pairs.append((student, teacher))
    if not pairs:
        raise ValueError("layer_map is empty: give [student_layer, teacher_layer] pairs, or leave it unset")
    return pairs


class HiddenStateProjections(nn.Module):
    """One Linear (student width -> teacher width) per mapped student layer."""

    def __init__(self, student_layers: Sequence[int], student_width: int, teacher_width: int) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({str(layer): nn.Linear(student_width, teacher_width)
                                     for layer in sorted(set(student_layers))})

    def forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.layers[str(layer)](hidden)


def _width(model: nn.Module) -> int:
    return int(model.config.hidden_size)


def install_projections(student: nn.Module, teacher: nn.Module, layer_map: LayerMap) -> Optional[HiddenStateProjections]:
    """Attach projections to ``student`` when its width differs from the teacher's; None when they match."""
    student_width, teacher_width = _width(student), _width(teacher)
    if student_width == teacher_width:
        return None
    device = next(student.parameters()).device
    projections = HiddenStateProjections([s for s, _ in layer_map], student_width, teacher_width).to(device)
    setattr(student, PROJECTIONS_ATTRIBUTE, projections)
    return projections


@contextlib.contextmanager
def detached_projections(model: nn.Module) -> Iterator[Optional[HiddenStateProjections]]:
    """Within the block ``model`` has no projections (it is the plain model that gets saved); yields them."""
    projections = getattr(model, PROJECTIONS_ATTRIBUTE, None)
    if projections is None:
        yield None
        return
    delattr(model, PROJECTIONS_ATTRIBUTE)
    try:
        yield projections
    finally:
        setattr(model, PROJECTIONS_ATTRIBUTE, projections)


def hidden_state_loss(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                      layer_map: LayerMap, mask: Optional[torch.Tensor], kind: str = "mse",
                      projections: Optional[HiddenStateProjections] = None) -> torch.Tensor:
    """Mean over the mapped pairs of ``kind`` (:data:`HIDDEN_LOSSES`: MSE per element, MSE per element with each
    channel scaled by the teacher's, or cosine distance per token), real tokens only."""
    if kind not in HIDDEN_LOSSES:
        raise ValueError(f"unknown hidden-state loss {kind!r}; allowed: {', '.join(HIDDEN_LOSSES)}")
    losses = []
    for student_layer, teacher_layer in layer_map:
        student = student_states[student_layer]
        if projections is not None:
            student = projections(student_layer, student)
        teacher = teacher_states[teacher_layer]
        losses.append(HIDDEN_LOSSES[kind](student, teacher, mask))
    return torch.stack(losses).mean()


def attention_loss(student_attentions: Sequence[torch.Tensor], teacher_attentions: Sequence[torch.Tensor],
                   layer_map: LayerMap, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over mapped layers (pairs with index 0, the embeddings, have no attention) of the KL divergence between
    head-averaged attention distributions: defined for students with fewer heads (slim) too."""
    pairs = [(s, t) for s, t in layer_map if s > 0 and t > 0]
    if not pairs:
        raise ValueError("the layer map pairs no transformer layers (only embeddings): no attention maps to match")
    losses = [attention_kl(student_attentions[s - 1], teacher_attentions[t - 1], mask) for s, t in pairs]
    return torch.stack(losses).mean()
