"""Where the callback's time goes: each ``Pruner`` entry point timed inside a Trainer run, the GPU's queued work
waited for before and after each call (so the parts add more than the overhead ``callback_overhead.py`` measures:
the waits stop the host from running ahead).

bert-base shape on a GPU, bert-mini shape on the CPU; batch 16, seq 128, 4x1 @ 0.8 snip-momentum, an event every
10 steps, as in ``callback_overhead.py``.

    python benchmarks/callback_breakdown.py [--device cuda] [--steps 80]
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

from transformers import Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (StepTimer, SyntheticQA, add_device_argument, bert_base_config, bert_mini_config,  # noqa: E402
                     qa_model, synchronize)

from hf_prune import Pruner, PruningConfig, PruningTrainerCallback  # noqa: E402

ENTRY_POINTS = ("update_scores", "apply_masks", "step", "sparsity", "group_sparsity", "sparsity_report")


def timed(name: str, method, calls):
    """``method`` recording its wall time (the GPU waited for) under ``name``; an event step as "step (event)"."""
    def wrapper(*args, **kwargs):
        synchronize()
        start = time.perf_counter()
        result = method(*args, **kwargs)
        synchronize()
        calls[f"{name} (event)" if name == "step" and result else name].append(time.perf_counter() - start)
        return result
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    add_device_argument(parser)
    options = parser.parse_args()
    calls = collections.defaultdict(list)
    for name in ENTRY_POINTS:
        setattr(Pruner, name, timed(name, getattr(Pruner, name), calls))
    config, source = bert_base_config() if options.device == "cuda" else bert_mini_config()
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=16, max_steps=options.steps,
                                 learning_rate=1e-4, weight_decay=0.01, save_strategy="no", report_to=[],
                                 use_cpu=options.device == "cpu", disable_tqdm=True, logging_steps=10, seed=0)
        pruning = PruningConfig(target_sparsity=0.8, pattern="4x1", start_step=10, end_step=options.steps,
                                frequency=10)
        trainer = Trainer(model=qa_model(config), args=args,
                          train_dataset=SyntheticQA(16 * options.steps, 128, config.vocab_size),
                          callbacks=[PruningTrainerCallback(pruning), timer])
        trainer.train()
    counted = options.steps - 3  # StepTimer.mean skips 3 warm-up steps
    print(f"{options.device}, {source} shape: mean step with the callback {1000 * timer.mean():.2f} ms, "
          f"{options.steps} steps")
    for label, times in sorted(calls.items()):
        print(f"{label:24s} calls {len(times):4d}  mean {1000 * statistics.fmean(times):8.3f} ms  "
              f"per step {1000 * sum(times) / counted:7.3f} ms")


if __name__ == "__main__":
    main()
