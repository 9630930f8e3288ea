"""How much each structural unit of a decoder LLM contributes, measured from activations on calibration batches.

No gradients are needed (frozen and LoRA bases work), as in NVIDIA's Minitron: one pass of forward hooks over a
few batches of the training data gives, per unit,

- **KV group** (a key/value head with the query heads that share it): the per-token L2 norm of each query head's
  attention output (the input of ``o_proj``), its group's heads summed;
- **FFN channel**: the channel's activation ``act(gate) * up`` (the input of ``down_proj``);
- **hidden channel** (one channel of the residual stream): the outputs of every RMSNorm that feeds a projection
  (the inputs of ``q_proj``, ``gate_proj`` and ``lm_head``), summed over those norms;
- **layer**: ``cosine`` — one minus the mean cosine between a decoder layer's input and output hidden states (a
  layer that barely turns the residual stream matters little); or ``loss`` — how much the language-model loss on
  the batches rises when the layer is skipped (one extra pass per layer).

Tokens are aggregated by ``aggregation``: ``"l2"`` (root mean square over tokens) or ``"mean"`` (mean absolute
value; for heads, the mean norm). Padding positions (``attention_mask == 0``) are left out.

``unit_score="output"`` scores KV groups and FFN channels by what they *write* instead: the norm of the head's
``o_proj`` slice applied to its attention output, and the channel's activation times the norm of its ``down_proj``
column — the size of each unit's contribution to the residual stream (a large activation read by a small output
column adds little). ``unit_score="fisher"`` ranks KV groups, FFN and hidden channels by the loss instead: the
Fisher information of each unit's mask on the batches' labels (:mod:`hf_prune.fisher_importance`; one backward pass
per batch). ``"activation"`` (default) is Minitron's score.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional

import torch
from torch import nn

from .fisher_importance import batch_labels, fisher_unit_scores
from .value_checks import short

logger = logging.getLogger(__name__)

__all__ = ["UnitImportance", "measure_importance", "decoder_parts", "language_model_loss", "LLAMA_FAMILY",
           "AGGREGATIONS", "LAYER_METHODS", "UNIT_SCORES", "CalibrationPasses"]

#: model types whose decoder layers are Llama's (RMSNorm, GQA attention with q/k/v/o, gated FFN gate/up/down)
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
AGGREGATIONS = ("l2", "mean")
UNIT_SCORES = ("activation", "output", "fisher")
LAYER_METHODS = ("cosine", "loss")


@dataclass
class UnitImportance:
    """Importance of every unit (higher: more important); the rows of 2-D tensors are decoder layers."""

    kv_groups: torch.Tensor     # [layers, num_key_value_heads]
    ffn_channels: torch.Tensor  # [layers, intermediate_size]
    hidden: torch.Tensor        # [hidden_size]
    layers: torch.Tensor        # [layers]
    tokens: int
    layer_method: str
    aggregation: str
    unit_score: str = "activation"


@dataclass
class DecoderParts:
    """The modules of a Llama-family causal LM that compression reads and rewrites."""

    embed: nn.Embedding
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Linear
    heads: int
    kv_heads: int
    head_dim: int


def decoder_parts(model: nn.Module) -> DecoderParts:
    """The decoder's parts; anything but a Llama-family ``*ForCausalLM`` is refused by name."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LLAMA_FAMILY:
        raise ValueError(f"width/depth compression supports the Llama family {LLAMA_FAMILY} (RMSNorm, grouped-query "
                         f"attention, gated FFN); got model_type {short(model_type)} ({type(model).__name__})")
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        raise ValueError(f"{type(model).__name__} is not a *ForCausalLM with .model.layers and .lm_head: compress the "
                         "causal-LM model (e.g. AutoModelForCausalLM), not its base or a PEFT wrapper")
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return DecoderParts(inner.embed_tokens, inner.layers, inner.norm, model.lm_head, heads, kv_heads, head_dim)


