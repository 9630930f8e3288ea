"""FSDP2 on 2 CPU processes (gloo): step time with and without PruningTrainerCallback, and each rank's pruner bytes.

bert-mini-shaped QA model sharded by FSDP2 (one unit per BertLayer), batch 8 per rank (16 global), seq 128, a
pruning event every 10 steps. Runs alternate (plain, pruned, ...) inside the same two processes. Targets: time
ratio <= 1.10; mask + score bytes of a rank over the bytes of that rank's pruned weight shards <= 0.6 (printed
for 4x1, the default, and for 2:4, whose scores are per weight).

    python benchmarks/fsdp_overhead.py [--steps 40] [--repeats 2]      # launches itself under torchrun

accelerate 1.15 enables FSDP for GPU-type distributed states only; on CPU this benchmark sets the accelerate state
to FSDP itself (the test workaround of tests/fsdp_worker.py), as tests/test_fsdp.py does.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile

import torch
from transformers import Trainer, TrainingArguments

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from _common import StepTimer, SyntheticQA, bert_mini_config, qa_model  # noqa: E402

from hf_prune import PruningConfig, PruningTrainerCallback  # noqa: E402
from tests.fsdp_worker import FSDPOnCPU  # noqa: E402


class FSDPTrainer(FSDPOnCPU, Trainer):
    pass


def run(steps: int, pattern, output_dir: str):
    """One FSDP2 Trainer run; ``pattern`` None runs without the callback."""
    timer = StepTimer()
    callbacks = [timer]
    pruning = None
    if pattern is not None:
        pruning = PruningTrainerCallback(PruningConfig(target_sparsity=0.8 if pattern == "4x1" else 0.5,
                                                       pattern=pattern, start_step=10, end_step=steps, frequency=10))
        callbacks.insert(0, pruning)
    config, _ = bert_mini_config()
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=8, max_steps=steps, learning_rate=1e-4,
                             weight_decay=0.01, save_strategy="no", report_to=[], use_cpu=True, ddp_backend="gloo",
                             disable_tqdm=True, logging_steps=10, seed=0, fsdp=True,
                             fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"]})
    trainer = FSDPTrainer(model=qa_model(config), args=args, callbacks=callbacks,
                          train_dataset=SyntheticQA(16 * steps, 128, config.vocab_size))
    trainer.train()
    return timer, pruning


def rank_bytes(pruner):
    """(mask + score bytes, bytes of the pruned weights' local shards) on this rank."""
    from hf_prune.sharding import local_tensor

    extra = sum(pruner.state_bytes().values())
    weights = sum(local_tensor(pruner.modules[n].weight).numel() * pruner.modules[n].weight.element_size()
                  for n in pruner.masks)
    return extra, weights


def worker(steps: int, repeats: int) -> None:
    rank = int(os.environ["RANK"])
    times = {None: [], "4x1": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for side in times:
                timer, callback = run(steps, side, tmp)
                times[side].append(timer.mean())
                if side is not None:
                    sharded, sparsity, (extra, weights) = callback.pruner.shards.active, callback.pruner.sparsity(), \
                        rank_bytes(callback.pruner)
        _, two_four = run(12, "2:4", tmp)
        extra_24, weights_24 = rank_bytes(two_four.pruner)
    if rank != 0:
        return
    plain = min(times[None])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"2 processes (gloo), parameters sharded: {sharded}")
    print(f"model: bert-mini shape, batch 8 per rank, seq 128, {steps} steps x {repeats} repeats, events every 10")
    print(f"mean step without callback {plain:.4f} s  (runs: {', '.join(f'{t:.4f}' for t in times[None])})")
    best = min(times["4x1"])
    print(f"mean step with hf_prune    {best:.4f} s  ratio {best / plain:.3f}  (runs: "
          f"{', '.join(f'{t:.4f}' for t in times['4x1'])})   target <= 1.10")
    print(f"final sparsity (4x1): {sparsity:.4f}")
    for label, (e, w) in (("4x1", (extra, weights)), ("2:4", (extra_24, weights_24))):
        print(f"rank 0 pruner bytes ({label}): {e:,} / its pruned weight shard bytes: {w:,} = {e / w:.3f}   target <= 0.6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    if "RANK" in os.environ:
        worker(options.steps, options.repeats)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               "--master_port=29731", os.path.abspath(__file__), "--steps", str(options.steps),
               "--repeats", str(options.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE))
    raise SystemExit(subprocess.run(command, env=env).returncode)


if __name__ == "__main__":
    main()
