"""Width and depth compression of a Llama-family causal LM into a smaller *stock* model (Minitron's recipe).

:func:`compress` ranks units by activation importance (:mod:`hf_prune.activation_importance`), keeps the most
important ones at a uniform shape (:mod:`hf_prune.model_shape`) — whole decoder layers, KV groups with their query
heads, FFN channels, hidden (residual-stream) channels — and copies them into a fresh model of the model's own
class and config class. The result is saved by plain ``save_pretrained`` and loaded by
``AutoModelForCausalLM.from_pretrained`` without hf_prune (and converts to GGUF); recovery is distillation from
the original (``DistillationTrainer``).

**What removal preserves.** A removed decoder layer whose ``o_proj`` and ``down_proj`` are zero added nothing to
the residual stream: the logits do not change. Removed KV groups and FFN channels whose output columns are zero
contributed nothing either. Hidden channels are different: RMSNorm divides by the root mean square over *all*
``d`` channels, so dropping channels changes the normalisation even when they are zero. The rule hf_prune applies:
every RMSNorm weight kept is multiplied by ``sqrt(d / d')`` and ``rms_norm_eps`` by ``d / d'`` (``d'`` channels
kept); then removing channels that are zero in the residual stream (zero embedding columns, zero ``o_proj`` and
``down_proj`` rows) is exact, and removing low-importance channels that are not zero keeps the normalisation's
scale to first order — what remains is recovered by distillation. Per-head norms (Qwen3's ``q_norm``/``k_norm``)
work over ``head_dim`` and are copied unchanged.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from .activation_importance import UnitImportance, decoder_parts, language_model_loss, measure_importance
from .model_shape import ModelShape, candidate_shapes, count_parameters, shape_config
from .reconstruction import check_damping, input_grams, refit_columns
from .value_checks import short

logger = logging.getLogger(__name__)

__all__ = ["compress", "shrink_to_shape", "remove_layers", "CompressionResult", "kept_units"]


@dataclass
class CompressionResult:
    """The compressed model, its shape and size, and the candidate shapes a search scored (shape, parameters,
    calibration loss after one-shot compression), best first."""

    model: nn.Module
    shape: ModelShape
    parameters: int
    parameters_before: int
    candidates: List[Tuple[ModelShape, int, float]] = field(default_factory=list)
    importance: Optional[UnitImportance] = None

    def layer_map(self) -> List[List[int]]:
        """``[[student, teacher], ...]`` pairs of ``hidden_states`` indexes for layer-wise distillation from the
        original model (``DistillationConfig.layer_map``): each kept layer's output with the output of the layer
        it was copied from. The uniform default map of different depths would pair a layer after a removed one
        with the wrong teacher layer."""
        if self.importance is None:
            raise ValueError("this result carries no importance: the kept layers are unknown")
        kept = kept_units(self.importance, self.shape).layers
        return [[student + 1, teacher + 1] for student, teacher in enumerate(kept)]


@dataclass
class KeptUnits:
    layers: List[int]
    hidden: torch.Tensor               # sorted channel indices
    kv_groups: List[torch.Tensor]      # per kept layer, sorted group indices
    ffn_channels: List[torch.Tensor]   # per kept layer, sorted channel indices


def kept_units(importance: UnitImportance, shape: ModelShape) -> KeptUnits:
    """The most important units at ``shape``'s sizes (indices sorted, so the kept units keep their order)."""
    def top(scores: torch.Tensor, count: int) -> torch.Tensor:
        return torch.sort(torch.topk(scores.float(), count, sorted=False).indices).values

    layers = top(importance.layers, shape.num_hidden_layers).tolist()
    return KeptUnits(layers, top(importance.hidden, shape.hidden_size),
                     [top(importance.kv_groups[i], shape.num_key_value_heads) for i in layers],
                     [top(importance.ffn_channels[i], shape.intermediate_size) for i in layers])


def shrink_to_shape(model: nn.Module, importance: UnitImportance, shape: ModelShape,
                    grams: Optional[List[Dict[str, torch.Tensor]]] = None, damping: float = 0.01) -> nn.Module:
    """A new model of ``model``'s class at ``shape`` holding its most important units (module docstring). With
    ``grams`` (:func:`hf_prune.reconstruction.input_grams` of ``model``), each kept layer's ``o_proj`` and
    ``down_proj`` are refit by least squares to the original layer's output instead of copied."""
    shape.check_within(ModelShape.of(model.config))
    return _copy_units(model, kept_units(importance, shape), shape, grams, damping)


