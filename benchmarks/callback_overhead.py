"""Step time of the same Trainer run with and without PruningTrainerCallback, and the pruner's extra memory.

bert-mini-shaped QA model, batch 16, seq 128, 4x1 snip-momentum with a pruning event every 10 steps.
Runs alternate (plain, pruned, plain, pruned, ...) so drift on a shared machine hits both sides.
Targets: time ratio <= 1.05; extra bytes / bytes of pruned weights <= 0.6.

    python benchmarks/callback_overhead.py [--steps 60] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile

import torch
from transformers import Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import StepTimer, SyntheticQA, bert_mini_config, qa_model  # noqa: E402

from hf_prune import PruningConfig, PruningTrainerCallback  # noqa: E402


def run(config, steps: int, prune: bool, output_dir: str):
    timer = StepTimer()
    callbacks = [timer]
    pruning = None
    if prune:
        pruning = PruningTrainerCallback(PruningConfig(target_sparsity=0.8, pattern="4x1", start_step=10,
                                                       end_step=steps, frequency=10))
        callbacks.insert(0, pruning)
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=16, max_steps=steps,
                             learning_rate=1e-4, weight_decay=0.01, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, logging_steps=10, seed=0)
    trainer = Trainer(model=qa_model(config), args=args, train_dataset=SyntheticQA(16 * steps, 128, config.vocab_size),
                      callbacks=callbacks)
    trainer.train()
    return timer, pruning


def pruner_bytes(pruner):
    extra = sum(t.numel() * t.element_size() for t in list(pruner.masks.values()) + list(pruner.scores.values()))
    weights = sum(pruner.modules[n].weight.numel() * pruner.modules[n].weight.element_size() for n in pruner.masks)
    return extra, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    config, source = bert_mini_config()
    plain, pruned = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(options.repeats):
            plain.append(run(config, options.steps, False, tmp)[0].mean())
            timer, callback = run(config, options.steps, True, tmp)
            pruned.append(timer.mean())
    extra, weights = pruner_bytes(callback.pruner)
    plain_s, pruned_s = min(plain), min(pruned)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"model: bert-mini shape ({source}), batch 16, seq 128, {options.steps} steps x {options.repeats} repeats")
    print(f"mean step without callback: {plain_s:.4f} s  (runs: {', '.join(f'{t:.4f}' for t in plain)})")
    print(f"mean step with callback:    {pruned_s:.4f} s  (runs: {', '.join(f'{t:.4f}' for t in pruned)})")
    print(f"time ratio (with / without): {pruned_s / plain_s:.3f}   target <= 1.05")
    print(f"final sparsity: {callback.pruner.sparsity():.4f}")
    print(f"pruner extra bytes: {extra:,} / pruned weight bytes: {weights:,} = {extra / weights:.3f}   target <= 0.6")


if __name__ == "__main__":
    main()
