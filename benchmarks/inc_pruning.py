"""Intel Neural Compressor's pruner (3.7.1, the last release that has it) inside the same Trainer runs as
hf_prune, so accuracy comparisons differ only in the pruner. Benchmark-only: neural-compressor is never a
dependency of hf_prune; install it in its own environment (see benchmarks/RESULTS.md).

``INCPruningCallback`` maps each Trainer event to the INC hook of the same moment:
on_train_begin -> on_train_begin, on_step_begin -> on_step_begin(global_step) (INC updates masks here),
on_pre_optimizer_step -> on_before_optimizer_step (scores), on_optimizer_step -> on_after_optimizer_step (masks
applied, INC's own step counter advanced), on_step_end -> on_step_end, on_train_end -> on_train_end.
"""
from __future__ import annotations

from typing import Optional

from transformers import TrainerCallback

from hf_prune import PruningConfig


def inc_config(config: PruningConfig, excluded_op_names=("qa_outputs",)):
    """INC's ``WeightPruningConfig`` with the same target, pattern, criterion and step budget as ``config``.
    Everything else keeps INC's defaults (exp decay, its own scope handling), as the comparison asks."""
    from neural_compressor.training import WeightPruningConfig

    return WeightPruningConfig(
        target_sparsity=config.target_sparsity, pattern=config.pattern, pruning_type=config.criterion,
        start_step=config.start_step, end_step=config.end_step, pruning_frequency=config.frequency,
        pruning_scope=config.scope, excluded_op_names=list(excluded_op_names),
    )


class INCPruningCallback(TrainerCallback):
    def __init__(self, weight_pruning_config) -> None:
        self.weight_pruning_config = weight_pruning_config
        self.manager = None
        self.reported_sparsity: Optional[dict] = None  # INC's own figures at train end

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from neural_compressor.training import prepare_compression

        if state.global_step > 0:
            raise ValueError("INC's pruner keeps no checkpointable state: resuming an INC run is not supported")
        self.manager = prepare_compression(model, self.weight_pruning_config)
        self.manager.callbacks.on_train_begin()

    def on_step_begin(self, args, state, control, **kwargs):
        self.manager.callbacks.on_step_begin(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.manager.callbacks.on_before_optimizer_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.manager.callbacks.on_after_optimizer_step()

    def on_step_end(self, args, state, control, **kwargs):
        self.manager.callbacks.on_step_end()

    def on_train_end(self, args, state, control, **kwargs):
        from neural_compressor.compression.pruner.utils import get_sparsity_ratio

        self.manager.callbacks.on_train_end()
        pruning = self.manager.callbacks.callbacks_list[0]
        names = ("elementwise_over_matmul_gemm_conv", "elementwise_over_all", "blockwise_over_matmul_gemm_conv")
        self.reported_sparsity = dict(zip(names, map(float, get_sparsity_ratio(pruning.pruners, pruning.model))))


__all__ = ["INCPruningCallback", "inc_config"]
