"""Pruning criteria: how important each weight is. One method per criterion, one registry entry each.

Gradient-based criteria are evaluated after every optimizer step (on the gradients the optimizer is about
to use) and folded into a running score ``score <- beta * score + s_t``, where ``beta`` is the config's
``momentum`` for ``snip_momentum`` and 0 (latest step only) for ``snip`` and ``gradient``. ``magnitude``
needs no gradient and is evaluated from the weights at each pruning event; ``wanda`` (Sun et al., arXiv 2306.11695)
scales it by the norm of each input feature's activations (:mod:`hf_prune.calibration`), so it needs inputs seen
(calibration batches before a one-shot event at step 0, the training forwards otherwise) but no gradient.
"""
from __future__ import annotations

import torch

from .registry import Registry

__all__ = ["Criterion", "CRITERIA", "get_criterion", "fused_form"]


class Criterion:
    """``element_scores(weight, grad)`` is the whole interface; higher means more important."""

    needs_gradient: bool = True
    uses_momentum: bool = False

    #: True when ``element_scores`` takes the input-activation norms per input feature instead of the gradient
    needs_activations: bool = False

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class Magnitude(Criterion):
    """|W| (Han et al., 2015)."""

    needs_gradient = False

    def element_scores(self, weight, grad=None):
        return weight.detach().float().abs()


class Gradient(Criterion):
    """|dL/dW| of the latest optimizer step."""

    def element_scores(self, weight, grad):
        return grad.detach().float().abs()


class Snip(Criterion):
    """|W * dL/dW| of the latest step: first-order estimate of the loss change when a weight is removed
    (SNIP, Lee et al., arXiv 1810.02340)."""

    def element_scores(self, weight, grad):
        return (weight.detach().float() * grad.detach().float()).abs_()


class SnipMomentum(Snip):
    """|W * dL/dW| accumulated with momentum over all steps, as in INC's default pruner."""

    uses_momentum = True


class Wanda(Criterion):
    """|W_ij| * ||X_j||_2: a weight matters as much as its magnitude times the size of the inputs it multiplies
    (Wanda). ``input_norms`` is a vector over the input features of the ``[out, in]`` weight."""

    needs_gradient = False
    needs_activations = True

    def element_scores(self, weight, input_norms):
        return weight.detach().float().abs() * input_norms.to(weight.device).float().view(1, -1)


def fused_form(criterion: Criterion) -> bool | None:
    """What the fused score update (:mod:`hf_prune.score_buffers`) computes for ``criterion``: ``|grad * weight|``
    (True) or ``|grad|`` (False); None for a criterion with scores of another form (a registered custom one),
    which is then scored weight by weight through its own ``element_scores``."""
    method = type(criterion).element_scores
    if method is Snip.element_scores:
        return True
    if method is Gradient.element_scores:
        return False
    return None


CRITERIA: Registry = Registry("pruning criterion")
CRITERIA.register("magnitude", Magnitude)
CRITERIA.register("gradient", Gradient)
CRITERIA.register("snip", Snip)
CRITERIA.register("snip_momentum", SnipMomentum)
CRITERIA.register("wanda", Wanda)


def get_criterion(name: str) -> Criterion:
    return CRITERIA.get(name)()
