"""Least-squares refit of the output projections after their input channels are removed.

When compression drops FFN channels (the input columns of ``down_proj``) or query heads (the input columns of
``o_proj``), the kept columns of the original weight no longer produce the original output: the removed channels
carried part of it, and the kept channels are correlated with them. Over calibration tokens ``X`` (the
projection's input, ``[tokens, inputs]``) the weight ``V`` on the kept columns ``S`` that best reproduces the
original output ``X W^T`` is the least-squares solution

    V = W G[:, S] (G[S, S] + lambda I)^-1,   G = X^T X,

so only the Gram matrix ``G`` of each projection's input is needed (one forward pass, no gradients, as for the
activation importance). ``lambda`` is ``damping`` times the mean of ``diag(G[S, S])``, which keeps the solve well
posed when channels are nearly collinear (the damping of GPTQ/SparseGPT's layer-wise solves, same role). With
``damping`` near 0 the refit is exact whenever every removed channel is a linear combination of kept ones over the
calibration tokens; plain removal (``V = W[:, S]``) is exact only when the removed channels are zero.

The Grams are taken on the *original* model's activations in one pass (each layer's input as the dense model
computes it), not layer by layer on the compressed model; memory is one float32 ``inputs x inputs`` matrix per
projection (on SmolLM2-135M: 30 x (1536^2 + 576^2) floats, 322 MB).

Measured (``benchmarks/RESULTS.md``, SmolLM2-135M on SQuAD prompts): the refit lowers the one-shot LM loss of
held-out prompts by up to 0.34 nats but raises the task's answer loss on every shape tried, so
:func:`hf_prune.compress` leaves it off unless ``refit=True``.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List

import torch
from torch import nn

from .activation_importance import CalibrationPasses, _first, decoder_parts
from .value_checks import short

logger = logging.getLogger(__name__)

__all__ = ["input_grams", "refit_columns", "check_damping", "PROJECTIONS", "WEIGHTINGS"]

#: the projections whose input columns compression removes: attention output (query heads), FFN output (channels)
PROJECTIONS = ("o_proj", "down_proj")
WEIGHTINGS = ("residual", "none")


@torch.no_grad()
def input_grams(model: nn.Module, batches: Iterable[dict], max_batches: int = 16,
                weighting: str = "residual") -> List[Dict[str, torch.Tensor]]:
    """For every decoder layer, ``{"o_proj": G, "down_proj": G}``: the Gram matrix ``X^T X`` (float32) of that
    projection's input over the non-padding tokens of up to ``max_batches`` calibration batches.

    ``weighting="residual"`` weighs each token by ``1 / mean(h^2)`` of the residual stream ``h`` the projection's
    output is added to (what the next RMSNorm divides by), so the refit minimises the error as the rest of the
    network sees it; ``"none"`` weighs tokens alike, which lets the few tokens with massive residual activations
    (attention sinks: their squared norm is orders of magnitude above the others') decide the fit."""
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches <= 0:
        raise ValueError(f"max_batches must be a positive integer, got {short(max_batches)}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {short(weighting)}")
    parts = decoder_parts(model)
    grams: List[Dict[str, torch.Tensor]] = [{} for _ in parts.layers]
    token_weights: Dict[str, torch.Tensor] = {}
    passes = CalibrationPasses()
    tokens_of = passes.real_tokens

    def residual(name: str):  # the norm before a projection's block sees the residual stream it writes back to
        def hook(module, args):
            token_weights[name] = tokens_of(args[0]).pow(2).mean(dim=-1).clamp_min(1e-12).rsqrt()
        return hook

    def accumulate(index: int, name: str):
        def hook(module, args):
            flat = tokens_of(args[0])
            if weighting == "residual":
                flat = flat * token_weights.pop(name)[:, None]   # sqrt(1 / mean(h^2)) on each side of the product
            product = flat.T @ flat
            grams[index][name] = grams[index][name] + product if name in grams[index] else product
        return hook

    handles = [getattr(layer.self_attn if name == "o_proj" else layer.mlp, name).register_forward_pre_hook(
        accumulate(index, name)) for index, layer in enumerate(parts.layers) for name in PROJECTIONS]
    if weighting == "residual":
        handles += [norm.register_forward_pre_hook(residual(name)) for layer in parts.layers for norm, name in (
            (layer.input_layernorm, "o_proj"), (layer.post_attention_layernorm, "down_proj"))]
    if not passes.run(model, _first(batches, max_batches), handles):
        raise ValueError("input_grams needs at least one calibration batch")
    return grams


def check_damping(damping: float) -> None:
    """Refuse a ridge damping that is not a number >= 0."""
    if not isinstance(damping, (int, float)) or isinstance(damping, bool) or not damping >= 0:
        raise ValueError(f"damping must be a number >= 0, got {short(damping)}")


def refit_columns(weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    """The ``[outputs, len(kept)]`` weight on the input columns ``kept`` whose output is closest, in least squares
    over the tokens behind ``gram``, to ``weight``'s output on every column (module docstring). Solved in float64;
    returned in ``weight``'s dtype."""
    check_damping(damping)
    if gram.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"gram has shape {tuple(gram.shape)}; the weight's {weight.shape[1]} input columns need "
                         f"({weight.shape[1]}, {weight.shape[1]})")
    gram = gram.to(device=weight.device, dtype=torch.float64)
    kept = kept.to(weight.device)
    kept_gram = gram[kept][:, kept]
    scale = float(kept_gram.diagonal().mean())
    if scale <= 0:  # the kept channels were never active: nothing to fit against
        return weight[:, kept].clone()
    kept_gram = kept_gram + damping * scale * torch.eye(len(kept), dtype=torch.float64, device=weight.device)
    cross = weight.to(torch.float64) @ gram[:, kept]            # W G[:, S]: [outputs, kept]
    solution = torch.linalg.solve(kept_gram, cross.T).T         # G[S, S] symmetric: (W G[:, S]) G[S, S]^-1
    return solution.to(weight.dtype)
