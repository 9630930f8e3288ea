"""``PruningConfig``: every pruning knob, validated on construction, saved and loaded as JSON or YAML."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from .config_io import JsonConfigMixin, load_yaml
from .criteria import CRITERIA
from .inc_migration import inc_fields
from .model_metadata import read_pruning_section
from .modules import HEAD_NAME_PATTERN
from .patterns import get_pattern
from .schedules import SCHEDULES
from .value_checks import check_module_regex, short

__all__ = ["PruningConfig", "CONFIG_NAME", "DEFAULT_EXCLUDE", "load_yaml"]

CONFIG_NAME = "pruning_config.json"

#: Task heads and poolers are never pruned by default: they are small and every output depends on them. (The
#: Pruner also keeps the heads it finds from the model itself dense unless an ``include`` names them.)
DEFAULT_EXCLUDE: List[str] = [HEAD_NAME_PATTERN]
#: Fields that only name things: every other field changes which weights end up masked.
NAMING_FIELDS = ("name",)
#: Fields the Trainer's ``max_steps`` fills in when unset (see :meth:`PruningConfig.resolve_steps`).
STEP_FIELDS = ("start_step", "end_step", "frequency")
#: Default schedule, as fractions of ``max_steps``: scores accumulate over the first tenth, the target is reached
#: at three quarters, in about ten events (the first cubic event then prunes about a quarter of the target).
DEFAULT_START_FRACTION, DEFAULT_END_FRACTION, DEFAULT_EVENTS = 0.1, 0.75, 10
SCOPES = ("global", "local")
DEFAULT_TARGET_SPARSITY = 0.8
#: Fields that only shape scoring, ranking and scheduling, which pattern "lock" does not do: left at their defaults.
LOCK_UNUSED_FIELDS = ("criterion", "momentum", "block_reduce", "schedule", "start_step", "end_step", "frequency",
                      "scope", "min_sparsity_per_layer", "max_sparsity_per_layer", "calibration_batches",
                      "keep_multiple_of", "score_dtype")
BLOCK_REDUCTIONS = ("mean", "sum")
#: dtypes the running scores of gradient criteria may be kept in (bfloat16 halves their memory)
SCORE_DTYPES = ("float32", "bfloat16")


def _figure(target: Optional[float]) -> str:
    return "(loaded zeros)" if target is None else f"{target:.2f}"


def _check_regex_list(name: str, value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{name} must be a list of non-empty regular expressions, got {short(value)}")
    for item in value:
        check_module_regex(name, item)


@dataclass
class PruningConfig(JsonConfigMixin):
    """What to prune, how and when. See README "Configuration reference" for every field.

    ``groups`` holds partial configs (each with its own ``include``) that override fields for the modules
    they match, e.g. ``[{"include": ["intermediate", r"layer\\.\\d+\\.output"], "pattern": "2:4",
    "target_sparsity": 0.5}]``; modules matched by no group use the top-level fields.

    ``pattern="lock"`` keeps the zeros of the loaded weights (fine-tuning a sparse checkpoint): ``target_sparsity``
    may be left unset (the Pruner measures it) or states the sparsity the selected layers must already have.
    """

    target_sparsity: Optional[float] = None  # unset: 0.8, or for "lock" the measured sparsity
    pattern: str = "4x1"
    criterion: str = "snip_momentum"
    momentum: float = 0.9
    block_reduce: str = "mean"
    schedule: str = "cubic"
    start_step: Optional[int] = None
    end_step: Optional[int] = None
    frequency: Optional[int] = None
    scope: str = "global"
    min_sparsity_per_layer: float = 0.0
    max_sparsity_per_layer: float = 0.98
    include: Optional[List[str]] = None
    exclude: List[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    groups: List[Dict[str, Any]] = field(default_factory=list)
    name: Optional[str] = None
    calibration_batches: int = 16
    keep_multiple_of: int = 1  # head/channel: each layer keeps a multiple of this many units (GPU-friendly shapes)
    score_dtype: str = "float32"  # running scores of gradient criteria: "bfloat16" halves their bytes

    config_name: ClassVar[str] = CONFIG_NAME
    config_kind: ClassVar[str] = "pruning"

    def __post_init__(self) -> None:
        self._check_types()
        if get_pattern(self.pattern).locked:
            self._check_lock()
            if self.target_sparsity is None:
                return self._check_selection()
        elif self.target_sparsity is None:
            self.target_sparsity = DEFAULT_TARGET_SPARSITY
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {self.target_sparsity}")
        pattern = get_pattern(self.pattern)
        if self.target_sparsity > pattern.max_sparsity + 1e-9:
            raise ValueError(
                f"target_sparsity {self.target_sparsity} is above what pattern {short(self.pattern)} allows "
                f"(at most 1 - N/M = {pattern.max_sparsity:g})"
            )
        CRITERIA.get(self.criterion)
        SCHEDULES.get(self.schedule)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.block_reduce not in BLOCK_REDUCTIONS:
            raise ValueError(f"block_reduce must be one of {BLOCK_REDUCTIONS}, got {short(self.block_reduce)}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {short(self.scope)}")
        if self.score_dtype not in SCORE_DTYPES:
            raise ValueError(f"score_dtype must be one of {SCORE_DTYPES}, got {short(self.score_dtype)}")
        self._check_steps()
        if not 0.0 <= self.min_sparsity_per_layer <= self.max_sparsity_per_layer <= 1.0:
            raise ValueError(
                "need 0 <= min_sparsity_per_layer <= max_sparsity_per_layer <= 1, got "
                f"min={self.min_sparsity_per_layer}, max={self.max_sparsity_per_layer}"
            )
        if not self.min_sparsity_per_layer <= self.target_sparsity <= self.max_sparsity_per_layer:
            raise ValueError(
                f"target_sparsity {self.target_sparsity} must lie between min_sparsity_per_layer "
                f"({self.min_sparsity_per_layer}) and max_sparsity_per_layer ({self.max_sparsity_per_layer})"
            )
        self._check_selection()

    def _check_lock(self) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = [key for key in LOCK_UNUSED_FIELDS if getattr(self, key) != defaults[key]]
        if changed:
            raise ValueError(f"pattern 'lock' keeps the loaded zeros and prunes nothing, so {changed} do not apply; "
                             "leave them unset")

    def _check_selection(self) -> None:
        if self.include is not None:
            _check_regex_list("include", self.include)
        _check_regex_list("exclude", self.exclude)
        if not isinstance(self.groups, list):
            raise ValueError(f"groups must be a list of partial configs, got {short(self.groups)}")
        for index, group in enumerate(self.groups):
            self._group_config(index, group)

    def _check_types(self) -> None:
        """Each field of the type it documents, so a recipe's ``momentum: "x"`` is refused by name, not a TypeError."""
        numbers = ("target_sparsity", "momentum", "min_sparsity_per_layer", "max_sparsity_per_layer")
        for key in numbers:
            value = getattr(self, key)
            if key == "target_sparsity" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{key} must be a number, got {short(value)} ({type(value).__name__})")
        for key in STEP_FIELDS:
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{key} must be an integer or unset (None), got {short(value)} ({type(value).__name__})")
        for key in ("pattern", "criterion", "block_reduce", "schedule", "scope", "score_dtype"):
            value = getattr(self, key)
            if not isinstance(value, str):
                raise ValueError(f"{key} must be a string, got {short(value)} ({type(value).__name__})")
        if isinstance(self.calibration_batches, bool) or not isinstance(self.calibration_batches, int) \
                or self.calibration_batches <= 0:
            raise ValueError(f"calibration_batches must be a positive integer, got {short(self.calibration_batches)}")
        if isinstance(self.keep_multiple_of, bool) or not isinstance(self.keep_multiple_of, int) \
                or self.keep_multiple_of <= 0:
            raise ValueError(f"keep_multiple_of must be a positive integer, got {short(self.keep_multiple_of)}")
        if self.keep_multiple_of > 1 and isinstance(self.pattern, str) and not get_pattern(self.pattern).structured:
            raise ValueError(f"keep_multiple_of={self.keep_multiple_of} rounds the heads or channels a layer keeps; "
                             f"pattern {short(self.pattern)} removes no whole units (use 'head' or 'channel', or 1)")
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(f"name must be a string, got {short(self.name)}")

    def _check_steps(self) -> None:
        if self.start_step is not None and self.start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {self.start_step}")
        if self.frequency is not None and self.frequency <= 0:
            raise ValueError(f"frequency must be a positive number of steps, got {self.frequency}")
        if self.start_step is not None and self.end_step is not None:
            if self.start_step > self.end_step:
                raise ValueError(f"start_step ({self.start_step}) must be <= end_step ({self.end_step})")
            if self.schedule == "oneshot" and self.end_step != self.start_step:
                raise ValueError(
                    f"schedule 'oneshot' prunes once, at start_step ({self.start_step}); "
                    f"end_step must equal it or be unset, got {self.end_step}"
                )
        if self.start_step == 0 and CRITERIA.get(self.criterion).needs_gradient:
            raise ValueError(
                f"criterion {self.criterion!r} scores weights from gradients, so it cannot prune before the first "
                "optimizer step: start_step must be >= 1 (or use criterion 'magnitude')"
            )

    # ---- groups -------------------------------------------------------------------------------------
    def _group_config(self, index: int, group: Any) -> "PruningConfig":
        if not isinstance(group, dict):
            raise ValueError(f"groups[{index}] must be a mapping of config fields, got {short(group)}")
        unknown = set(group) - set(self.field_names())
        if "groups" in group:
            raise ValueError(f"groups[{index}] cannot contain nested 'groups'")
        if unknown:
            raise ValueError(f"groups[{index}] has unknown keys {sorted(unknown)}")
        if not group.get("include"):
            raise ValueError(f"groups[{index}] needs an 'include' list naming the modules it covers")
        merged = {**self.to_dict(), **group, "groups": [], "name": group.get("name") or f"group_{index}"}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if isinstance(merged["pattern"], str) and get_pattern(merged["pattern"]).locked:  # inherits no schedule
            merged.update({key: defaults[key] for key in (*LOCK_UNUSED_FIELDS, "target_sparsity") if key not in group})
        elif isinstance(self.pattern, str) and get_pattern(self.pattern).locked and "target_sparsity" not in group:
            merged["target_sparsity"] = None   # the lock's measured target is not this group's
        if merged["schedule"] == "oneshot" and "end_step" not in group and merged["end_step"] is not None:
            merged["end_step"] = merged["start_step"]
        return PruningConfig(**merged)

    def resolved_groups(self) -> List["PruningConfig"]:
        """Group configs in matching order: explicit groups first, then the top-level config ("default")."""
        default = dataclasses.replace(self, groups=[], name=self.name or "default")
        return [self._group_config(i, g) for i, g in enumerate(self.groups)] + [default]

    def pattern_names(self) -> List[str]:
        """The distinct patterns of the groups, in group order (``["4x1"]``, ``["channel", "head"]``)."""
        return list(dict.fromkeys(group.pattern for group in self.resolved_groups()))

    def describe(self) -> str:
        """Each group's pattern and target, as model cards and metrics state them: ``"4x1 0.80"``, or
        ``"channel 0.60 (ffn) + head 0.50 (default)"`` when groups differ."""
        groups = self.resolved_groups()
        if len(groups) == 1:
            return f"{self.pattern} {_figure(self.target_sparsity)}"
        return " + ".join(f"{group.pattern} {_figure(group.target_sparsity)} ({group.name})" for group in groups)

    @property
    def steps_resolved(self) -> bool:
        return get_pattern(self.pattern).locked or all(getattr(self, key) is not None for key in STEP_FIELDS)

    def resolve_steps(self, max_steps: int) -> "PruningConfig":
        """Copy with unset ``start_step``/``end_step``/``frequency`` filled in from the run's ``max_steps`` (the
        callback does this once, at the first ``on_train_begin``); explicit values are kept. The defaults give a
        gradual schedule whatever the length: start after a tenth of the steps (scores accumulate first), reach
        the target at three quarters, about ten events in between."""
        if get_pattern(self.pattern).locked:
            return dataclasses.replace(self)  # no schedule: the mask is fixed from the start
        total = max(1, int(max_steps))
        start = self.start_step if self.start_step is not None else max(1, int(DEFAULT_START_FRACTION * total))
        if self.schedule == "oneshot":
            end = start
        else:
            end = self.end_step if self.end_step is not None else max(start, int(DEFAULT_END_FRACTION * total))
        frequency = self.frequency if self.frequency is not None else max(1, (end - start) // DEFAULT_EVENTS)
        return dataclasses.replace(self, start_step=start, end_step=end, frequency=frequency)

    def conflicts_with(self, saved: "PruningConfig") -> List[str]:
        """Fields on which this config disagrees with ``saved`` (the resolved config a checkpoint was trained
        with) in a way that changes masks. Step fields left unset here take the saved values, so they agree."""
        fields = []
        for key in self.field_names():
            if key in NAMING_FIELDS or (key in STEP_FIELDS and getattr(self, key) is None):
                continue
            if key == "target_sparsity" and self.target_sparsity is None:  # "lock": measured, as the saved one was
                continue
            if getattr(self, key) != getattr(saved, key):
                fields.append(key)
        return fields

    # ---- serialisation (to_dict, from_dict, save_pretrained, from_pretrained: JsonConfigMixin) ---------
    @classmethod
    def from_inc(cls, pruning_configs: Optional[List[Dict[str, Any]]] = None, **kwargs: Any) -> "PruningConfig":
        """The config meaning what Intel Neural Compressor's ``WeightPruningConfig(pruning_configs, **kwargs)``
        meant (see :mod:`hf_prune.inc_migration`); keys hf_prune does not implement are refused by name."""
        return cls(**inc_fields(pruning_configs, **kwargs))

    @classmethod
    def from_pretrained(cls, path: str) -> "PruningConfig":
        """Load ``pruning_config.json`` from a folder (or the file itself); from a model folder without one, the
        ``pruning`` section of its ``config.json`` (which every save of a pruned model writes)."""
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, CONFIG_NAME)):
            section = read_pruning_section(path)
            if section is not None:
                return cls.from_dict(section["config"], source=f"{os.path.join(path, 'config.json')} 'pruning'")
        return super().from_pretrained(path)

    @classmethod
    def from_yaml(cls, path: str) -> "PruningConfig":
        """Load a YAML file; if it is a recipe with a ``pruning:`` section, that section is the config."""
        data = load_yaml(path)
        section = data.get("pruning", data) if isinstance(data.get("pruning"), dict) else data
        return cls.from_dict(section, source=path)
