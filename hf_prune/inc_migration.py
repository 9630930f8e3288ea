"""Intel Neural Compressor's ``WeightPruningConfig`` arguments, read as they are, into ``PruningConfig`` fields.

INC 3.8 removed its pruner; its users keep configs such as ``WeightPruningConfig(target_sparsity=0.8,
pattern="4x1", pruning_type="snip_momentum", start_step=..., pruning_configs=[{...}])``. :func:`inc_fields` (behind
``PruningConfig.from_inc``) takes the same keyword arguments (INC's names, INC's defaults where a key is absent) and
returns the fields of the hf_prune config that means the same; a key or value hf_prune does not implement is refused by name rather than dropped. The README's
"Coming from Intel Neural Compressor" table lists every key and each difference in behaviour.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from .modules import HEAD_NAME_PATTERN
from .value_checks import short

__all__ = ["inc_fields", "INC_KEYS"]

#: INC's own defaults for the keys whose absence changes the result (``WeightPruningConfig.__init__``).
INC_DEFAULTS = {"target_sparsity": 0.9, "sparsity_decay_type": "exp", "pruning_type": "snip_momentum",
                "pattern": "4x1", "pruning_scope": "global"}
PRUNING_TYPES = {"snip_momentum": "snip_momentum", "snip": "snip", "magnitude": "magnitude", "gradient": "gradient"}
DECAY_TYPES = {"exp": "exp", "cube": "cubic", "cos": "cos", "linear": "linear"}
#: INC keys that are accepted only at the value that does nothing beyond what hf_prune does anyway.
NEUTRAL_VALUES = {"low_memory_usage": (False,), "resume_from_pruned_checkpoint": (False,), "reg_type": (None,),
                  "backend": (None, "default"), "parameters": ({}, {"reg_coeff": 0.0}), "reg_coeff": (0.0, 0)}
#: Every key INC's WeightPruningConfig (global or per-op) understands.
INC_KEYS = ("target_sparsity", "pruning_type", "criterion_type", "pattern", "op_names", "excluded_op_names",
            "start_step", "end_step", "pruning_scope", "pruning_frequency", "min_sparsity_ratio_per_op",
            "max_sparsity_ratio_per_op", "sparsity_decay_type", "pruning_op_types", "criterion_reduce_type",
            *NEUTRAL_VALUES)
#: INC keys whose value is one string, and those whose value is a list of strings.
STRING_KEYS = ("pruning_type", "pattern", "pruning_scope", "sparsity_decay_type")
OPTIONAL_STRING_KEYS = ("criterion_type", "criterion_reduce_type", "name")
LIST_KEYS = ("op_names", "excluded_op_names", "pruning_op_types")
#: Modules that can never be pruned by hf_prune's selection in a config that has per-op groups only: INC prunes
#: just the ops its ``pruning_configs`` name, so the top-level (catch-all) group must select nothing.
_NOTHING_ELSE = [r".*"]


def inc_fields(pruning_configs: Optional[List[Dict[str, Any]]] = None, **global_keys: Any) -> Dict[str, Any]:
    """``PruningConfig`` fields from INC ``WeightPruningConfig`` keyword arguments (``pruning_configs`` = its per-op
    dicts); :meth:`PruningConfig.from_inc` builds the config (this module needs no config class: no import cycle).

    Global keys are the defaults of every per-op dict, as in INC. With per-op dicts only the ops they name are
    pruned (each dict becomes a group); without, the global keys prune every Linear (task heads excluded).
    """
    _check_keys(global_keys, "WeightPruningConfig")
    if pruning_configs is not None and not isinstance(pruning_configs, (list, tuple)):
        raise ValueError(f"pruning_configs must be a list of dicts of INC keys, got {short(pruning_configs)} "
                         f"({type(pruning_configs).__name__})")
    for index, entry in enumerate(pruning_configs or []):
        if not isinstance(entry, dict):
            raise ValueError(f"pruning_configs[{index}] must be a dict of INC keys, got {short(entry)} "
                             f"({type(entry).__name__})")
        _check_keys(entry, f"pruning_configs[{index}]")
    local = [dict(entry) for entry in (pruning_configs or []) if entry]   # INC's default is [{}]: no per-op dict
    top = _translate({**INC_DEFAULTS, **global_keys}, "WeightPruningConfig")
    if not local:
        return top
    groups = []
    for index, entry in enumerate(local):
        group = _translate({**INC_DEFAULTS, **global_keys, **entry}, f"pruning_configs[{index}]")
        group.setdefault("include", [r".*"])
        group["name"] = entry.get("name") or f"inc_{index}"
        groups.append(group)
    top.pop("include", None)
    return {**top, "exclude": _NOTHING_ELSE, "groups": groups}


def _check_keys(keys: Dict[str, Any], where: str) -> None:
    unknown = sorted(set(keys) - set(INC_KEYS) - {"name"})
    if unknown:
        raise ValueError(f"{where}: INC key(s) {unknown} are not INC WeightPruningConfig keys hf_prune knows; "
                         f"known: {', '.join(INC_KEYS)}")
    _check_types(keys, where)
    for key, allowed in NEUTRAL_VALUES.items():
        if key in keys and keys[key] not in allowed:
            raise ValueError(f"{where}: {key}={keys[key]!r} is not supported by hf_prune (only {allowed[0]!r}, INC's "
                             "default)" + (": to fine-tune a pruned checkpoint keeping its zeros use pattern 'lock'"
                                           if key == "resume_from_pruned_checkpoint" else ""))


def _check_types(keys: Dict[str, Any], where: str) -> None:
    """INC's string keys must be strings and its name lists lists of strings: ``op_names="layer"`` would otherwise
    be read letter by letter, and ``pruning_type=None`` would end in a traceback."""
    for key in STRING_KEYS + OPTIONAL_STRING_KEYS:
        if key in keys and not isinstance(keys[key], str) and not (key in OPTIONAL_STRING_KEYS and keys[key] is None):
            raise ValueError(f"{where}: {key} must be a string, got {short(keys[key])} ({type(keys[key]).__name__})")
    for key in LIST_KEYS:
        value = keys.get(key)
        if value is None:
            continue
        if isinstance(value, str) or not isinstance(value, (list, tuple)) \
                or not all(isinstance(item, str) for item in value):
            hint = f" (a single string: write [{value!r}])" if isinstance(value, str) else ""
            raise ValueError(f"{where}: {key} must be a list of strings, got {short(value)}{hint}")


def _translate(keys: Dict[str, Any], where: str) -> Dict[str, Any]:
    """INC keys (already merged with INC's defaults) -> PruningConfig fields."""
    fields: Dict[str, Any] = {}
    pruning_type = keys["pruning_type"]
    if keys.get("criterion_type") not in (None, pruning_type):
        raise ValueError(f"{where}: criterion_type {keys['criterion_type']!r} differs from pruning_type "
                         f"{pruning_type!r}; INC uses pruning_type")
    if pruning_type == "pattern_lock":
        fields["pattern"] = "lock"
    elif pruning_type in PRUNING_TYPES:
        fields["criterion"] = PRUNING_TYPES[pruning_type]
        fields["pattern"] = _pattern(keys["pattern"], where)
        fields["target_sparsity"] = keys["target_sparsity"]
        decay = keys["sparsity_decay_type"]
        if decay not in DECAY_TYPES:
            raise ValueError(f"{where}: sparsity_decay_type {decay!r} is not supported; allowed: {', '.join(DECAY_TYPES)}")
        fields["schedule"] = DECAY_TYPES[decay]
        fields["scope"] = keys["pruning_scope"]
        for inc_key, field_name in (("start_step", "start_step"), ("end_step", "end_step"),
                                    ("pruning_frequency", "frequency"),
                                    ("min_sparsity_ratio_per_op", "min_sparsity_per_layer"),
                                    ("max_sparsity_ratio_per_op", "max_sparsity_per_layer"),
                                    ("criterion_reduce_type", "block_reduce")):
            if keys.get(inc_key) is not None:
                fields[field_name] = keys[inc_key]
        if fields.get("start_step") == 0 and fields.get("end_step") in (None, 0) and fields["criterion"] != "magnitude":
            raise ValueError(f"{where}: start_step=end_step=0 with pruning_type {pruning_type!r} would prune at step 0, "
                             "before any gradient (INC's defaults, which INC users override in update_config); give "
                             "start_step/end_step, or leave both out to let hf_prune size them from max_steps")
    elif pruning_type.endswith("_progressive"):
        raise ValueError(f"{where}: pruning_type {pruning_type!r} (INC's progressive masks within each pruning "
                         f"interval) is not implemented; use {pruning_type[:-len('_progressive')]!r} with a smaller "
                         "pruning_frequency for a finer schedule")
    else:
        raise ValueError(f"{where}: pruning_type {pruning_type!r} is not supported; allowed: "
                         f"{', '.join([*PRUNING_TYPES, 'pattern_lock'])}")
    if keys.get("op_names"):
        fields["include"] = list(keys["op_names"])
    fields["exclude"] = [HEAD_NAME_PATTERN] + list(keys.get("excluded_op_names") or [])  # the default exclusion
    op_types = keys.get("pruning_op_types", ["Conv", "Linear"])
    if "Linear" not in op_types or set(op_types) - {"Conv", "Linear"}:
        raise ValueError(f"{where}: pruning_op_types {op_types!r}: hf_prune prunes Linear layers (and transformers' "
                         "GPT-2 Conv1D, which INC's 'Conv' also matches); it must include 'Linear' and name only "
                         "'Linear'/'Conv'")
    return fields


def _pattern(pattern: str, where: str) -> str:
    """INC's NxM and N:M mean what hf_prune's do. Its ``channelx1`` / ``1xchannel`` prune whole input columns /
    output rows of each op on its own; hf_prune's ``channel`` unit is an FFN channel (a row of the up projection and
    the matching column of the down projection, ranked together), a different thing: refused, not approximated."""
    if isinstance(pattern, str) and "channel" in pattern:
        raise ValueError(f"{where}: INC pattern {pattern!r} (whole {'input columns' if pattern.startswith('channel') else 'output rows'} "
                         "of each op, pruned per op) has no hf_prune equivalent; for FFN channels use hf_prune's "
                         "PruningConfig(pattern='channel'), whose unit is the up-projection row with its down-projection "
                         "column")
    return pattern
