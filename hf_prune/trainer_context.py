"""What a callback cannot be told through the Trainer's event arguments, read without changing the Trainer.

Two things a drop-in pruning callback needs are not in any event's arguments:

- the checkpoint folder given to ``trainer.train(resume_from_checkpoint=...)`` (the Trainer keeps it in a local
  variable of its training loop, not in ``args`` or ``state``), needed to restore masks and scores from a folder
  outside ``output_dir``;
- the list of callbacks, needed to run ahead of the reporting integrations (TensorBoard, W&B), which
  ``Trainer(callbacks=[...])`` places before user callbacks, so that they log ``sparsity``.

- the folder of the checkpoint being saved, which under ``hyperparameter_search`` is inside the trial's own
  ``run-*`` folder (:func:`saving_checkpoint_dir`).

All are read from the calling frames of the running training loop (read only: nothing is patched). When the
Trainer's layout differs (another version, a custom loop), :func:`running_trainer` returns ``(None, None)`` and
the callback falls back to ``resume_from=`` / ``args.resume_from_checkpoint`` / ``output_dir`` and
:func:`hf_prune.add_pruning_callback`.
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional, Tuple

__all__ = ["running_trainer", "saving_checkpoint_dir", "move_to_front"]

#: The Trainer method whose locals hold the resumed checkpoint (transformers 4.x and 5.x).
TRAINING_LOOP = "_inner_training_loop"
#: The Trainer method whose local ``output_dir`` is the checkpoint folder being written.
SAVE_CHECKPOINT = "_save_checkpoint"
MAX_DEPTH = 16


def running_trainer() -> Tuple[Optional[Any], Optional[str]]:
    """(the Trainer running the current event, the checkpoint it resumed from or None)."""
    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(MAX_DEPTH):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == TRAINING_LOOP and isinstance(owner, Trainer):
            resumed = frame.f_locals.get("resume_from_checkpoint")
            return owner, resumed if isinstance(resumed, str) else None
        frame = frame.f_back
    return None, None


def saving_checkpoint_dir() -> Optional[str]:
    """The checkpoint folder the running Trainer is writing (``output_dir[/run-*]/checkpoint-N``), or None."""
    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(MAX_DEPTH):
        if frame is None:
            break
        if frame.f_code.co_name == SAVE_CHECKPOINT and isinstance(frame.f_locals.get("self"), Trainer):
            folder = frame.f_locals.get("output_dir")
            return folder if isinstance(folder, str) else None
        frame = frame.f_back
    return None


def move_to_front(callbacks: List[Any], callback: Any) -> None:
    """Put ``callback`` first in ``callbacks``. Safe while the Trainer iterates the list for the current event:
    moving an item to an earlier position makes no other callback run twice or be skipped."""
    if callbacks and callbacks[0] is not callback and any(item is callback for item in callbacks):
        index = next(i for i, item in enumerate(callbacks) if item is callback)
        callbacks.insert(0, callbacks.pop(index))
