"""Save/load behaviour shared by hf_prune's dataclass configs (``PruningConfig``, ``DistillationConfig``)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, ClassVar, Dict

from .value_checks import short

logger = logging.getLogger(__name__)

__all__ = ["JsonConfigMixin", "load_yaml", "FORMAT_KEY", "FORMAT_VERSION"]

#: the key a saved config file records its format in; a file of a higher format comes from a newer hf_prune
FORMAT_KEY = "hf_prune_format"
FORMAT_VERSION = 1


class JsonConfigMixin:
    """``to_dict``/``from_dict`` and ``save_pretrained``/``from_pretrained`` (sorted JSON). A saved file records
    :data:`FORMAT_KEY`; an unknown key is refused naming it (a typo such as ``targt_sparsity`` would otherwise load
    as the default), except in a file of a newer format, whose new keys are dropped with a warning."""

    config_name: ClassVar[str]
    config_kind: ClassVar[str]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "config"):
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a {cls.config_kind} config must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{source}: unknown {cls.config_kind} config key(s) {short(unknown)}; "
                             f"allowed: {', '.join(cls.field_names())}")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{source}: {cls.config_kind}: {err}") from None

    def save_pretrained(self, save_directory: str) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({**self.to_dict(), FORMAT_KEY: FORMAT_VERSION}, handle, indent=2, sort_keys=True)
            handle.write("\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str):
        """Load from a folder holding ``config_name``, or from the file itself."""
        file = os.path.join(path, cls.config_name) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ValueError(f"no {cls.config_name} found at {path!r}")
        with open(file, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except ValueError as err:
                raise ValueError(f"{file} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            return cls.from_dict(data, source=file)  # refused there, naming the file
        version = data.pop(FORMAT_KEY, 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"{file}: {FORMAT_KEY} must be a non-negative integer, got {short(version)}")
        newer = sorted(set(data) - set(cls.field_names())) if version > FORMAT_VERSION else []
        if newer:
            logger.warning("%s: dropping keys %s of a newer hf_prune (format %d; this one reads %d)", file, newer,
                           version, FORMAT_VERSION)
        return cls.from_dict({key: value for key, value in data.items() if key not in newer}, source=file)


#: bounds on a YAML file hf_prune reads: recipes and configs are a few KB and a few levels deep
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 20


def load_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML mapping; a missing file, invalid YAML or a non-mapping fails naming the file. Aliases
    (``*name``) are refused and size and nesting are bounded, so a small file cannot expand into gigabytes
    (nested aliases) or exhaust the stack (deep nesting)."""
    import yaml

    if not os.path.isfile(path):
        raise ValueError(f"recipe file {path!r} does not exist")
    if os.path.getsize(path) > MAX_YAML_BYTES:
        raise ValueError(f"{path} is larger than {MAX_YAML_BYTES} bytes: not a recipe")
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.load(handle, Loader=_bounded_loader(path))
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"{path} is not valid YAML{line}: {problem}") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe file {path!r} must hold a YAML mapping, got {type(data).__name__}")
    return data


def _bounded_loader(path: str):
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise ValueError(f"{path}: YAML aliases ('*name') are not allowed (line {mark.line + 1}); write the "
                                 "value out")
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    mark = self.peek_event().start_mark
                    raise ValueError(f"{path}: nested deeper than {MAX_YAML_DEPTH} levels (line {mark.line + 1})")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedLoader
