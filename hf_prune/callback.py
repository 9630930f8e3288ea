"""``PruningTrainerCallback``: the Trainer's events, one line each, mapped onto a :class:`Pruner`."""
from __future__ import annotations

import logging
import math
import os
from typing import Optional, Union

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .config import PruningConfig
from .deepspeed_step import score_inside_step
from .distillation.saved_form import saved_form
from .export import save_pruning_artifacts
from .launch_modes import check_sharded_trainer_args
from .model_metadata import config_owner, record_pruning
from .pruner import PRUNER_STATE_NAME, Pruner
from .report import FROZEN
from .trainer_context import move_to_front, running_trainer, saving_checkpoint_dir

logger = logging.getLogger(__name__)

SPARSITY_TAG_PREFIXES = ("target-sparsity-", "sparsity-")

__all__ = ["PruningTrainerCallback", "add_pruning_callback"]


class PruningTrainerCallback(TrainerCallback, ExportableState):
    """Gradual pruning inside any ``transformers.Trainer``.

    Scores are updated on the clipped, unscaled gradients of every optimizer step; masks are re-applied after
    every optimizer step and rebuilt at the schedule's events. Unset ``start_step``/``end_step``/``frequency``
    are resolved from the Trainer's ``max_steps`` at the first ``on_train_begin`` and then fixed: a checkpoint
    stores the resolved config and a resume uses it (a resume with a config that changes masks is refused).

    Every checkpoint holds ``pruner_state.safetensors`` (masks and scores), ``pruning_config.json`` and the
    sparsity report, written before the Trainer pushes it or rotates older checkpoints away (and, at the end of
    training and before a push, into ``output_dir`` beside the final model, unless ``save_artifacts=False``);
    ``trainer.train(resume_from_checkpoint=...)`` restores them. With ``load_best_model_at_end`` the masks of
    the best checkpoint come back with its weights.

    Under FSDP2 and ZeRO-3 (sharded weights) each rank keeps its rows of the masks and scores; the checkpoint's
    pruner state is gathered by every rank in ``on_save`` and written by the saving rank, in the format of an
    unsharded run.
    """

    def __init__(self, config: Union[PruningConfig, dict, str], resume_from: Optional[str] = None,
                 save_artifacts: bool = True) -> None:
        if isinstance(config, dict):
            config = PruningConfig.from_dict(config)
        elif isinstance(config, str):
            config = PruningConfig.from_yaml(config)
        self.config = config
        self.resume_from = resume_from
        self.save_artifacts = save_artifacts  # False: the script writes the final folder's files itself
        self.pruner: Optional[Pruner] = None
        self._args = self._trainer_state = None  # the Trainer's, kept for ``state()`` (called without them)
        self._saved: Optional[tuple] = None  # (folder, step) of the checkpoint this callback has completed
        self._scores_in_engine_step = False  # ZeRO-3: DeepSpeed's step scores (its gradients are gone afterwards)
        self._trainer = None  # the running Trainer, when found (TRL's card tags live on it)
        self._best_restored: Optional[str] = None  # the best checkpoint whose masks were taken (load_best_model_at_end)

    # ---- training events ---------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        trainer, resumed_from = running_trainer()
        self._trainer = trainer
        if trainer is not None:
            move_to_front(trainer.callback_handler.callbacks, self)  # reporting integrations then see `sparsity`
        self._args, self._trainer_state = args, state
        checkpoint = self._checkpoint_dir(args, state, resumed_from) if state.global_step > 0 else None
        if self.pruner is None or self.pruner.model is not model:  # a new model: hyperparameter_search's trials
            config = self._resolved_config(state.max_steps, checkpoint)
            self.pruner = Pruner(model, config)
            for group in self.pruner.groups:
                logger.info("pruning group %r: %s %.2f over %d layers, events at steps %s", group.config.name,
                            group.pattern.name, group.config.target_sparsity, len(group.names),
                            group.schedule.event_steps())
        elif checkpoint is None and self.pruner.last_event_step is not None:
            self._continue_on_pruned_model()  # a second run (a new Trainer) on the model this callback pruned
        if not self.pruner.schedule_finished:
            self._check_schedule_fits(state.max_steps)
        if self.pruner.shards.collective:
            check_sharded_trainer_args(args)
        self._scores_in_engine_step = self.pruner.shards.zero3 and self.pruner.ranks_by_gradient
        if self._scores_in_engine_step:
            self._score_inside_deepspeed_step(trainer)
        if checkpoint is not None:
            self.pruner.load_state(checkpoint)
            self.pruner.apply_masks()
        elif self.pruner.last_event_step is None:
            if self.pruner.needs_calibration and any(g.schedule.is_event(0) for g in self.pruner.groups):
                self._calibrate(trainer)
            self.pruner.step(0)  # a schedule that starts at step 0 (magnitude, wanda) prunes before training
        self._describe_model(model)

    def _continue_on_pruned_model(self) -> None:
        """Training the model again with this callback (a new Trainer counts steps from 0): a finished schedule's
        masks are kept as they are; an unfinished one would restart and let pruned weights grow back, so it is
        refused with the two ways that keep what was reached."""
        pruner = self.pruner
        if not pruner.schedule_finished:
            end = max(group.schedule.end_step for group in pruner.groups if not group.pattern.locked)
            raise ValueError(f"this PruningTrainerCallback already pruned this model (last event at step "
                             f"{pruner.last_event_step}, sparsity {pruner.sparsity():.4f}) and its schedule reaches the "
                             f"target at step {end}; a new training run counts steps from 0 and would restart it: "
                             "continue the first run with trainer.train(resume_from_checkpoint=...), or keep the zeros "
                             "reached with a new PruningTrainerCallback(PruningConfig(pattern='lock'))")
        logger.info("this callback's schedule finished in an earlier run: training on with its masks (sparsity %.4f), "
                    "no further pruning events", pruner.sparsity())

    def _calibrate(self, trainer) -> None:
        """A step-0 event of an activation criterion (wanda) needs inputs: run calibration batches of the
        Trainer's training data through the model first."""
        if trainer is None:
            raise ValueError("criterion 'wanda' with an event at step 0 needs calibration batches, and the running "
                             "Trainer could not be found: call callback.pruner.calibrate(batches) yourself, or start "
                             "at step >= 1 (training forwards then provide the statistics)")
        batches = self.pruner.calibrate(trainer.get_train_dataloader(), self.pruner.config.calibration_batches)
        logger.info("wanda: %d calibration batches of the training data before the step-0 event", batches)

    def _score_inside_deepspeed_step(self, trainer) -> None:
        engine = getattr(trainer, "deepspeed", None)
        if engine is None:
            criterion = next(g.config.criterion for g in self.pruner.groups if g.criterion.needs_gradient)
            raise ValueError(f"criterion {criterion!r} under DeepSpeed ZeRO-3 scores inside the DeepSpeed engine's "
                             "step (its gradients are gone afterwards), and the running Trainer's engine could not be "
                             "found: train through the Trainer's deepspeed= config, or in a loop of your own call "
                             "hf_prune.deepspeed_step.update_scores_before_step(pruner, engine) before engine.step()")
        score_inside_step(engine, self.pruner)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self._scores_in_engine_step:
            return  # scored inside DeepSpeed's step, which accelerate ran in backward
        _unscale_gradients(optimizer)
        self.pruner.update_scores()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.pruner.mask_after_step(state.global_step + 1)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.pruner.schedule_finished and self.pruner.step(state.global_step):  # a second run keeps its masks
            self._describe_model(model)

    def on_save(self, args, state, control, **kwargs):
        # every rank: a sharded state is gathered here; an unsharded one was written in ``state()`` (unless the
        # Trainer skipped it)
        self._save_into_checkpoint(every_rank=True)

    def on_push_begin(self, args, state, control, model=None, **kwargs):
        self._save_into_checkpoint(every_rank=False)
        self._describe_model(model)
        if self.save_artifacts:
            self._write_artifacts(args.output_dir, model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pruner is None or logs is None:
            return
        loss = logs.get("loss")
        if isinstance(loss, float) and not math.isfinite(loss) and not args.fp16:  # fp16: the scaler skips those
            raise ValueError(f"step {state.global_step}: the training loss is {loss} (training diverged); stopping "
                             "before a model that no figure describes is saved")
        if "train_runtime" in logs and self._returns_best(args, state):
            # the run's summary, logged just before the Trainer loads the best checkpoint's weights: take its masks
            # now, so the returned metrics, *_results.json and the last logged point describe the returned model
            self._restore_best(state)
            logs["best_model_checkpoint"] = state.best_model_checkpoint
        if any(key.startswith("eval_") for key in logs):  # evaluation results: the Trainer's model card shows them
            metrics = {"eval_sparsity": round(self.pruner.sparsity(), 4),
                       "eval_target_sparsity": self.pruner.config.target_sparsity}
        else:
            metrics = {"sparsity": round(self.pruner.sparsity(), 4)}
            if len(self.pruner.groups) > 1:
                metrics.update({f"sparsity/{k}": round(v, 4) for k, v in self.pruner.group_sparsity().items()})
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._returns_best(args, state):
            self._restore_best(state)
        self.pruner.apply_masks()
        unreached = self.pruner.note_training_end(state.global_step)
        if unreached:
            logger.warning("%s", unreached)
        self._describe_model(model)
        if self.save_artifacts:
            self._write_artifacts(args.output_dir, model)

    def _describe_model(self, model) -> None:
        """What the model says of itself wherever it is saved: the ``pruning`` section of its config (the pruning
        config, the measured sparsity, the pruned layers; see :mod:`hf_prune.model_metadata`) and its tags, which
        the Trainer writes into the card it pushes: hf_prune, the patterns, the target and the measured sparsity.
        Called whenever the masks change, so a model saved at any moment, by any path, states its own weights."""
        if self.pruner is None or model is None:
            return
        with saved_form(model):
            report = self.pruner.sparsity_report()
        patterns = {name: pattern for name, pattern in self.pruner.patterns().items() if pattern != FROZEN}
        record_pruning(model, self.pruner.config.to_dict(), report.to_dict(), patterns)
        tags = ["hf_prune", "pruning", "sparse", *self.pruner.config.pattern_names(),
                f"target-sparsity-{self.pruner.config.target_sparsity:.2f}", f"sparsity-{report.pruned_sparsity:.4f}"]
        owner = config_owner(model) or model  # a PEFT model's tags are its base model's: one list, not two
        if hasattr(owner, "add_model_tags"):
            owner.model_tags = _without_sparsity_tags(getattr(owner, "model_tags", None))
            owner.add_model_tags(tags)
        if isinstance(getattr(self._trainer, "_tag_names", None), list):
            # TRL's trainers write their card from their own tag list, not the model's
            self._trainer._tag_names = _without_sparsity_tags(self._trainer._tag_names) + [
                tag for tag in tags if tag not in self._trainer._tag_names]

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def state(self) -> dict:
        """``ExportableState``: the Trainer calls this while it saves a checkpoint, after the model and before it
        pushes the checkpoint or deletes older ones, so the pruner state is written here, completing the folder
        first. The returned config lets ``restore_callback_states_from_checkpoint`` rebuild this callback."""
        self._save_into_checkpoint(every_rank=False)
        config = self.pruner.config if self.pruner is not None else self.config
        return {"args": {"config": config.to_dict()}, "attributes": {}}

    def _save_into_checkpoint(self, every_rank: bool) -> None:
        """Write the pruner state into the checkpoint folder being saved, once. An unsharded state is written by the
        saving rank alone, at the first call; a sharded one only where ``every_rank`` calls (all ranks gather it)."""
        if self.pruner is None or self._args is None:
            return
        sharded = self.pruner.shards.collective
        if (sharded and not every_rank) or (not sharded and not self._args.should_save):
            return
        step = self._trainer_state.global_step
        folder = saving_checkpoint_dir() or os.path.join(self._args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        if (folder, step) != self._saved and (sharded or os.path.isdir(folder)):
            self.pruner.save_state(folder, write=self._args.should_save)
            self._write_artifacts(folder, self.pruner.model)
            self._saved = (folder, step)

    def _write_artifacts(self, folder: str, model) -> None:
        """``pruning_config.json`` and the sparsity report of the model as it is saved (a SimKD head folded),
        written by the saving rank; sharded, the report is measured on every rank (it sums their shards)."""
        if not (self._args is None or self._args.should_save or self.pruner.shards.collective):
            return  # a replicated (DDP) rank that does not save: nothing to measure for
        with saved_form(model):
            report = self.pruner.sparsity_report()
        if self._args is None or self._args.should_save:
            save_pruning_artifacts(folder, report, self.pruner.config)

    @staticmethod
    def _returns_best(args, state) -> bool:
        return bool(args.load_best_model_at_end) and state.best_model_checkpoint is not None

    def _restore_best(self, state) -> None:
        """The Trainer returns the best checkpoint's weights: its masks come with them (once), so the returned
        model, the masks and every reported figure describe the same weights."""
        if self._best_restored == state.best_model_checkpoint:
            return
        self.pruner.load_state(state.best_model_checkpoint)
        self._best_restored = state.best_model_checkpoint
        self._describe_model(self.pruner.model)
        logger.warning("load_best_model_at_end: returning %s (sparsity %.4f of the pruned layers; the schedule's "
                       "target is %.4f)", state.best_model_checkpoint, self.pruner.sparsity(),
                       self.pruner.config.target_sparsity)

    def _resolved_config(self, max_steps: int, checkpoint: Optional[str]) -> PruningConfig:
        """The config resolved at the run's first ``on_train_begin``; on resume, the one the checkpoint holds."""
        saved = Pruner.saved_config(checkpoint) if checkpoint else None
        if saved is None:
            return self.config.resolve_steps(max_steps)
        conflicts = self.config.conflicts_with(saved)
        if conflicts:
            changes = ", ".join(f"{key}: {getattr(saved, key)!r} in the checkpoint, {getattr(self.config, key)!r} now"
                                for key in conflicts)
            raise ValueError(f"resuming from {checkpoint} with a pruning config that changes its masks ({changes}); "
                             "resume with the checkpoint's config (its pruning_config.json), or start a new run")
        return saved

    def _check_schedule_fits(self, max_steps: int) -> None:
        late = [group for group in self.pruner.groups if group.schedule.end_step > max_steps]
        if late:
            group = late[0]
            raise ValueError(f"pruning group {group.config.name!r} reaches its target at end_step "
                             f"{group.schedule.end_step}, after the run's last step (max_steps {max_steps}): it "
                             "would end below target; lower end_step (or leave it unset) or train longer")

    def _checkpoint_dir(self, args, state, resumed_from: Optional[str]) -> str:
        candidates = [self.resume_from, resumed_from, getattr(args, "resume_from_checkpoint", None),
                      os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")]
        for folder in candidates:
            if isinstance(folder, str) and os.path.isfile(os.path.join(folder, PRUNER_STATE_NAME)):
                return folder
        raise ValueError(
            f"resuming at step {state.global_step} but no {PRUNER_STATE_NAME} was found in "
            f"{[c for c in candidates if isinstance(c, str)]}: the checkpoint was not saved with pruning"
        )


def add_pruning_callback(trainer, config: Union[PruningConfig, dict, str, TrainerCallback]) -> TrainerCallback:
    """Add a ``PruningTrainerCallback`` (built from ``config``, or ``config`` itself when it already is a
    callback) ahead of the Trainer's other callbacks, so that every reporting integration sees ``sparsity``.
    ``Trainer(callbacks=[PruningTrainerCallback(config)])`` gets the same order at ``on_train_begin``."""
    callback = config if isinstance(config, TrainerCallback) else PruningTrainerCallback(config)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


def _without_sparsity_tags(tags) -> list:
    return [tag for tag in (tags or []) if not tag.startswith(SPARSITY_TAG_PREFIXES)]


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