class _Accumulator:
    """Per-unit sums over tokens, for one aggregation."""

    def __init__(self, aggregation: str) -> None:
        self.aggregation = aggregation
        self.sums: Dict[str, torch.Tensor] = {}
        self.tokens: Dict[str, int] = {}

    def add(self, key: str, values: torch.Tensor) -> None:
        """``values``: [tokens, units], already the per-unit magnitude of each token (norm or value)."""
        term = values.pow(2) if self.aggregation == "l2" else values.abs()
        total = term.sum(dim=0)
        self.sums[key] = self.sums[key] + total if key in self.sums else total
        self.tokens[key] = self.tokens.get(key, 0) + values.shape[0]

    def result(self, key: str) -> torch.Tensor:
        mean = self.sums[key] / max(1, self.tokens[key])
        return mean.sqrt() if self.aggregation == "l2" else mean


@torch.no_grad()
def measure_importance(model: nn.Module, batches: Iterable[dict], max_batches: int = 16,
                       aggregation: str = "l2", layer_method: str = "cosine",
                       unit_score: str = "activation") -> UnitImportance:
    """Run up to ``max_batches`` calibration batches (dicts with ``input_ids`` and optionally ``attention_mask``;
    ``labels`` are read by ``unit_score="fisher"`` only) through ``model`` in eval mode and return every unit's
    importance (module docstring)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {short(aggregation)}")
    if unit_score not in UNIT_SCORES:
        raise ValueError(f"unit_score must be one of {UNIT_SCORES}, got {short(unit_score)}")
    if layer_method not in LAYER_METHODS:
        raise ValueError(f"layer_method must be one of {LAYER_METHODS}, got {short(layer_method)}")
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches <= 0:
        raise ValueError(f"max_batches must be a positive integer, got {short(max_batches)}")
    parts = decoder_parts(model)
    batches = list(_first(batches, max_batches))
    if not batches:
        raise ValueError("measure_importance needs at least one calibration batch")
    sums = _Accumulator(aggregation)
    cosines: Dict[int, List[float]] = {index: [0.0, 0] for index in range(len(parts.layers))}
    passes = CalibrationPasses()
    tokens_of = passes.real_tokens
    handles = []

    def hook_input(key: str, per_head: bool = False):
        def hook(module, args):
            values = tokens_of(args[0])
            if per_head:
                values = values.view(values.shape[0], parts.heads, parts.head_dim)
                if unit_score == "output":   # ||W_h x_h|| = sqrt(x_h^T (W_h^T W_h) x_h), W_h: the head's o_proj slice
                    slices = module.weight.detach().float().view(-1, parts.heads, parts.head_dim)
                    products = torch.einsum("ohd,ohe->hde", slices, slices)
                    values = torch.einsum("thd,hde,the->th", values, products, values).clamp_min(0).sqrt()
                else:
                    values = values.norm(dim=-1)
            sums.add(key, values)
        return hook

    def hook_layer(index: int):
        def hook(module, args, kwargs, output):
            before = kwargs.get("hidden_states", args[0] if args else None)
            after = output[0] if isinstance(output, tuple) else output
            cosine = nn.functional.cosine_similarity(tokens_of(before), tokens_of(after), dim=-1)
            cosines[index][0] += float(cosine.sum())
            cosines[index][1] += cosine.numel()
        return hook

    for index, layer in enumerate(parts.layers):
        handles += [layer.self_attn.o_proj.register_forward_pre_hook(hook_input(f"heads.{index}", per_head=True)),
                    layer.mlp.down_proj.register_forward_pre_hook(hook_input(f"ffn.{index}")),
                    layer.self_attn.q_proj.register_forward_pre_hook(hook_input(f"hidden.attn.{index}")),
                    layer.mlp.gate_proj.register_forward_pre_hook(hook_input(f"hidden.ffn.{index}")),
                    layer.register_forward_hook(hook_layer(index), with_kwargs=True)]
    handles.append(parts.lm_head.register_forward_pre_hook(hook_input("hidden.final")))
    passes.run(model, batches, handles)
    layers = len(parts.layers)
    group = parts.heads // parts.kv_heads
    heads = torch.stack([sums.result(f"heads.{i}") for i in range(layers)])
    kv_groups = heads.view(layers, parts.kv_heads, group).sum(dim=-1)  # query heads of group g: g*group .. +group
    ffn = torch.stack([sums.result(f"ffn.{i}") for i in range(layers)])
    if unit_score == "output":   # |a_j| * ||down_proj[:, j]||: the column norm factors out of either aggregation
        ffn = ffn * torch.stack([layer.mlp.down_proj.weight.detach().float().norm(dim=0).to(ffn.device)
                                 for layer in parts.layers])
    hidden = sum(sums.result(key) for key in sums.sums if key.startswith("hidden."))
    tokens = sums.tokens["hidden.final"]
    if unit_score == "fisher":
        with _eval_mode(model):
            kv_groups, ffn, hidden, tokens = fisher_unit_scores(model, parts, batches, aggregation, _model_inputs)
    if layer_method == "cosine":
        layer_scores = torch.tensor([1.0 - total / max(1, count) for total, count in cosines.values()])
    else:
        layer_scores = _skip_losses(model, parts, batches)
    logger.info("activation importance from %d batches (%d tokens), units by %s, aggregation %s, layers by %s",
                len(batches), tokens, unit_score, aggregation, layer_method)
    return UnitImportance(kv_groups.cpu(), ffn.cpu(), hidden.cpu(), layer_scores.cpu(), tokens, layer_method,
                          aggregation, unit_score)


class CalibrationPasses:
    """Forward passes of calibration batches for hooks that read activations: while a batch runs,
    :meth:`real_tokens` gives a hooked tensor's rows of that batch's non-padding tokens."""

    def __init__(self) -> None:
        self._mask: Optional[torch.Tensor] = None

    def real_tokens(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[tokens, width]`` float32 rows of ``tensor`` (``[..., width]``) at the current batch's real tokens."""
        flat = tensor.detach().reshape(-1, tensor.shape[-1]).float()
        return flat if self._mask is None else flat[self._mask]

    def run(self, model: nn.Module, batches: Iterable[dict], handles: List) -> int:
        """Run ``batches`` through ``model`` in eval mode, then remove the hooks ``handles``; returns the batches
        run."""
        count = 0
        try:
            with _eval_mode(model):
                for batch in batches:
                    inputs = _model_inputs(model, batch)
                    mask = inputs.get("attention_mask")
                    self._mask = None if mask is None else mask.reshape(-1).bool()
                    model(**inputs)
                    count += 1
        finally:
            self._mask = None
            for handle in handles:
                handle.remove()
        return count


