"""A decoder LLM's shape (depth and uniform widths), its parameter count, and the shapes that meet a size target.

Every layer of a shape has the same widths, so the shape *is* a stock config: the model's own config class with
smaller ``num_hidden_layers``, ``hidden_size``, ``intermediate_size``, ``num_attention_heads`` and
``num_key_value_heads`` (``head_dim`` explicit and unchanged). Parameter counts come from building the config's
model on the meta device (no memory), so biases, norms and tied embeddings count exactly as the model defines them.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import List, Optional

import torch
from transformers import AutoModelForCausalLM

from .value_checks import short

__all__ = ["ModelShape", "shape_config", "count_parameters", "candidate_shapes", "ffn_only_shape", "is_valid_shape"]


@dataclass(frozen=True)
class ModelShape:
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_dim: int

    @classmethod
    def of(cls, config) -> "ModelShape":
        heads = int(config.num_attention_heads)
        return cls(int(config.num_hidden_layers), int(config.hidden_size), heads,
                   int(getattr(config, "num_key_value_heads", None) or heads), int(config.intermediate_size),
                   int(getattr(config, "head_dim", None) or config.hidden_size // heads))

    def describe(self) -> str:
        return (f"{self.num_hidden_layers} layers, hidden {self.hidden_size}, heads {self.num_attention_heads}/"
                f"{self.num_key_value_heads} KV, FFN {self.intermediate_size}")

    def check_within(self, original: "ModelShape") -> None:
        """Refuse a shape that is not a sub-shape of ``original`` (compression only removes units)."""
        group = original.num_attention_heads // original.num_key_value_heads
        for field in dataclasses.fields(self):
            value, limit = getattr(self, field.name), getattr(original, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(f"shape {field.name}={short(value)}: must be an integer in [1, {limit}] (the "
                                 "model's own); compression removes units, it adds none")
        if self.head_dim != original.head_dim:
            raise ValueError(f"shape head_dim={self.head_dim}: heads are removed whole, head_dim stays "
                             f"{original.head_dim}")
        if self.num_attention_heads != self.num_key_value_heads * group:
            raise ValueError(f"shape num_attention_heads={self.num_attention_heads}: a KV group keeps its {group} "
                             f"query heads, so it must be {group} x num_key_value_heads ({self.num_key_value_heads})")


def shape_config(config, shape: ModelShape):
    """``config`` (copied) with ``shape``'s sizes; the RMSNorm epsilon scaled by ``hidden / new hidden`` (see
    :mod:`hf_prune.llm_compression`: the normalisation over fewer channels then matches the original's)."""
    new = copy.deepcopy(config)
    for field in dataclasses.fields(shape):
        setattr(new, field.name, getattr(shape, field.name))
    if getattr(config, "rms_norm_eps", None) is not None and shape.hidden_size != config.hidden_size:
        new.rms_norm_eps = config.rms_norm_eps * config.hidden_size / shape.hidden_size
    if isinstance(getattr(config, "layer_types", None), list):
        new.layer_types = list(config.layer_types[: shape.num_hidden_layers])  # replaced by the kept layers' types
    for attribute in ("pruning", "quantization_config"):
        if hasattr(new, attribute):
            delattr(new, attribute)
    try:  # the config class's own checks, as from_pretrained will run them (Llama: hidden % heads == 0)
        type(config).from_dict(new.to_dict())
    except Exception as err:  # noqa: BLE001 - ValueError, or huggingface_hub's strict-dataclass error wrapping one
        cause = err.__cause__ or err
        raise ValueError(f"shape {shape.describe()} is not a valid {type(config).__name__}: {cause}") from None
    return new


def is_valid_shape(config, shape: ModelShape) -> bool:
    """Whether the config class accepts ``shape`` (e.g. Llama refuses a hidden size that is not a multiple of the
    number of attention heads, even with ``head_dim`` explicit)."""
    try:
        shape_config(config, shape)
    except ValueError:
        return False
    return True


def count_parameters(config, shape: Optional[ModelShape] = None) -> int:
    """Parameters of the causal LM ``config`` describes (reshaped to ``shape``), tied weights counted once."""
    target = shape_config(config, shape) if shape is not None else config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(target)
    return sum(parameter.numel() for parameter in model.parameters())