@torch.no_grad()
def _copy_units(model: nn.Module, kept: KeptUnits, shape: ModelShape,
                grams: Optional[List[Dict[str, torch.Tensor]]] = None, damping: float = 0.01) -> nn.Module:
    """A new model of ``model``'s class at ``shape`` holding the ``kept`` units (output projections refit
    against ``grams`` when given)."""
    parts = decoder_parts(model)
    original = ModelShape.of(model.config)
    config = shape_config(model.config, shape)
    if isinstance(getattr(model.config, "layer_types", None), list):
        config.layer_types = [model.config.layer_types[i] for i in kept.layers]
    dtype = parts.embed.weight.dtype
    small = type(model)(config).to(dtype=dtype, device=parts.embed.weight.device)
    small_parts = decoder_parts(small)
    hidden = kept.hidden.to(parts.embed.weight.device)
    scale = math.sqrt(original.hidden_size / shape.hidden_size)
    small_parts.embed.weight.copy_(parts.embed.weight[:, hidden])
    small_parts.norm.weight.copy_(parts.norm.weight[hidden] * scale)
    if not getattr(config, "tie_word_embeddings", False) or small.lm_head.weight is not small_parts.embed.weight:
        small.lm_head.weight.copy_(parts.lm_head.weight[:, hidden])
        if getattr(parts.lm_head, "bias", None) is not None:
            small.lm_head.bias.copy_(parts.lm_head.bias)
    group = original.num_attention_heads // original.num_key_value_heads
    for position, index in enumerate(kept.layers):
        source, target = parts.layers[index], small_parts.layers[position]
        groups = kept.kv_groups[position].to(hidden.device)
        kv_rows = _unit_rows(groups, original.head_dim)
        query_rows = _unit_rows(_query_heads(groups, group), original.head_dim)
        attention, new_attention = source.self_attn, target.self_attn
        _copy_linear(new_attention.q_proj, attention.q_proj, query_rows, hidden)
        _copy_linear(new_attention.k_proj, attention.k_proj, kv_rows, hidden)
        _copy_linear(new_attention.v_proj, attention.v_proj, kv_rows, hidden)
        _copy_linear(new_attention.o_proj, attention.o_proj, hidden, query_rows, bias_rows=hidden,
                     gram=None if grams is None else grams[index]["o_proj"], damping=damping)
        for name in ("q_norm", "k_norm"):  # Qwen3: per-head norms over head_dim
            if hasattr(attention, name):
                getattr(new_attention, name).load_state_dict(getattr(attention, name).state_dict())
        channels = kept.ffn_channels[position].to(hidden.device)
        _copy_linear(target.mlp.gate_proj, source.mlp.gate_proj, channels, hidden)
        _copy_linear(target.mlp.up_proj, source.mlp.up_proj, channels, hidden)
        _copy_linear(target.mlp.down_proj, source.mlp.down_proj, hidden, channels, bias_rows=hidden,
                     gram=None if grams is None else grams[index]["down_proj"], damping=damping)
        target.input_layernorm.weight.copy_(source.input_layernorm.weight[hidden] * scale)
        target.post_attention_layernorm.weight.copy_(source.post_attention_layernorm.weight[hidden] * scale)
    if getattr(model, "generation_config", None) is not None:
        small.generation_config = model.generation_config
    small.train(model.training)
    return small


def remove_layers(model: nn.Module, layers: Iterable[int]) -> nn.Module:
    """A new model of ``model``'s class without the decoder layers ``layers`` (every width kept): exact for layers
    that add nothing to the residual stream (zero ``o_proj`` and ``down_proj``, or faded out)."""
    parts = decoder_parts(model)
    original = ModelShape.of(model.config)
    count = len(parts.layers)
    removed = set(layers)
    if not removed or not removed <= set(range(count)) or len(removed) >= count:
        raise ValueError(f"layers={short(sorted(removed))}: give decoder layer indices in [0, {count}), fewer than all")
    layers_kept = [index for index in range(count) if index not in removed]
    every_unit = KeptUnits(layers_kept, torch.arange(original.hidden_size),
                           [torch.arange(original.num_key_value_heads)] * len(layers_kept),
                           [torch.arange(original.intermediate_size)] * len(layers_kept))
    return _copy_units(model, every_unit, dataclasses.replace(original, num_hidden_layers=len(layers_kept)))


def _query_heads(groups: torch.Tensor, group: int) -> torch.Tensor:
    """Query heads of KV groups ``groups`` (group g shares query heads g*group .. g*group+group-1)."""
    return (groups[:, None] * group + torch.arange(group, device=groups.device)).reshape(-1)


def _unit_rows(units: torch.Tensor, size: int) -> torch.Tensor:
    return (units[:, None] * size + torch.arange(size, device=units.device)).reshape(-1)


