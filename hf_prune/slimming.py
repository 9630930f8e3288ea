"""Physical slimming: remove pruned attention heads and FFN channels for real, save and load slim models.

Masks only zero weights, and no stock CPU kernel turns zeros into speed. Removing whole heads and channels
does: the Linear layers become smaller, each layer keeps its own head count and FFN width. transformers 5 has
no ``prune_heads`` any more, so hf_prune owns this.

A unit is removed when it cannot contribute to the output: a head whose columns in the attention output
projection are all zero, an FFN channel whose column in the down projection is zero. (hf_prune's ``"head"`` and
``"channel"`` patterns zero those, and the unit's rows and biases as well.) The slim model computes exactly
what the masked one did, up to float rounding.

The layout (kept heads and FFN width per layer) is stored in ``model.config`` under :data:`SLIM_LAYOUT_KEY`, so
``save_pretrained`` writes it into ``config.json`` unchanged; :func:`from_pretrained` reads it back, builds the
slim shapes and loads the safetensors weights. A folder without a layout loads as an ordinary model.

A stock ``AutoModelFor*.from_pretrained`` cannot build those shapes, and its size-mismatch hint
(``ignore_mismatched_sizes=True``) would load random layers. So a slimmed model's config is given a subclass whose
``model_type`` reads ``"<type> slim (load with hf_prune.from_pretrained)"``: that is what transformers' own
refusal then names, and what ``config.json`` says on the Hub.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import nn

from .architectures import BASE_MODEL_TYPE_ATTRIBUTE, StructuredBlock, find_blocks, get_architecture
from .activation_importance import LLAMA_FAMILY
from .hub_loading import resolves_inside
from .model_metadata import note_slimmed
from .value_checks import short

logger = logging.getLogger(__name__)

__all__ = ["slim", "from_pretrained", "load_config", "SlimSummary", "SLIM_LAYOUT_KEY", "SLIM_MODEL_TYPE"]

SLIM_LAYOUT_KEY = "hf_prune_slim_layout"
SLIM_MODEL_TYPE = "{base} slim (load with hf_prune.from_pretrained)"
_SLIM_CLASS_PREFIX = "HfPruneSlim"


def _slim_config_class(base: type) -> type:
    """``base`` (a transformers config class) with the slim ``model_type``; one class per base, created on demand
    and reachable as an attribute of this module so that configs still pickle."""
    name = _SLIM_CLASS_PREFIX + base.__name__
    if name not in globals():
        globals()[name] = type(name, (base,), {
            "model_type": SLIM_MODEL_TYPE.format(base=base.model_type), BASE_MODEL_TYPE_ATTRIBUTE: base.model_type,
            "__module__": __name__, "__doc__": f"{base.__name__} of a model slimmed by hf_prune."})
    return globals()[name]


def __getattr__(name: str):  # unpickling a slim config in a fresh process recreates its class
    import transformers

    base = getattr(transformers, name[len(_SLIM_CLASS_PREFIX):], None) if name.startswith(_SLIM_CLASS_PREFIX) else None
    if base is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _slim_config_class(base)


def _mark_slim(config) -> None:
    if not getattr(type(config), BASE_MODEL_TYPE_ATTRIBUTE, None):
        config.__class__ = _slim_config_class(type(config))


@dataclass
class SlimSummary:
    """What :func:`slim` removed."""

    heads_before: int
    heads_after: int
    channels_before: int
    channels_after: int
    parameters_before: int
    parameters_after: int

    def __str__(self) -> str:
        return (f"heads {self.heads_before} -> {self.heads_after}, FFN channels {self.channels_before} -> "
                f"{self.channels_after}, parameters {self.parameters_before:,} -> {self.parameters_after:,}")


@torch.no_grad()
def slim(model: nn.Module) -> SlimSummary:
    """Remove, in place, every head and FFN channel that contributes nothing (see module docstring).

    Each layer keeps at least one head and one channel (a zero-width layer cannot be reshaped); such a kept
    unit has zero output weights, so outputs are unchanged. Returns what was removed; the new layout is in
    ``model.config`` for ``save_pretrained``.
    """
    parameters_before = _count_parameters(model)
    layout = dict(getattr(model.config, SLIM_LAYOUT_KEY, None) or {})
    counts = {}
    for kind in ("head", "channel"):
        before = after = 0
        for block in find_blocks(model, kind):
            keep = _live_units(model, block)
            before, after = before + block.num_units, after + len(keep)
            if len(keep) < block.num_units:
                _shrink_block(model, block, keep)
            entry = layout.setdefault(block.layer, {})
            if kind == "head":
                previous = entry.get("heads", list(range(block.num_units)))
                entry["heads"] = [previous[i] for i in keep]  # indexes among the original heads
            else:
                entry["intermediate_size"] = len(keep)
        counts[kind] = (before, after)
    summary = SlimSummary(*counts["head"], *counts["channel"], parameters_before, _count_parameters(model))
    if _stock_config_if_uniform(model, layout):
        logger.info("every layer keeps the same widths: the slim model has a stock %s", type(model.config).__name__)
    else:
        setattr(model.config, SLIM_LAYOUT_KEY, layout)
        if summary.parameters_after < summary.parameters_before:
            _mark_slim(model.config)
    if summary.parameters_after < summary.parameters_before:
        note_slimmed(model, summary.parameters_before, summary.parameters_after)
    logger.info("slimmed %s: %s", type(model).__name__, summary)
    return summary


def _stock_config_if_uniform(model: nn.Module, layout: Dict[str, dict]) -> bool:
    """A Llama-family model (explicit ``head_dim``, heads read from the projections) whose layers all keep the same
    number of KV groups and FFN channels needs no layout: its config's own sizes describe it, and any
    ``AutoModelForCausalLM.from_pretrained`` loads it. Sets those sizes and returns True when that holds (and the
    config class accepts them); otherwise changes nothing."""
    config = model.config
    if getattr(config, "model_type", None) not in LLAMA_FAMILY or getattr(config, SLIM_LAYOUT_KEY, None) \
            or getattr(type(config), BASE_MODEL_TYPE_ATTRIBUTE, None):
        return False
    groups = {len(entry.get("heads", ())) for entry in layout.values()}
    widths = {entry.get("intermediate_size") for entry in layout.values()}
    if len(groups) != 1 or len(widths) != 1 or None in widths or 0 in groups:
        return False
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    kept = groups.pop()
    sizes = dict(num_key_value_heads=kept, num_attention_heads=kept * (heads // kv_heads),
                 intermediate_size=widths.pop(), head_dim=int(getattr(config, "head_dim", None) or
                                                             config.hidden_size // heads))
    try:
        type(config).from_dict({**config.to_dict(), **sizes})
    except Exception as err:  # noqa: BLE001 - the config class's validation (e.g. hidden % heads), any error type
        logger.info("uniform slim widths %s are not a valid %s (%s): keeping the hf_prune layout", sizes,
                    type(config).__name__, err.__cause__ or err)
        return False
    for key, value in sizes.items():
        setattr(config, key, value)
    return True


def _live_units(model: nn.Module, block: StructuredBlock) -> List[int]:
    """Indexes of units with a non-zero output column; at least one (the first) is kept."""
    live = torch.zeros(block.num_units, dtype=torch.bool)
    for name in block.columns:
        weight = model.get_submodule(name).weight
        per_unit = weight.view(weight.shape[0], block.num_units, block.size_of(name))
        live |= (per_unit != 0).any(dim=(0, 2)).cpu()
    return live.nonzero().flatten().tolist() or [0]


@torch.no_grad()
def _shrink_block(model: nn.Module, block: StructuredBlock, keep: List[int]) -> None:
    for role, members in (("rows", block.rows), ("columns", block.columns)):
        for name in members:
            size = block.size_of(name)
            index = torch.tensor([u * size + k for u in keep for k in range(size)])
            old = model.get_submodule(name)
            dim = 0 if role == "rows" else 1
            index_on_device = index.to(old.weight.device)
            weight = old.weight.index_select(dim, index_on_device)
            bias = None if old.bias is None else (old.bias.index_select(0, index_on_device) if role == "rows" else old.bias)
            new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                            device=old.weight.device, dtype=old.weight.dtype)
            new.weight.copy_(weight)
            if bias is not None:
                new.bias.copy_(bias)
            new.weight.requires_grad_(old.weight.requires_grad)
            model.set_submodule(name, new)
    if block.kind == "head":
        _set_head_count(model, block.layer, len(keep))


def _set_head_count(model: nn.Module, layer: str, heads: int) -> None:
    architecture = get_architecture(model)
    attention = model.get_submodule(f"{layer}.{architecture.attention}")
    if architecture.heads_attribute is None:
        return  # the attention reads its head count from the projections' shapes (Llama family)
    setattr(attention, architecture.heads_attribute, heads)
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = heads * attention.attention_head_size


def _resize_to_layout(model: nn.Module, layout: Dict[str, dict]) -> None:
    """Give a freshly built full-size model the slim shapes of ``layout`` (weights are loaded afterwards)."""
    blocks = {block.layer: block for block in find_blocks(model, "head")}
    channels = {block.layer: block for block in find_blocks(model, "channel")}
    unknown = sorted(set(layout) - set(blocks))
    if unknown:
        raise ValueError(f"slim layout names layers {unknown} that {type(model).__name__} does not have")
    for layer, entry in layout.items():
        if not isinstance(entry, dict) or set(entry) - {"heads", "intermediate_size"}:
            raise ValueError(f"slim layout of layer {layer!r} must map 'heads' and/or 'intermediate_size', got "
                             f"{short(entry)}")
        if "heads" in entry:
            heads, total = entry["heads"], blocks[layer].num_units
            if not isinstance(heads, list) or not heads or len(heads) > total or len(set(heads)) != len(heads) \
                    or not all(isinstance(h, int) and not isinstance(h, bool) and 0 <= h < total for h in heads):
                raise ValueError(f"slim layout of layer {layer!r}: 'heads' must list 1 to {total} distinct head "
                                 f"indexes in [0, {total}), got {short(heads)}")
            _shrink_block(model, blocks[layer], list(range(len(heads))))
        if "intermediate_size" in entry:
            size, total = entry["intermediate_size"], channels[layer].num_units
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= total:
                raise ValueError(f"slim layout of layer {layer!r}: 'intermediate_size' must be an integer in "
                                 f"[1, {total}], got {short(size)}")
            _shrink_block(model, channels[layer], list(range(size)))


def from_pretrained(path: str, auto_class=None, config=None, dtype: Optional[torch.dtype] = None,
                    **kwargs) -> nn.Module:
    """Load a model saved by ``save_pretrained``, slim or not.

    The model class is ``auto_class`` when given (e.g. ``AutoModelForQuestionAnswering`` to put a new QA head on a
    base model), else the class the folder was saved as (``config.architectures``); a folder that names none, or
    a class this transformers does not have, is refused rather than loaded with a head of a guessed task. With a
    slim layout in its config the model is built at the slim shapes and the local safetensors weights are
    loaded strictly; otherwise this is ``model_class.from_pretrained(path, config=config, **kwargs)``, Hub ids
    included. ``kwargs`` go to ``from_pretrained`` (cache_dir, revision, token, ...).
    """
    kwargs.setdefault("trust_remote_code", False)  # explicit: transformers would otherwise ask on the terminal
    config = config if config is not None else load_config(path, **kwargs)
    model_class = auto_class or _saved_class(path, config)
    layout = getattr(config, SLIM_LAYOUT_KEY, None)
    if not layout:
        return model_class.from_pretrained(path, config=config, **({"dtype": dtype} if dtype else {}), **kwargs)
    if not os.path.isdir(path):
        raise ValueError(f"slim models load from a local folder; download {path!r} first (huggingface_hub."
                         "snapshot_download)")
    stock_config = copy.copy(config)   # transformers' auto classes look models up by the stock config class
    stock_config.__class__ = next(c for c in type(config).__mro__ if not c.__name__.startswith(_SLIM_CLASS_PREFIX))
    model = model_class.from_config(stock_config) if hasattr(model_class, "from_config") else model_class(stock_config)
    _mark_slim(model.config)
    _resize_to_layout(model, layout)
    _load_safetensors(model, path)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def load_config(path: str, **kwargs):
    """``AutoConfig.from_pretrained``, which also reads a slim folder's config (whose model_type it does not know)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_file = os.path.join(path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            config_dict = json.load(handle)
        for base in CONFIG_MAPPING.keys():
            if config_dict.get("model_type") == SLIM_MODEL_TYPE.format(base=base):
                config_dict.pop("model_type")   # (an instance attribute would hide the slim class's model_type)
                config = CONFIG_MAPPING[base].from_dict(config_dict)
                _mark_slim(config)
                return config
    kwargs.setdefault("trust_remote_code", False)
    return AutoConfig.from_pretrained(path, **kwargs)


