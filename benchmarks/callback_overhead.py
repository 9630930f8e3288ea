"""Step time of the same Trainer run with and without PruningTrainerCallback, and the pruner's extra memory.

bert-mini-shaped QA model (``--model minilm``: all-MiniLM-L6-v2's shape), batch 16, seq 128, 4x1 snip-momentum
with a pruning event every 10 steps. Runs alternate (plain, pruned, plain, pruned, ...) so drift on a shared
machine hits every side. ``--inc`` adds a third side: Intel Neural Compressor's pruner with the same settings
(run it with the INC venv's python, see RESULTS.md). Targets: time ratio <= 1.05; extra bytes / bytes of
pruned weights <= 0.6.

``--model llama-24``: a Llama-shaped QA model with 24 layers (``LlamaForQuestionAnswering``, 168 pruned Linears).

    python benchmarks/callback_overhead.py [--steps 60] [--repeats 2] [--model minilm|bert-base|llama-24] [--inc]
                                           [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from typing import Optional

import torch
from transformers import Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (StepTimer, SyntheticQA, add_device_argument, bert_base_config, bert_mini_config,  # noqa: E402
                     llama_24_config, minilm_config, qa_model)

from hf_prune import PruningConfig, PruningTrainerCallback  # noqa: E402


def run(config, steps: int, pruner: Optional[str], output_dir: str, device: str = "cpu"):
    """One Trainer run; ``pruner`` is None (plain), "hf_prune" or "inc"."""
    timer = StepTimer()
    callbacks = [timer]
    pruning = None
    if pruner is not None:
        settings = PruningConfig(target_sparsity=0.8, pattern="4x1", start_step=10, end_step=steps, frequency=10)
        if pruner == "inc":
            from inc_pruning import INCPruningCallback, inc_config

            pruning = INCPruningCallback(inc_config(settings))
        else:
            pruning = PruningTrainerCallback(settings)
        callbacks.insert(0, pruning)
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=16, max_steps=steps,
                             learning_rate=1e-4, weight_decay=0.01, save_strategy="no", report_to=[],
                             use_cpu=device == "cpu", disable_tqdm=True, logging_steps=10, seed=0)
    trainer = Trainer(model=qa_model(config), args=args, train_dataset=SyntheticQA(16 * steps, 128, config.vocab_size),
                      callbacks=callbacks)
    trainer.train()
    return timer, pruning


CONFIGS = {"bert-mini": bert_mini_config, "minilm": minilm_config, "bert-base": bert_base_config,
           "llama-24": llama_24_config}


def pruner_bytes(pruner):
    extra = sum(pruner.state_bytes().values())
    weights = sum(pruner.modules[n].weight.numel() * pruner.modules[n].weight.element_size() for n in pruner.masks)
    return extra, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", choices=sorted(CONFIGS), default="bert-mini")
    parser.add_argument("--inc", action="store_true", help="also time INC 3.7.1's pruner (needs neural-compressor)")
    add_device_argument(parser)
    options = parser.parse_args()
    config, source = CONFIGS[options.model]()
    sides = [None, "hf_prune"] + (["inc"] if options.inc else [])
    times = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(options.repeats):
            for side in sides:
                timer, callback = run(config, options.steps, side, tmp, options.device)
                times[side].append(timer.mean())
                if side == "hf_prune":
                    hf_callback = callback
    extra, weights = pruner_bytes(hf_callback.pruner)
    plain_s = min(times[None])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if options.device == "cuda" else ""))
    print(f"model: {options.model} shape ({source}), batch 16, seq 128, {options.steps} steps x {options.repeats} repeats")
    for side in sides:
        label = {None: "without callback", "hf_prune": "with hf_prune", "inc": "with INC 3.7.1"}[side]
        best = min(times[side])
        print(f"mean step {label:17s} {best:.4f} s  ratio {best / plain_s:.3f}  "
              f"(runs: {', '.join(f'{t:.4f}' for t in times[side])})" + ("   target <= 1.05" if side == "hf_prune" else ""))
    print(f"final sparsity (hf_prune): {hf_callback.pruner.sparsity():.4f}")
    print(f"pruner extra bytes: {extra:,} / pruned weight bytes: {weights:,} = {extra / weights:.3f}   target <= 0.6")


if __name__ == "__main__":
    main()
