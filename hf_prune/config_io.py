"""Save/load behaviour shared by hf_prune's dataclass configs (``PruningConfig``, ``DistillationConfig``)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, ClassVar, Dict

logger = logging.getLogger(__name__)

__all__ = ["JsonConfigMixin", "load_yaml"]


class JsonConfigMixin:
    """``to_dict``/``from_dict`` (strict: an unknown key is a user's typo) and ``save_pretrained``/
    ``from_pretrained`` (sorted JSON; keys written by a newer hf_prune are dropped with a warning)."""

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
            raise ValueError(f"{source}: unknown {cls.config_kind} config key(s) {unknown}; "
                             f"allowed: {', '.join(cls.field_names())}")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{source}: {cls.config_kind}: {err}") from None

    def save_pretrained(self, save_directory: str) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str):
        """Load from a folder holding ``config_name``, or from the file itself."""
        file = os.path.join(path, cls.config_name) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ValueError(f"no {cls.config_name} found at {path!r}")
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)
        known = set(cls.field_names())
        dropped = sorted(set(data) - known)
        if dropped:
            logger.warning("ignoring unknown keys %s in %s (written by a newer hf_prune?)", dropped, file)
        return cls(**{key: value for key, value in data.items() if key in known})


def load_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML mapping; a missing file, invalid YAML or a non-mapping fails naming the file."""
    import yaml

    if not os.path.isfile(path):
        raise ValueError(f"recipe file {path!r} does not exist")
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"{path} is not valid YAML{line}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe file {path!r} must hold a YAML mapping, got {type(data).__name__}")
    return data
