"""The pruner state on disk: ``pruner_state.safetensors``, one file per checkpoint, no pickle.

Tensors are named ``<kind>.<module name>`` (``mask.``, ``bias_mask.``, ``score.``, ``input_sq.``); the resolved
config and the step of the last pruning event travel in the safetensors metadata. The tensors are always whole
(a sharded run gathers them first), so a file resumes on any number of processes.

Format 2 (``format`` in the metadata) stores weight masks as bits (:func:`hf_prune.mask_bits.pack_bits`, shapes in
the metadata); a file without ``format`` (format 1, bool masks) still resumes, and a newer format is refused
naming it.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

from .config import PruningConfig
from .mask_bits import pack_bits, unpack_bits
from .value_checks import short

__all__ = ["PRUNER_STATE_NAME", "STATE_FORMAT", "STATE_KEYS", "write_state", "read_state", "read_config"]

PRUNER_STATE_NAME = "pruner_state.safetensors"
STATE_FORMAT = 2
#: prefix of a tensor in the saved state -> the Pruner attribute it restores
STATE_KEYS = {"mask": "masks", "bias_mask": "bias_masks", "score": "scores", "input_sq": "input_sums"}


def write_state(state: Dict[str, object], directory: str) -> str:
    """Write a ``Pruner.state_dict()`` into ``directory``; returns the file's path."""
    from safetensors.torch import save_file

    tensors = {f"{prefix}.{name}": tensor.contiguous().cpu()
               for prefix, key in STATE_KEYS.items() if key != "masks" for name, tensor in state[key].items()}
    tensors.update({f"mask.{name}": pack_bits(mask.cpu()) for name, mask in state["masks"].items()})
    shapes = {name: list(mask.shape) for name, mask in state["masks"].items()}
    metadata = {"last_event_step": json.dumps(state["last_event_step"]), "config": json.dumps(state["config"]),
                "format": str(STATE_FORMAT), "mask_shapes": json.dumps(shapes)}
    path = os.path.join(directory, PRUNER_STATE_NAME)
    save_file(tensors, path, metadata=metadata)
    return path


def read_state(directory: str) -> Dict[str, object]:
    """The state ``write_state`` wrote into ``directory`` (masks, scores, ..., ``last_event_step``), checked:
    masks hold only 0 and 1, scores and sums are finite, the step is a non-negative integer (or unset). A file
    that breaks any of these, or cannot be read, is refused naming the file and the tensor or field."""
    from safetensors import safe_open

    path = os.path.join(directory, PRUNER_STATE_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"no pruner state {PRUNER_STATE_NAME} in {directory!r}")
    state: Dict[str, object] = {key: {} for key in STATE_KEYS.values()}
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            mask_shapes = _mask_shapes(path, metadata)
            for tensor_name in handle.keys():
                prefix, _, name = tensor_name.partition(".")
                if prefix not in STATE_KEYS or not name:
                    raise ValueError(f"{path}: unexpected tensor {short(tensor_name)} (known prefixes: "
                                     f"{sorted(STATE_KEYS)})")
                tensor = handle.get_tensor(tensor_name)
                if prefix == "mask" and mask_shapes is not None:
                    tensor = _unpacked(path, tensor_name, tensor, mask_shapes.get(name))
                state[STATE_KEYS[prefix]][name] = _checked_tensor(path, tensor_name, prefix, tensor)
    except ValueError:
        raise
    except Exception as err:  # safetensors' own errors for a truncated or corrupt file
        raise ValueError(f"{path} is not a readable pruner state: {short(str(err))}") from None
    state["last_event_step"] = _checked_step(path, metadata.get("last_event_step", "null"))
    return state


def _mask_shapes(path: str, metadata: Dict[str, str]) -> Optional[Dict[str, list]]:
    """Shapes of the bit-packed masks (format 2); None for format 1, whose masks are stored whole."""
    version = metadata.get("format", "1")
    if version == "1":
        return None
    if version != str(STATE_FORMAT):
        raise ValueError(f"{path}: pruner state format {short(version)} is newer than this hf_prune reads "
                         f"(formats 1 and {STATE_FORMAT}): upgrade hf_prune")
    try:
        shapes = json.loads(metadata.get("mask_shapes", ""))
    except ValueError:
        shapes = None
    if not isinstance(shapes, dict):
        raise ValueError(f"{path}: format {STATE_FORMAT} needs the mask shapes in its metadata (mask_shapes)")
    return shapes


def _unpacked(path: str, tensor_name: str, bits, shape):
    import torch

    if not isinstance(shape, list) or not all(isinstance(size, int) and size >= 0 for size in shape):
        raise ValueError(f"{path}: no valid shape for {tensor_name} in mask_shapes (got {short(shape)})")
    numel = int(torch.Size(shape).numel())
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (numel + 7) // 8:
        raise ValueError(f"{path}: {tensor_name} is not {numel} packed bits of shape {shape}")
    return unpack_bits(bits, numel).view(shape)


def _checked_tensor(path: str, tensor_name: str, prefix: str, tensor):
    import torch

    if prefix in ("mask", "bias_mask"):
        if not bool(((tensor == 0) | (tensor == 1)).all()):
            raise ValueError(f"{path}: {tensor_name} holds values other than 0 and 1: not a mask")
    elif tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{path}: {tensor_name} holds NaN or infinite values")
    return tensor


def _checked_step(path: str, text: str) -> Optional[int]:
    try:
        step = json.loads(text)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: last_event_step is not JSON: {short(text)}") from None
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"{path}: last_event_step must be a non-negative integer or null, got {short(step)}")
    return step


def read_config(directory: str) -> Optional[PruningConfig]:
    """The resolved config stored with the pruner state in ``directory`` (None when there is none)."""
    from safetensors import safe_open

    path = os.path.join(directory, PRUNER_STATE_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as handle:
            config = (handle.metadata() or {}).get("config")
        data = json.loads(config) if config else None
    except Exception as err:
        raise ValueError(f"{path} is not a readable pruner state: {short(str(err))}") from None
    return PruningConfig.from_dict(data, source=path) if data is not None else None
