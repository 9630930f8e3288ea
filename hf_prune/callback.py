"""``PruningTrainerCallback``: the Trainer's events, one line each, mapped onto a :class:`Pruner`."""
from __future__ import annotations

import logging
import os
from typing import Optional, Union

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .config import PruningConfig
from .pruner import PRUNER_STATE_NAME, Pruner

logger = logging.getLogger(__name__)

__all__ = ["PruningTrainerCallback", "add_pruning_callback"]


class PruningTrainerCallback(TrainerCallback):
    """Gradual pruning inside any ``transformers.Trainer``.

    Scores are updated on the clipped, unscaled gradients of every optimizer step; masks are re-applied after
    every optimizer step and rebuilt at the schedule's events. Each checkpoint gets ``pruner_state.safetensors``
    (masks and scores); ``trainer.train(resume_from_checkpoint=...)`` restores it, looking in
    ``args.resume_from_checkpoint`` if that is a path, else in ``output_dir/checkpoint-<global_step>``.
    ``end_step=None`` in the config means 3/4 of the Trainer's ``max_steps``.
    """

    def __init__(self, config: Union[PruningConfig, dict, str], resume_from: Optional[str] = None) -> None:
        if isinstance(config, dict):
            config = PruningConfig.from_dict(config)
        elif isinstance(config, str):
            config = PruningConfig.from_yaml(config)
        self.config = config
        self.resume_from = resume_from
        self.pruner: Optional[Pruner] = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.pruner is None:
            config = self.config.with_end_step(max(1, (3 * state.max_steps) // 4))
            self.pruner = Pruner(model, config)
            logger.info("pruning %d Linear layers in %d group(s), events at steps %s", len(self.pruner.masks),
                        len(self.pruner.groups), self.pruner.groups[0].schedule.event_steps())
        if state.global_step > 0:
            self.pruner.load_state(self._checkpoint_dir(args, state))
            self.pruner.apply_masks()
        elif self.pruner.last_event_step is None:
            self.pruner.step(0)  # a schedule that starts at step 0 (magnitude only) prunes before training

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        _unscale_gradients(optimizer)
        self.pruner.update_scores()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.pruner.apply_masks()

    def on_step_end(self, args, state, control, **kwargs):
        self.pruner.step(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder):
                self.pruner.save_state(folder)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pruner is None or logs is None:
            return
        metrics = {"sparsity": round(self.pruner.sparsity(), 4)}
        if len(self.pruner.groups) > 1:
            metrics.update({f"sparsity/{k}": round(v, 4) for k, v in self.pruner.group_sparsity().items()})
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def on_train_end(self, args, state, control, **kwargs):
        self.pruner.apply_masks()

    def _checkpoint_dir(self, args, state) -> str:
        candidates = [self.resume_from, getattr(args, "resume_from_checkpoint", None),
                      os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")]
        for folder in candidates:
            if isinstance(folder, str) and os.path.isfile(os.path.join(folder, PRUNER_STATE_NAME)):
                return folder
        raise ValueError(
            f"resuming at step {state.global_step} but no {PRUNER_STATE_NAME} was found in "
            f"{[c for c in candidates if isinstance(c, str)]}; pass PruningTrainerCallback(config, "
            "resume_from=<checkpoint folder>) when the checkpoint lives outside output_dir"
        )


def add_pruning_callback(trainer, config: Union[PruningConfig, dict, str, TrainerCallback]) -> TrainerCallback:
    """Add a ``PruningTrainerCallback`` (built from ``config``, or ``config`` itself when it already is a
    callback) ahead of the Trainer's other callbacks. ``Trainer(callbacks=[...])`` places user callbacks after
    the reporting integrations, so TensorBoard or W&B would log before ``sparsity`` is added; first in line,
    every integration sees it."""
    callback = config if isinstance(config, TrainerCallback) else PruningTrainerCallback(config)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


def _unscale_gradients(optimizer) -> None:
    """Under fp16 AMP the gradients are still multiplied by the loss scale when ``max_grad_norm`` is 0;
    unscale them (as clipping would) so scores from different steps are comparable."""
    scaler = getattr(optimizer, "scaler", None)
    inner = getattr(optimizer, "optimizer", None)
    if scaler is None or inner is None or not scaler.is_enabled():
        return
    try:
        scaler.unscale_(inner)
    except RuntimeError:
        pass  # already unscaled this step (by gradient clipping)
