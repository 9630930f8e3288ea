"""Step time and memory of DistillationTrainer vs the plain Trainer, bert-mini-shaped student and teacher.

The teacher's forward pass is the floor of the overhead (a forward is about a third of a training step), so
the target is <= 1.4x. Extra memory: the teacher's parameters, plus SimKD's projector and reused head.
Runs alternate so drift on a shared machine hits every side.

    python benchmarks/distillation_overhead.py [--steps 30] [--repeats 2]
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

from hf_prune.distillation import DistillationConfig, DistillationTrainer  # noqa: E402


def run(config, steps: int, method, output_dir: str):
    timer = StepTimer()
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=16, max_steps=steps,
                             learning_rate=1e-4, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             logging_steps=10, seed=0)
    common = dict(model=qa_model(config, seed=0), args=args,
                  train_dataset=SyntheticQA(16 * steps, 128, config.vocab_size), callbacks=[timer])
    if method is None:
        trainer = Trainer(**common)
    else:
        teacher = qa_model(config, seed=1)
        teacher.config.architectures = [type(teacher).__name__]  # a random stand-in for a fine-tuned QA teacher
        trainer = DistillationTrainer(teacher_model=teacher,
                                      distillation_config=DistillationConfig(method=method, hard_label_weight=1.0),
                                      **common)
    trainer.train()
    return timer.mean(), trainer


def parameter_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    config, source = bert_mini_config()
    methods = [None, "logits", "reused_classifier"]
    times = {method: [] for method in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(options.repeats):
            for method in methods:
                seconds, trainer = run(config, options.steps, method, tmp)
                times[method].append(seconds)
    student_bytes = parameter_bytes(qa_model(config))
    teacher_bytes = parameter_bytes(trainer.teacher)
    simkd_bytes = parameter_bytes(trainer.simkd_head) - parameter_bytes(trainer.teacher.qa_outputs)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"model: bert-mini shape ({source}) student and teacher, batch 16, seq 128, "
          f"{options.steps} steps x {options.repeats} repeats")
    plain = min(times[None])
    for method in methods:
        best = min(times[method])
        label = "plain Trainer" if method is None else f"DistillationTrainer ({method})"
        print(f"{label:40s} mean step {best:.4f} s  ratio {best / plain:.3f}  "
              f"(runs: {', '.join(f'{t:.4f}' for t in times[method])})   target <= 1.4")
    print(f"extra parameter memory: teacher {teacher_bytes:,} B ({teacher_bytes / student_bytes:.2f}x the student); "
          f"SimKD projector {simkd_bytes:,} B")


if __name__ == "__main__":
    main()