def inside_folder(folder: str, name: str) -> str:
    """``folder/name``, refused when it resolves (through links) outside ``folder``: a model folder handed over by
    someone else must not make hf_prune read other files of the machine."""
    path = os.path.join(folder, name)
    if not resolves_inside(path, folder):
        raise ValueError(f"{path} resolves to {os.path.realpath(path)!r}, outside the model folder {folder!r}")
    return path


def _saved_class(path: str, config):
    import transformers

    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        raise ValueError(f"{path}: config.json names no architecture to load; pass auto_class= (e.g. "
                         "transformers.AutoModelForSequenceClassification)")
    model_class = getattr(transformers, architectures[0], None) if isinstance(architectures[0], str) else None
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise ValueError(f"{path}: architecture {short(architectures[0])} is not a model class of transformers "
                         f"{transformers.__version__}; pass auto_class=")
    return model_class


def _load_safetensors(model: nn.Module, folder: str) -> None:
    from safetensors.torch import load_file

    index_file = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index_file):
        with open(index_file, encoding="utf-8") as handle:
            files = sorted(set(json.load(handle)["weight_map"].values()))
        escaping = [name for name in files if os.path.basename(name) != name or name in ("", ".", "..")]
        if escaping:  # an index names shards inside its folder; anything else could read files elsewhere
            raise ValueError(f"{index_file} names shard files outside its folder: {escaping}")
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise ValueError(f"no model.safetensors (or its index) in {folder!r}")
    state = {}
    for file in files:
        path = inside_folder(folder, file)
        try:
            state.update(load_file(path))
        except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
            raise ValueError(f"{path} is not a readable safetensors file: {short(str(err))}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise ValueError(f"{folder}: weights do not fit the slim layout: missing {sorted(set(missing) - tied)}, "
                         f"unexpected {sorted(unexpected)}")
    if missing:
        model.tie_weights()


def _count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