def candidate_shapes(config, target_params: float, *, hidden_multiple: int = 16, ffn_multiple: int = 32,
                     depths: Optional[List[int]] = None) -> List[ModelShape]:
    """Uniform shapes of at most ``target_params`` parameters, each as close to it as the multiples allow: for every
    depth (default: the full depth down to the depth-only solution, in steps of 2), the FFN-only shape
    (:func:`ffn_only_shape`) and, for every KV-group count from all to all but one, the widths of hidden size and
    FFN shrunk as evenly as possible (the hidden size on multiples of ``hidden_multiple``, the FFN solved on
    multiples of ``ffn_multiple``); plus the depth-only shape. Shapes the config class refuses
    (:func:`is_valid_shape`) are skipped."""
    original = ModelShape.of(config)
    full = count_parameters(config)
    if not isinstance(target_params, (int, float)) or isinstance(target_params, bool) or not math.isfinite(
            target_params) or not 0 < target_params < full:
        raise ValueError(f"target_params must be a number below the model's {full:,} parameters, got "
                         f"{short(target_params)}")
    target = int(target_params)
    depth_only = _depth_only(config, original, target)
    if depths is None:
        lowest = depth_only.num_hidden_layers if depth_only else max(1, original.num_hidden_layers // 2)
        depths = list(range(original.num_hidden_layers, lowest - 1, -2))
    group = original.num_attention_heads // original.num_key_value_heads
    shapes = [depth_only] if depth_only else []
    for depth in depths:
        ffn_only = ffn_only_shape(config, target, depth=depth, ffn_multiple=ffn_multiple)
        if ffn_only is not None and ffn_only not in shapes:
            shapes.append(ffn_only)
        for kv in sorted({original.num_key_value_heads, max(1, original.num_key_value_heads - 1)}, reverse=True):
            shape = _balanced_width(config, original, target, depth, kv, kv * group, hidden_multiple, ffn_multiple)
            if shape is not None and shape not in shapes:
                shapes.append(shape)
    if not shapes:
        raise ValueError(f"no shape of {type(config).__name__} reaches target_params {target:,} (the model has "
                         f"{full:,}); ask for more parameters")
    return shapes


def ffn_only_shape(config, target_params: float, *, depth: Optional[int] = None,
                   ffn_multiple: int = 32) -> Optional[ModelShape]:
    """The shape that keeps the hidden size and every head and meets ``target_params`` by FFN channels alone (at
    ``depth`` layers, default all): the widest FFN on a multiple of ``ffn_multiple`` that fits, or None when even
    one multiple does not. It leaves every layer's attention and residual stream whole; on SmolLM2-135M and SQuAD
    it had the lowest one-shot losses of every shape scored and recovered best (``benchmarks/RESULTS.md``)."""
    if not isinstance(target_params, (int, float)) or isinstance(target_params, bool) or not math.isfinite(
            target_params) or target_params <= 0:
        raise ValueError(f"target_params must be a positive number of parameters, got {short(target_params)}")
    original = ModelShape.of(config)
    depth = original.num_hidden_layers if depth is None else depth
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= original.num_hidden_layers:
        raise ValueError(f"depth={short(depth)}: must be an integer in [1, {original.num_hidden_layers}]")
    narrowest = dataclasses.replace(original, num_hidden_layers=depth, intermediate_size=ffn_multiple)
    room = int(target_params) - count_parameters(config, narrowest)
    if room < 0:
        return None
    per_block = count_parameters(config, dataclasses.replace(narrowest, intermediate_size=2 * ffn_multiple)) \
        - count_parameters(config, narrowest)
    ffn = min(original.intermediate_size, ffn_multiple + (room // per_block) * ffn_multiple)
    return dataclasses.replace(narrowest, intermediate_size=ffn)


def _depth_only(config, original: ModelShape, target: int) -> Optional[ModelShape]:
    for depth in range(original.num_hidden_layers - 1, 0, -1):
        shape = dataclasses.replace(original, num_hidden_layers=depth)
        if count_parameters(config, shape) <= target:
            return shape
    return None


def _balanced_width(config, original: ModelShape, target: int, depth: int, kv: int, heads: int,
                    hidden_multiple: int, ffn_multiple: int) -> Optional[ModelShape]:
    """The hidden size and FFN width (hidden on its multiple, FFN solved to land just under the target) whose
    relative reductions are the most even, at this depth and head count."""
    best, best_gap = None, None
    for hidden in range(original.hidden_size - original.hidden_size % hidden_multiple, hidden_multiple - 1,
                        -hidden_multiple):
        base = ModelShape(depth, hidden, heads, kv, ffn_multiple, original.head_dim)
        if not is_valid_shape(config, base):
            continue
        smallest = count_parameters(config, base)
        room = target - smallest
        if room < 0:
            continue   # too big even with the narrowest FFN: smaller hidden sizes leave more room
        per_block = count_parameters(config, dataclasses.replace(base, intermediate_size=2 * ffn_multiple)) - smallest
        ffn = min(original.intermediate_size, ffn_multiple + (room // per_block) * ffn_multiple)
        shape = dataclasses.replace(base, intermediate_size=ffn)
        if count_parameters(config, shape) > target:
            continue
        gap = abs(hidden / original.hidden_size - ffn / original.intermediate_size)
        if best_gap is None or gap < best_gap:
            best, best_gap = shape, gap
        if ffn == original.intermediate_size and hidden < original.hidden_size:
            break
    return best
