"""Recipes: YAML files of a run's settings that people share, checked before anything runs.

A recipe holds ``description``, ``expected``, ``arguments`` (defaults for the script's flags), ``pruning`` (a
:class:`PruningConfig`) and ``distillation`` (a :class:`DistillationConfig`). Whoever runs someone else's recipe
trusts it with hyper-parameters, not with their machine or their Hub account: ``arguments`` may not set what
runs code, writes outside the run, uploads or resumes (:data:`COMMAND_LINE_ONLY`); those come from the command
line only. Every value is converted with the flag's own type, so a wrong type is refused by file and key.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, Iterable, List, NamedTuple, Optional

from .config import PruningConfig
from .config_io import load_yaml
from .distillation.config import DistillationConfig
from .value_checks import short

__all__ = ["load_yaml", "load_recipe", "training_recipe", "TrainingRecipe", "RECIPE_KEYS", "COMMAND_LINE_ONLY",
           "LOCAL_REPORTERS"]

RECIPE_KEYS = ("description", "expected", "arguments", "pruning", "distillation")
#: ``arguments`` a recipe may not set, with the reason given in the refusal.
COMMAND_LINE_ONLY = {
    "trust_remote_code": "it runs code from the model's folder or repository",
    "output_dir": "it chooses where the run writes",
    "overwrite_output_dir": "it deletes an earlier run",
    "logging_dir": "it chooses where the run writes",
    "resume_from_checkpoint": "it chooses which weights and states are loaded",
    "push_to_hub": "it uploads the model",
    "token": "it is a Hub credential",
    "deepspeed": "it names a launcher configuration file to load",
    "fsdp": "it changes how the model is sharded across processes (a launch decision)",
    "fsdp_config": "it names a launcher configuration file to load",
    "accelerator_config": "it names a launcher configuration file to load",
}
COMMAND_LINE_ONLY_PREFIXES = ("hub_",)  # hub_token, hub_model_id, hub_strategy, hub_private_repo, ...
#: ``report_to`` values that write only to this machine; every other integration uploads.
LOCAL_REPORTERS = ("none", "tensorboard")


def load_recipe(path: str, actions: Iterable[argparse.Action]) -> Dict[str, Any]:
    """The recipe at ``path`` with every section checked; ``arguments`` converted to the flags' types.
    ``actions`` are the script parser's (``parser._actions``)."""
    recipe = load_yaml(str(path))
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown recipe key(s) {short(unknown)}; allowed: {list(RECIPE_KEYS)}")
    arguments = recipe.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise ValueError(f"{path}: 'arguments' must be a mapping of flag names to values")
    by_dest = {action.dest: action for action in actions if action.dest != "help"}
    bad = sorted(set(arguments) - set(by_dest))
    if bad:
        raise ValueError(f"{path}: unknown argument(s) {short(bad)} in 'arguments'")
    recipe["arguments"] = {key: _checked(path, key, value, by_dest[key]) for key, value in arguments.items()}
    for section, config_class in (("pruning", PruningConfig), ("distillation", DistillationConfig)):
        if recipe.get(section) is not None:
            config_class.from_dict(recipe[section], source=str(path))
    return recipe


class TrainingRecipe(NamedTuple):
    """A recipe made ready for a Trainer script of one's own: its ``arguments`` as the script's arguments object."""

    arguments: Any
    pruning: Optional[PruningConfig]
    distillation: Optional[DistillationConfig]
    description: str


def training_recipe(path: str, arguments_class: type, **command_line: Any) -> TrainingRecipe:
    """The recipe at ``path`` for a script that builds ``arguments_class`` (``TrainingArguments``, TRL's
    ``SFTConfig``, ``Seq2SeqTrainingArguments`` ...): its ``arguments`` checked against that class's fields like a
    command line would be, then ``command_line`` on top (where ``output_dir``, ``push_to_hub`` ... come from)::

        recipe = training_recipe("recipes/SmolLM2-135M-Instruct/2-4.yaml", SFTConfig, output_dir="out")
        callbacks = [PruningTrainerCallback(recipe.pruning)]
    """
    from transformers import HfArgumentParser

    recipe = load_recipe(path, HfArgumentParser(arguments_class)._actions)
    arguments = {**recipe["arguments"], **command_line}
    pruning = recipe.get("pruning")
    distillation = recipe.get("distillation")
    return TrainingRecipe(
        arguments=arguments_class(**arguments),
        pruning=PruningConfig.from_dict(pruning, source=str(path)) if pruning is not None else None,
        distillation=DistillationConfig.from_dict(distillation, source=str(path)) if distillation is not None else None,
        description=str(recipe.get("description") or "").strip())


def _checked(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    if key in COMMAND_LINE_ONLY or key.startswith(COMMAND_LINE_ONLY_PREFIXES):
        reason = COMMAND_LINE_ONLY.get(key, "it concerns the Hub account")
        raise ValueError(f"{path}: a recipe may not set {key!r} ({reason}); give it on the command line")
    many = action.nargs in ("+", "*")
    if isinstance(value, dict) and not many and action.type in (str, None):
        value = json.dumps(value)  # a flag that takes a JSON object (lr_scheduler_kwargs, ...): written as a mapping
    values: List[Any] = list(value) if many and isinstance(value, (list, tuple)) else [value]
    if not many and isinstance(value, (list, tuple, dict)):
        raise ValueError(f"{path}: argument {key!r} takes one value, got {short(value)}")
    converted = []
    for item in values:
        if isinstance(item, (list, tuple, dict)):  # str() would turn [a, b] into the regex "['a', 'b']"
            raise ValueError(f"{path}: argument {key!r} takes {'a list of ' if many else ''}plain values, got "
                             f"{short(item)} inside it")
        try:
            result = action.type(str(item)) if action.type is not None and item is not None else item
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            expected = getattr(action.type, "__name__", "a valid value")
            raise ValueError(f"{path}: argument {key!r} must be {expected}, got {short(item)} ({short(str(err))})") from None
        if action.choices is not None and result not in action.choices:
            allowed = ", ".join(str(choice) for choice in action.choices)
            raise ValueError(f"{path}: argument {key!r} must be one of {short(allowed)}; got {short(item)}")
        converted.append(result)
    if key == "report_to":
        uploading = [str(item) for item in converted if str(item) not in LOCAL_REPORTERS]
        if uploading:
            raise ValueError(f"{path}: a recipe may not set report_to {uploading} (an integration that uploads); "
                             f"allowed in a recipe: {', '.join(LOCAL_REPORTERS)}; give others on the command line")
    return converted if many else converted[0]