def _first(batches: Iterable[dict], count: int) -> Iterator[dict]:
    for index, batch in enumerate(batches):
        if index >= count:
            return
        yield batch


def _model_inputs(model: nn.Module, batch: dict) -> dict:
    device = next(model.parameters()).device
    return {key: batch[key].to(device) for key in ("input_ids", "attention_mask") if key in batch}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def language_model_loss(model: nn.Module, batches: List[dict]) -> float:
    """Mean next-token loss over the batches' non-padding tokens (labels from ``labels`` when given)."""
    total, count = 0.0, 0
    with torch.no_grad(), _eval_mode(model):
        for batch in batches:
            inputs = _model_inputs(model, batch)
            labels = batch_labels(inputs, batch)
            logits = model(**inputs).logits[:, :-1].float()
            targets = labels[:, 1:]
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                               ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((targets != -100).sum())
    return total / max(1, count) if count else math.nan


def _skip_losses(model: nn.Module, parts: DecoderParts, batches: List[dict]) -> torch.Tensor:
    """For each layer, the loss increase when its output is replaced by its input (the layer skipped)."""
    base = language_model_loss(model, batches)
    increases = []
    for layer in parts.layers:
        def skip(module, args, kwargs, output):
            before = kwargs.get("hidden_states", args[0] if args else None)
            return (before,) + tuple(output[1:]) if isinstance(output, tuple) else before
        handle = layer.register_forward_hook(skip, with_kwargs=True)
        try:
            increases.append(language_model_loss(model, batches) - base)
        finally:
            handle.remove()
    return torch.tensor(increases)
