"""The pruner state on disk: ``pruner_state.safetensors``, one file per checkpoint, no pickle.

Tensors are named ``<kind>.<module name>`` (``mask.``, ``bias_mask.``, ``score.``, ``input_sq.``); the resolved
config and the step of the last pruning event travel in the safetensors metadata. The tensors are always whole
(a sharded run gathers them first), so a file resumes on any number of processes.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

from .config import PruningConfig

__all__ = ["PRUNER_STATE_NAME", "STATE_KEYS", "write_state", "read_state", "read_config"]

PRUNER_STATE_NAME = "pruner_state.safetensors"
#: prefix of a tensor in the saved state -> the Pruner attribute it restores
STATE_KEYS = {"mask": "masks", "bias_mask": "bias_masks", "score": "scores", "input_sq": "input_sums"}


def write_state(state: Dict[str, object], directory: str) -> str:
    """Write a ``Pruner.state_dict()`` into ``directory``; returns the file's path."""
    from safetensors.torch import save_file

    tensors = {f"{prefix}.{name}": tensor.contiguous().cpu()
               for prefix, key in STATE_KEYS.items() for name, tensor in state[key].items()}
    metadata = {"last_event_step": json.dumps(state["last_event_step"]), "config": json.dumps(state["config"])}
    path = os.path.join(directory, PRUNER_STATE_NAME)
    save_file(tensors, path, metadata=metadata)
    return path


def read_state(directory: str) -> Dict[str, object]:
    """The state ``write_state`` wrote into ``directory`` (masks, scores, ..., ``last_event_step``)."""
    from safetensors import safe_open

    path = os.path.join(directory, PRUNER_STATE_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"no pruner state {PRUNER_STATE_NAME} in {directory!r}")
    state: Dict[str, object] = {key: {} for key in STATE_KEYS.values()}
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
        for tensor_name in handle.keys():
            prefix, name = tensor_name.split(".", 1)
            if prefix not in STATE_KEYS:
                raise ValueError(f"{path}: unexpected tensor {tensor_name!r} (known prefixes: {sorted(STATE_KEYS)})")
            state[STATE_KEYS[prefix]][name] = handle.get_tensor(tensor_name)
    state["last_event_step"] = json.loads(metadata.get("last_event_step", "null"))
    return state


def read_config(directory: str) -> Optional[PruningConfig]:
    """The resolved config stored with the pruner state in ``directory`` (None when there is none)."""
    from safetensors import safe_open

    path = os.path.join(directory, PRUNER_STATE_NAME)
    if not os.path.isfile(path):
        return None
    with safe_open(path, framework="pt") as handle:
        config = (handle.metadata() or {}).get("config")
    return PruningConfig.from_dict(json.loads(config), source=path) if config else None
