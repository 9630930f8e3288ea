"""The text-classification example on a real model and real text: QNLI-style pairs built from the SQuAD split.

GLUE's QNLI is built from SQuAD: does this sentence of the context answer the question? The same construction on
``../shared/data/squad`` (no GLUE download offline): per question, the context sentence holding the first answer
(``entailment``) and one other sentence of the same context (``not_entailment``), so the classes are balanced.
Training pairs come from ``train.json``, evaluation pairs from ``validation.json`` (other articles). The files are
written under ``benchmarks/runs/qnli`` (git-ignored); each run is ``examples/text-classification/
run_classification_prune.py`` as a user would call it, on all-MiniLM-L6-v2 from ``../shared/models``.

    python benchmarks/qnli_example.py <run> [<run> ...]

Runs (named before they ran; the arguments every run shares are in COMMON):
  dense      target_sparsity 0 (the callback keeps every weight): the reference accuracy
  4x1-0.80   snip-momentum 4x1 blocks at 0.80 sparsity over the encoder, the example's default pattern
  2-4        snip-momentum 2:4 (0.50)
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from hf_prune.qa.data import load_squad_file  # noqa: E402

SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
MODEL = os.path.join(SHARED, "models", "all-MiniLM-L6-v2")
WORK = os.path.join(HERE, "runs", "qnli")
TRAIN_QUESTIONS, EVAL_QUESTIONS = 2000, 500
COMMON = ["--model_name_or_path", MODEL, "--text_column", "question", "--text_pair_column", "sentence",
          "--label_column", "label", "--max_length", "128", "--per_device_train_batch_size", "32",
          "--per_device_eval_batch_size", "64", "--learning_rate", "5e-5", "--num_train_epochs", "2",
          "--seed", "42", "--do_train", "--do_eval", "--save_strategy", "no", "--report_to", "none",
          "--use_cpu", "--disable_tqdm", "true"]
RUNS = {
    "dense": ["--target_sparsity", "0.0"],
    "4x1-0.80": ["--pruning_pattern", "4x1", "--target_sparsity", "0.8"],
    "2-4": ["--pruning_pattern", "2:4", "--target_sparsity", "0.5"],
}


def _sentences(context: str):
    """(start, end) character spans of the context's sentences (a split after ., ! or ? and a space)."""
    spans, start = [], 0
    for match in re.finditer(r"[.!?](\s+)", context):
        spans.append((start, match.start() + 1))
        start = match.end()
    spans.append((start, len(context)))
    return [(a, b) for a, b in spans if b > a]


def qnli_pairs(split: str, questions: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    pairs = []
    for record in load_squad_file(os.path.join(SHARED, "data", "squad", split)):
        spans = _sentences(record["context"])
        answer = record["answers"]["answer_start"][0]
        holding = [span for span in spans if span[0] <= answer < span[1]]
        others = [span for span in spans if span not in holding]
        if len(holding) != 1 or not others:
            continue
        for (a, b), label in ((holding[0], "entailment"), (rng.choice(others), "not_entailment")):
            pairs.append({"question": record["question"], "sentence": record["context"][a:b], "label": label})
        if len(pairs) == 2 * questions:
            break
    return pairs


def write_files() -> dict:
    os.makedirs(WORK, exist_ok=True)
    files = {}
    for name, split, count in (("train", "train.json", TRAIN_QUESTIONS), ("validation", "validation.json",
                                                                          EVAL_QUESTIONS)):
        files[name] = os.path.join(WORK, f"{name}.jsonl")
        with open(files[name], "w", encoding="utf-8") as handle:
            for pair in qnli_pairs(split, count):
                handle.write(json.dumps(pair) + "\n")
    return files


def main() -> None:
    names = sys.argv[1:] or list(RUNS)
    unknown = [name for name in names if name not in RUNS]
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; allowed: {list(RUNS)}")
    files = write_files()
    for name in names:
        out = os.path.join(WORK, name)
        command = [sys.executable, os.path.join(ROOT, "examples", "text-classification", "run_classification_prune.py"),
                   *COMMON, *RUNS[name], "--train_file", files["train"], "--validation_file", files["validation"],
                   "--output_dir", out]
        subprocess.run(command, check=True)
        with open(os.path.join(out, "all_results.json"), encoding="utf-8") as handle:
            results = json.load(handle)
        row = {"run": name, "arguments": RUNS[name], "eval_accuracy": results.get("eval_accuracy"),
               "train_runtime": results.get("train_runtime"), "sparsity": results.get("eval_sparsity")}
        with open(os.path.join(out, "benchmark.json"), "w", encoding="utf-8") as handle:
            json.dump(row, handle, indent=2)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