def _copy_linear(target: nn.Linear, source: nn.Linear, rows: torch.Tensor, columns: torch.Tensor,
                 bias_rows: Optional[torch.Tensor] = None, gram: Optional[torch.Tensor] = None,
                 damping: float = 0.01) -> None:
    """``source``'s ``rows`` x ``columns`` into ``target``; with the Gram of ``source``'s input, the kept columns
    refit to the output of all of them (:func:`hf_prune.reconstruction.refit_columns`)."""
    if gram is None or len(columns) == source.weight.shape[1]:  # every column kept: the original is the best fit
        target.weight.copy_(source.weight[rows][:, columns])
    else:
        target.weight.copy_(refit_columns(source.weight[rows], gram, columns, damping))
    if source.bias is not None:
        target.bias.copy_(source.bias[rows if bias_rows is None else bias_rows])


def compress(model: nn.Module, batches: Iterable[dict], *, target_params: Optional[float] = None,
             shape: Optional[ModelShape] = None, search: bool = True, max_batches: int = 16,
             score_batches: int = 4, aggregation: str = "l2", layer_method: str = "cosine",
             unit_score: str = "activation",
             shapes: Optional[List[ModelShape]] = None, refit: bool = False,
             damping: float = 0.01) -> CompressionResult:
    """One-shot compression of ``model`` (unchanged) to a stock model of at most ``target_params`` parameters, or
    to ``shape``. Importance comes from the first ``max_batches`` of ``batches``; with ``search`` (and a target),
    every candidate shape (``shapes``, default :func:`candidate_shapes`) is built and scored by the language-model
    loss on the next ``score_batches`` batches (on their ``labels`` where they carry them, e.g. only a task's answer
    tokens; else every non-padding token), and the lowest wins; without it, the first candidate whose widths
    are most even is taken. The result lists the shapes tried with their sizes and scores. With ``refit``, every
    shape's ``o_proj`` and ``down_proj`` are refit by least squares to the original layers' outputs on the
    calibration batches (:mod:`hf_prune.reconstruction`, ridge ``damping``) instead of copied. ``unit_score``:
    KV groups and FFN channels ranked by their activations (``"activation"``), by what they write to the residual
    stream (``"output"``), or KV groups, FFN and hidden channels by the loss on the calibration batches' ``labels``
    (``"fisher"``: :mod:`hf_prune.fisher_importance`, one backward pass per batch; see
    :mod:`hf_prune.activation_importance`)."""
    if (target_params is None) == (shape is None):
        raise ValueError("give exactly one of target_params (a parameter count, e.g. 90e6) and shape (a ModelShape)")
    if not isinstance(refit, bool):
        raise ValueError(f"refit must be True or False, got {short(refit)}")
    check_damping(damping)
    batches = list(batches)
    calibration, held_out = batches[:max_batches], batches[max_batches:max_batches + score_batches]
    importance = measure_importance(model, calibration, max_batches=max_batches, aggregation=aggregation,
                                    layer_method=layer_method, unit_score=unit_score)
    grams = input_grams(model, calibration, max_batches=max_batches) if refit else None

    def shrink(chosen: ModelShape) -> nn.Module:
        return shrink_to_shape(model, importance, chosen, grams, damping)

    before = count_parameters(model.config)
    if shape is not None:
        small = shrink(shape)
        return CompressionResult(small, shape, _parameters(small), before, [], importance)
    candidates = shapes if shapes is not None else candidate_shapes(model.config, target_params)
    over = [candidate for candidate in candidates if count_parameters(model.config, candidate) > target_params]
    if over:
        raise ValueError(f"shape {over[0].describe()} has more than target_params {short(target_params)}")
    if not search or len(candidates) == 1:
        chosen = _most_even(candidates, ModelShape.of(model.config))
        small = shrink(chosen)
        return CompressionResult(small, chosen, _parameters(small), before, [], importance)
    if not held_out:
        raise ValueError(f"the shape search scores candidates on batches after the first {max_batches}; give at "
                         f"least {max_batches + 1} batches (or search=False)")
    scored = []
    for candidate in candidates:
        small = shrink(candidate)
        loss = language_model_loss(small, held_out)
        scored.append((candidate, _parameters(small), loss))
        logger.info("candidate %s: %s parameters, calibration loss %.4f", candidate.describe(),
                    f"{scored[-1][1]:,}", loss)
        del small
    scored.sort(key=lambda row: row[2])
    winner = scored[0][0]
    small = shrink(winner)
    return CompressionResult(small, winner, _parameters(small), before, scored, importance)


def _most_even(candidates: List[ModelShape], original: ModelShape) -> ModelShape:
    """The full-depth candidate whose hidden and FFN reductions are the most alike (no layer removed)."""
    full_depth = [c for c in candidates if c.num_hidden_layers == original.num_hidden_layers] or candidates
    return min(full_depth, key=lambda c: abs(c.hidden_size / original.hidden_size
                                             - c.intermediate_size / original.intermediate_size))


def _parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
