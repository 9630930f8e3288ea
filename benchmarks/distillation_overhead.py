"""Step time and memory of DistillationTrainer vs the plain Trainer, bert-mini-shaped student and teacher.

The teacher's forward pass is the floor of the overhead (a forward is about a third of a training step), so
the target is <= 1.4x for logit KD and SimKD, <= 1.5x with layer-wise (hidden-state) distillation. Extra memory:
the teacher's parameters, SimKD's projector, and the teacher's hidden states kept for the layer-wise loss.
Runs alternate so drift on a shared machine hits every side.

    python benchmarks/distillation_overhead.py [--steps 30] [--repeats 2] [--model bert-base] [--device cuda]
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
from _common import (StepTimer, SyntheticQA, add_device_argument, bert_base_config, bert_mini_config,  # noqa: E402
                     qa_model)

from hf_prune.distillation import DistillationConfig, DistillationTrainer  # noqa: E402


#: name -> DistillationConfig fields (None: the plain Trainer) and the target ratio
ARMS = {
    "plain Trainer": (None, None),
    "logits": (dict(method="logits"), 1.4),
    "reused_classifier (SimKD)": (dict(method="reused_classifier"), 1.4),
    "logits + hidden states": (dict(method="logits", hidden_state_weight=1.0), 1.5),
}
BATCH, SEQ = 16, 128


def run(config, steps: int, method, output_dir: str, device: str = "cpu"):
    timer = StepTimer()
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=1e-4, save_strategy="no", report_to=[], use_cpu=device == "cpu",
                             disable_tqdm=True, logging_steps=10, seed=0)
    common = dict(model=qa_model(config, seed=0), args=args,
                  train_dataset=SyntheticQA(BATCH * steps, SEQ, config.vocab_size), callbacks=[timer])
    if method is None:
        trainer = Trainer(**common)
    else:
        teacher = qa_model(config, seed=1)
        teacher.config.architectures = [type(teacher).__name__]  # a random stand-in for a fine-tuned QA teacher
        trainer = DistillationTrainer(teacher_model=teacher,
                                      distillation_config=DistillationConfig(hard_label_weight=1.0, **method),
                                      **common)
    trainer.train()
    return timer.mean(), trainer


def parameter_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", choices=("bert-mini", "bert-base"), default="bert-mini")
    add_device_argument(parser)
    options = parser.parse_args()
    config, source = bert_base_config() if options.model == "bert-base" else bert_mini_config()
    times = {name: [] for name in ARMS}
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(options.repeats):
            for name, (method, _) in ARMS.items():
                seconds, trainers[name] = run(config, options.steps, method, tmp, options.device)
                times[name].append(seconds)
    student_bytes = parameter_bytes(qa_model(config))
    teacher = trainers["logits"].teacher
    teacher_bytes = parameter_bytes(teacher)
    simkd = trainers["reused_classifier (SimKD)"]
    simkd_bytes = parameter_bytes(simkd.simkd_head) - parameter_bytes(simkd.teacher.qa_outputs)
    hidden_bytes = (teacher.config.num_hidden_layers + 1) * BATCH * SEQ * teacher.config.hidden_size * 4
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if options.device == "cuda" else ""))
    print(f"model: {options.model} shape ({source}) student and teacher, batch 16, seq 128, "
          f"{options.steps} steps x {options.repeats} repeats")
    plain = min(times["plain Trainer"])
    for name, (_, target) in ARMS.items():
        best = min(times[name])
        print(f"{name:28s} mean step {best:.4f} s  ratio {best / plain:.3f}  "
              f"(runs: {', '.join(f'{t:.4f}' for t in times[name])})" + (f"   target <= {target}" if target else ""))
    print(f"extra parameter memory: teacher {teacher_bytes:,} B ({teacher_bytes / student_bytes:.2f}x the student); "
          f"SimKD projector {simkd_bytes:,} B")
    print(f"teacher hidden states kept for the layer-wise loss: {hidden_bytes:,} B per batch "
          f"({teacher.config.num_hidden_layers + 1} x {BATCH} x {SEQ} x {teacher.config.hidden_size} fp32; freed after "
          "the step)")


if __name__ == "__main__":
    main()
