"""The pruner's state bytes per pruned weight, the ops one optimizer step adds at 4 and at 48 layers, and how far
bfloat16 scores move the masks of a real model.

1. State: bert-mini's shape (random weights: bytes do not depend on them), one run per pattern (4x1, 2:4,
   unstructured 1x1, head, channel) with snip-momentum, fp32 and bf16 scores; bytes of masks + scores per pruned
   weight during the schedule and after its last event, as a ratio of the pruned weights' bytes in fp32 and in bf16.
   Goals (issue 28): during the schedule <= 0.6x fp32 for every pattern, <= 0.3x for block patterns; after the last
   event <= 0.07x.
2. Ops: top-level aten ops (views and allocations left out, ``torch.profiler``) of ``update_scores`` + masking for a
   4-layer and a 48-layer MLP of width 256. Goal: ratio <= 1.2.
3. bf16 against fp32 scores on all-MiniLM-L6-v2 (``../shared``; skipped when absent) fine-tuned on SQuAD batches:
   the same run twice (identical up to the event), one-shot event after ``--steps`` score updates, fraction of the
   mask entries that agree, per pattern.

    python benchmarks/pruner_state.py [--steps 16] [--skip-real]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from _common import SHARED, bert_mini_config, qa_model  # noqa: E402

from hf_prune import Pruner, PruningConfig  # noqa: E402
from tests.conftest import ToyMLP, count_ops  # noqa: E402

PATTERNS = ("4x1", "2:4", "1x1", "head", "channel")


def _backward(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, model.config.vocab_size, (4, 64), generator=generator)
    model.zero_grad()
    out = model(input_ids=ids, start_positions=torch.zeros(4, dtype=torch.long),
                end_positions=torch.ones(4, dtype=torch.long))
    out.loss.backward()


def state_rows(score_dtype: str):
    config, _ = bert_mini_config()
    rows = []
    for pattern in PATTERNS:
        model = qa_model(config)
        target = 0.5 if pattern in ("2:4", "head", "channel") else 0.8
        pruner = Pruner(model, PruningConfig(target_sparsity=target, pattern=pattern, start_step=1, end_step=2,
                                             frequency=1, score_dtype=score_dtype))
        weights = sum(pruner.modules[name].weight.numel() for name in pruner.masks)
        _backward(model, 0)
        pruner.update_scores()
        pruner.step(1)
        during = sum(pruner.state_bytes().values())
        _backward(model, 1)
        pruner.update_scores()
        pruner.step(2)
        after = sum(pruner.state_bytes().values())
        rows.append((pattern, during / weights, after / weights))
    return rows


def op_counts():
    rows = []
    for pattern in ("4x1", "2:4", "1x1"):
        counts = []
        for layers in (4, 48):
            model = ToyMLP(sizes=(256,) * (layers + 1))
            pruner = Pruner(model, PruningConfig(target_sparsity=0.5, pattern=pattern, start_step=1, end_step=20,
                                                 frequency=1, exclude=[]))
            model(torch.randn(8, 256)).pow(2).mean().backward()
            pruner.update_scores()
            pruner.step(1)

            def hooks():
                pruner.update_scores()
                pruner.mask_after_step(2)

            counts.append(count_ops(hooks))
        rows.append((pattern, *counts))
    return rows


def bf16_agreement(steps: int):
    """Masks of fp32- and bf16-scored runs of the same real model and batches, after one event."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    folder = os.path.join(SHARED, "models", "all-MiniLM-L6-v2")
    squad = os.path.join(SHARED, "data", "squad", "train.json")
    if not (os.path.isdir(folder) and os.path.isfile(squad)):
        return None
    from hf_prune.qa.data import load_squad_file

    tokenizer = AutoTokenizer.from_pretrained(folder)
    examples = load_squad_file(squad).select(range(steps * 8))
    batches = []
    for start in range(0, steps * 8, 8):
        rows = examples[start:start + 8]
        encoded = tokenizer(rows["question"], rows["context"], truncation="only_second", max_length=192,
                            padding="max_length", return_tensors="pt")
        batches.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                        "token_type_ids": encoded["token_type_ids"],
                        "start_positions": torch.zeros(8, dtype=torch.long),
                        "end_positions": torch.zeros(8, dtype=torch.long)})
    results = []
    for pattern in ("2:4", "1x1", "4x1"):
        masks = {}
        for dtype in ("float32", "bfloat16"):
            torch.manual_seed(0)
            model = AutoModelForQuestionAnswering.from_pretrained(folder)
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
            pruner = Pruner(model, PruningConfig(target_sparsity=0.5 if pattern == "2:4" else 0.8, pattern=pattern,
                                                 start_step=steps, end_step=steps, score_dtype=dtype))
            for step, batch in enumerate(batches, start=1):
                model.zero_grad()
                model(**batch).loss.backward()
                pruner.update_scores()
                optimizer.step()
                pruner.mask_after_step(step)
                pruner.step(step)
            masks[dtype] = dict(pruner.masks)
        agree = sum(int((masks["float32"][n] == masks["bfloat16"][n]).sum()) for n in masks["float32"])
        total = sum(mask.numel() for mask in masks["float32"].values())
        results.append((pattern, agree / total))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--skip-real", action="store_true", help="leave out the all-MiniLM-L6-v2 comparison")
    options = parser.parse_args()
    print(f"torch {torch.__version__}")
    print("state bytes per pruned weight / weight bytes (fp32 | bf16 weights), snip-momentum, bert-mini shape")
    for dtype in ("float32", "bfloat16"):
        for pattern, during, after in state_rows(dtype):
            print(f"  scores {dtype:8s} {pattern:8s} during: {during / 4:.3f}x fp32 | {during / 2:.3f}x bf16   "
                  f"after last event: {after / 4:.4f}x fp32 | {after / 2:.4f}x bf16")
    print("ops update_scores + mask_after_step adds (views and allocations left out), MLP width 256")
    for pattern, four, forty_eight in op_counts():
        print(f"  {pattern:5s} 4 layers: {four}  48 layers: {forty_eight}  ratio {forty_eight / four:.2f}   "
              "target <= 1.2")
    if not options.skip_real:
        agreement = bf16_agreement(options.steps)
        if agreement is None:
            print("bf16 vs fp32 masks: not measured (../shared all-MiniLM-L6-v2 or SQuAD absent)")
        for pattern, fraction in agreement or []:
            print(f"  bf16 vs fp32 scores, all-MiniLM-L6-v2, {options.steps} SQuAD steps, {pattern}: "
                  f"{fraction:.5f} of mask entries agree")


if __name__ == "__main__":
    main()
