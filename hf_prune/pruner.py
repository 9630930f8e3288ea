"""``Pruner``: masks and scores for every pruned Linear of a model. No Trainer import; any loop can drive it.

One optimizer step of a training loop::

    loss.backward()
    pruner.update_scores()       # criterion over each pattern's blocks, on the gradients about to be used
    optimizer.step()
    pruner.apply_masks()         # masked weights back to exactly 0, whatever the optimizer did
    pruner.step(global_step)     # at pruning events: rank blocks, rebuild masks, apply them

State is plain tensors keyed by module name (``state_dict``), so a checkpoint holds no modules or pickles. Under FSDP2
and ZeRO-3 masks and scores hold the rank's rows only (:mod:`hf_prune.sharding`); ``step``, ``sparsity`` and
``state_dict`` are then collectives that every rank calls.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .calibration import InputNorms, run_calibration
from .config import PruningConfig
from .export import save_pruning_artifacts
from .groups import PruningGroup, oriented_shape
from .launch_modes import check_launch_mode
from .lora import check_adapters, mask_lora_updates, save_in_merged_form
from .mask_bits import MaskStore
from .modules import oriented, prunable_modules
from .patterns import get_pattern
from .pruned_weight import PrunedWeight
from .pruner_setup import build_groups, check_shards, lock_targets
from .pruner_state import PRUNER_STATE_NAME, STATE_KEYS, read_config, read_state, write_state
from .ranking import keep_masks
from .report import FROZEN, SparsityReport, sparsity_report
from .score_buffers import ScoreBuffers
from .sharding import WeightShards, full_shape, local_shape, local_values, mask_all_
from .value_checks import short

logger = logging.getLogger(__name__)

__all__ = ["Pruner", "PRUNER_STATE_NAME"]


class Pruner:
    """Owns a bool keep-mask per pruned weight and, for gradient criteria, one score per block."""

    def __init__(self, model: nn.Module, config: PruningConfig) -> None:
        if config.end_step is None and not get_pattern(config.pattern).locked:
            raise ValueError(
                "PruningConfig.end_step is unset; give the step at which pruning reaches the target, or call "
                "config.resolve_steps(max_steps) (PruningTrainerCallback does this from the Trainer's max_steps)"
            )
        config = config.resolve_steps(config.end_step)  # unset start_step/frequency: a tenth in, ~ten events
        check_adapters(model)
        self.model = model
        self.config = config
        check_launch_mode(model, prunable_modules(model))
        #: the groups, the pruned modules by name, and the frozen weights (requires_grad=False) a gradient
        #: criterion left dense: they never get a score
        self.groups, self.modules, self.frozen = build_groups(model, config)
        self._group_of = {name: group for group in self.groups for name in group.names}
        #: FSDP2 / ZeRO-3 row shards: masks, bias masks and scores of those weights hold this rank's rows only
        self.shards = WeightShards(self.modules)
        check_shards(model, self.groups, self.shards)
        #: one record per pruned weight, in group order
        self.records: Dict[str, PrunedWeight] = {name: PrunedWeight(name, self.modules[name], group)
                                                 for group in self.groups for name in group.names}
        #: keep-masks of this rank's part of each weight, held as bits (all ones until the first event)
        self.masks = MaskStore({name: (local_shape(record.module.weight), record.module.weight.device)
                                for name, record in self.records.items()})
        self.bias_masks: Dict[str, torch.Tensor] = {}  # structured patterns: biases of the units' output rows
        for name, record in self.records.items():
            weight = record.module.weight
            if record.group.pattern.locked:
                self.masks[name] = local_values(weight).detach() != 0
            elif record.role == "rows" and record.module.bias is not None:
                self.bias_masks[name] = torch.ones(local_shape(record.module.bias), dtype=torch.bool,
                                                   device=weight.device)
        #: running scores of the gradient-ranked weights, in flat buffers (dropped after the last event)
        self.score_buffers = ScoreBuffers(list(self.records.values()))
        self.last_event_step: Optional[int] = None
        self.target_not_reached: Optional[str] = None  # set by the callback when training stops early
        self.config = lock_targets(model, self.config, self.groups, self._pruned_and_total)
        needing_inputs = {name: self.modules[name] for group in self.groups if group.criterion.needs_activations
                          and not group.pattern.locked for name in group.names}
        self.input_norms: Optional[InputNorms] = InputNorms(needing_inputs) if needing_inputs else None
        #: per input feature, the sum of squared inputs seen (activation criteria; saved with the state)
        self.input_sums: Dict[str, torch.Tensor] = self.input_norms.sums if self.input_norms else {}
        if mask_lora_updates(model, self.masks):
            logger.info("LoRA updates of pruned base layers are masked: merge_and_unload() keeps the zeros")
            save_in_merged_form(model, self.masks, lambda folder: save_pruning_artifacts(
                folder, self.sparsity_report(), self.config))

    # ---- the training-loop API --------------------------------------------------------------------
    @property
    def ranks_by_gradient(self) -> bool:
        """Some group scores its blocks from gradients (``update_scores`` has work to do)."""
        return any(group.criterion.needs_gradient and not group.pattern.locked for group in self.groups)

    @torch.no_grad()
    def update_scores(self, gradient_scale: float = 1.0) -> None:
        """Fold this step's criterion into the running block scores. Call after the gradients are final
        (after accumulation and unscaling) and before ``optimizer.step()``; ``gradient_scale`` multiplies gradients
        that are not final yet (under DeepSpeed, whose step unscales and clips them:
        :func:`hf_prune.deepspeed_step.update_scores_before_step`). A step whose gradients are not finite (an fp16
        overflow the optimizer will skip) leaves every score unchanged."""
        if not self.score_buffers.update(gradient_scale):
            logger.warning("non-finite gradients: scores left unchanged this step")

    @property
    def scores(self) -> Dict[str, torch.Tensor]:
        """Running block scores by weight name (views into the flat buffers); empty once the schedule finished."""
        return self.score_buffers.views

    @torch.no_grad()
    def apply_masks(self, finite: Optional[bool] = None) -> None:
        """Set every masked weight (and, for heads and channels, the pruned units' biases) to exactly zero, whatever
        the other entries hold (NaN and inf included). ``finite``: whether the weights are known to be finite
        (checked here when None)."""
        if self.last_event_step is None and not any(group.pattern.locked for group in self.groups):
            return  # nothing pruned yet: all masks are ones
        finite = not self.non_finite_layers() if finite is None else finite
        self.masks.follow(lambda name: self.modules[name].weight.device)
        self.masks.apply({name: self.modules[name].weight for name in self.masks}, finite)
        mask_all_([self.modules[name].bias for name in self.bias_masks], list(self.bias_masks.values()), finite)

    def mask_after_step(self, step: int) -> None:
        """After an optimizer step: mask (exactly, even over NaN), and stop the run when a pruned weight is not
        finite, naming ``step`` and the layers: a model that diverged must not be saved as the reported one."""
        broken = self.non_finite_layers()
        self.apply_masks(finite=not broken)
        if broken:
            raise ValueError(f"step {step}: pruned layer(s) {short(broken)} hold NaN or infinite weights after the "
                             "optimizer step (training diverged: lower the learning rate, train in fp32 or bf16 "
                             "mixed precision rather than a model cast to fp16); stopping before a model that no "
                             "figure describes is saved")

    @property
    def schedule_finished(self) -> bool:
        """Every group has had its last event: the masks are final."""
        return all(group.pattern.locked or (self.last_event_step is not None
                                            and group.schedule.end_step <= self.last_event_step)
                   for group in self.groups)

    def note_training_end(self, step: int) -> Optional[str]:
        """Record (for :meth:`sparsity_report`) and return what was reached when training ended at ``step`` before
        a group's ``end_step`` (an early stop); None when every group reached its target."""
        short_of = [] if self.schedule_finished else [
            group for group in self.groups if not group.pattern.locked and group.schedule.end_step > step]
        self.target_not_reached = None if not short_of else (
            f"training ended at step {step}, before group(s) {[group.config.name for group in short_of]} reached "
            f"their target at step {max(group.schedule.end_step for group in short_of)}: sparsity "
            f"{self.sparsity():.4f} of the target {self.config.target_sparsity}")
        return self.target_not_reached

    @torch.no_grad()
    def non_finite_layers(self) -> List[str]:
        """Names of the pruned layers whose weight holds NaN or inf (this rank's part when sharded): one reduction
        and one host wait for the whole model, a per-layer look only when something is not finite."""
        names = list(self.masks)
        weights = [local_values(self.modules[name].weight) for name in names]
        weights = [w for w in weights if w.numel()]
        if not weights:
            return []
        norms = torch._foreach_norm(weights, float("inf"))  # the largest |w|: inf or NaN only when one is
        device = norms[0].device
        if bool(torch.isfinite(torch.stack([n if n.device == device else n.to(device) for n in norms]).sum())):
            return []
        return [name for name in names if local_values(self.modules[name].weight).numel()
                and not bool(torch.isfinite(local_values(self.modules[name].weight)).all())]

    def step(self, global_step: int) -> bool:
        """Run the pruning events scheduled for ``global_step``; returns whether any group pruned."""
        fired = False
        for group in self.groups:
            if not group.pattern.locked and group.schedule.is_event(global_step):
                sparsity = group.schedule.sparsity_at(global_step)
                self._prune_group(group, sparsity)
                logger.info("step %d: group %r pruned to %.4f", global_step, group.config.name, sparsity)
                fired = True
        if fired:
            self.last_event_step = global_step
            if self.schedule_finished:
                self.score_buffers.release()  # the masks are final: scores are dead weight from here on
            self.apply_masks()
            if self.input_norms is not None and all(group.schedule.end_step <= global_step for group in self.groups
                                                    if group.criterion.needs_activations):
                self.input_norms.remove()  # no activation-ranked event is left: stop the per-step statistics
        return fired

    # ---- ranking ------------------------------------------------------------------------------------
    def _block_scores(self, group: PruningGroup, name: str) -> torch.Tensor:
        """Block scores of the whole weight (gathered from every rank's rows when it is sharded)."""
        if group.criterion.needs_gradient:
            return self._full("scores", name, self.scores[name])
        module = self.modules[name]
        extra = None
        if group.criterion.needs_activations:
            if not self.input_norms.seen:
                raise ValueError(f"criterion {group.config.criterion!r} ranks weights by their input activations, but "
                                 "the model has run no forward pass yet: call pruner.calibrate(batches) before a "
                                 "step-0 event (PruningTrainerCallback does it from the training data)")
            extra = self.input_norms.norms(name)
        local = group.reduce(name, group.criterion.element_scores(oriented(module, local_values(module.weight)), extra))
        return self._full("scores", name, local)

    def calibrate(self, batches, max_batches: int) -> int:
        """Run up to ``max_batches`` batches through the model so activation criteria (``wanda``) have inputs to
        rank by; returns the number run."""
        if self.input_norms is None:
            return 0
        self.input_norms.calibrating = True
        try:
            return run_calibration(self.model, batches, max_batches)
        finally:
            self.input_norms.calibrating = False

    @property
    def needs_calibration(self) -> bool:
        return self.input_norms is not None and not self.input_norms.seen

    @torch.no_grad()
    def _prune_group(self, group: PruningGroup, sparsity: float) -> None:
        block_scores = {name: self._block_scores(group, name) for name in group.names}
        masks, bias_masks = keep_masks(group, block_scores, self.modules, sparsity)
        for key, new in (("masks", masks), ("bias_masks", bias_masks)):
            for name, mask in new.items():
                getattr(self, key)[name] = self._local(key, name, mask).to(self.modules[name].weight.device)

    # ---- reporting ----------------------------------------------------------------------------------
    def _pruned_and_total(self, names: List[str]) -> Tuple[int, int]:
        """Masked weights and all weights of the layers ``names``: the row-sharded layers' counts summed over every
        rank (a collective), the others' (whole on every rank: DDP, ZeRO-3's persistent weights) counted once."""
        def counts(subset):
            return (sum(self.masks.pruned_count(name) for name in subset),
                    sum(self.masks.numel(name) for name in subset))

        split_pruned, split_total = self.shards.total(counts([n for n in names if n in self.shards.shards]))
        whole_pruned, whole_total = counts([n for n in names if n not in self.shards.shards])
        return split_pruned + whole_pruned, split_total + whole_total

    def state_bytes(self) -> Dict[str, int]:
        """Bytes this rank holds for the pruner's state, by kind (masks are bits; scores go after the last event)."""
        def size(tensors):
            return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

        return {"masks": self.masks.nbytes, "bias_masks": size(self.bias_masks.values()),
                "scores": size(self.scores.values()), "input_sums": size(self.input_sums.values())}

    def sparsity(self) -> float:
        """Masked fraction over all pruned weights."""
        pruned, total = self._pruned_and_total(list(self.masks))
        return pruned / total if total else 0.0

    def group_sparsity(self) -> Dict[str, float]:
        result = {}
        for group in self.groups:
            pruned, total = self._pruned_and_total(group.names)
            result[group.config.name] = pruned / total
        return result

    def patterns(self) -> Dict[str, str]:
        """Pattern of each pruned layer; frozen layers a gradient criterion skipped are marked ``"frozen"``."""
        patterns = {name: FROZEN for name in self.frozen}
        patterns.update({name: group.pattern.name for group in self.groups for name in group.names})
        return patterns

    def sparsity_report(self) -> SparsityReport:
        report = sparsity_report(self.model, self.patterns())
        report.target_not_reached = self.target_not_reached
        return report

    # ---- state --------------------------------------------------------------------------------------
    def _rows_per_entry(self, key: str, name: str) -> Optional[int]:
        """Weight rows per dim-0 entry of a state tensor; None for per-rank partial sums (summed, not joined)."""
        if key in ("masks", "bias_masks"):
            return 1
        return None if key == "input_sums" else self._group_of[name].rows_per_score(name)

    def _full(self, key: str, name: str, local: torch.Tensor) -> torch.Tensor:
        """The whole-model form of a state tensor (a collective when ``name`` is sharded; else ``local`` itself)."""
        rows = self._rows_per_entry(key, name)
        return self.shards.sum_partials(name, local) if rows is None else self.shards.gather_rows(name, local, rows)

    def _local(self, key: str, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of a whole-model state tensor (the inverse of ``_full``)."""
        rows = self._rows_per_entry(key, name)
        return self.shards.local_partial(name, full) if rows is None else self.shards.local_rows(name, full, rows)

    def _full_shape(self, key: str, name: str) -> Tuple[int, ...]:
        module = self.modules[name]
        if key == "masks":
            return tuple(full_shape(module.weight))
        if key == "bias_masks":
            return tuple(full_shape(module.bias))
        if key == "scores":
            return tuple(self._group_of[name].score_shape(name, oriented_shape(module)))
        return tuple(self.input_sums[name].shape)

    def state_dict(self) -> Dict[str, object]:
        """Masks and scores of the whole model; under FSDP2 gathered from every rank (all ranks must call it)."""
        state: Dict[str, object] = {key: {name: self._full(key, name, tensor).clone() for name, tensor in
                                          getattr(self, key).items()} for key in STATE_KEYS.values()}
        state.update(last_event_step=self.last_event_step, config=self.config.to_dict())
        return state

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore masks and scores saved by ``state_dict`` (by a run of any world size); the set of modules and
        shapes must match. A state whose schedule has finished needs no scores (saved ones are ignored)."""
        self.last_event_step = state.get("last_event_step")
        if self.schedule_finished:
            self.score_buffers.release()
        elif not self.score_buffers.views and self.ranks_by_gradient:  # released by a finished run: scores again
            self.score_buffers = ScoreBuffers(list(self.records.values()))
        for key in STATE_KEYS.values():
            current, saved = getattr(self, key), state.get(key, {})
            if key == "scores" and self.schedule_finished:
                continue
            if set(saved) != set(current):
                missing, unexpected = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
                raise ValueError(f"pruner state {key} do not match this model: missing {missing}, unexpected {unexpected}")
            for name, tensor in saved.items():
                expected = self._full_shape(key, name)
                if tuple(tensor.shape) != expected:
                    raise ValueError(f"pruner state {key}[{name!r}] has shape {tuple(tensor.shape)}, expected {expected}")
                local = self._local(key, name, tensor)
                if key == "scores":  # views into the flat buffers: written in place
                    current[name].copy_(local.to(device=current[name].device, dtype=current[name].dtype))
                else:
                    current[name] = local.to(device=current[name].device, dtype=current[name].dtype).clone()

    def save_state(self, directory: str, write: bool = True) -> Optional[str]:
        """Write masks and scores as safetensors (no pickle) into ``directory``. Sharded: every rank calls it (the
        state is gathered), the saving rank with ``write=True``, the others with ``write=False``."""
        state = self.state_dict()
        return write_state(state, directory) if write else None

    @staticmethod
    def saved_config(directory: str) -> Optional[PruningConfig]:
        """The resolved config stored with the pruner state in ``directory`` (None when there is none)."""
        return read_config(directory)

    def load_state(self, directory: str) -> None:
        self.load_state_dict(read_state(directory))
