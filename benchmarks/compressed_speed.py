"""Batch-1 CPU speed and F1 of the compressed SmolLM2 folders as saved, against the dense SFT model as saved.

    python benchmarks/compressed_speed.py minitron-search-kd minitron-width-kd minitron-depth-kd [--questions 20]
        [--f1-questions 0]

Every model is loaded fresh from its folder in float32 (``AutoModelForCausalLM``, no training wrappers: TRL's
SFTConfig trains in bf16 autocast on CPU, and a model kept in memory after training still runs its forward under
it). Speed: prefill seconds per prompt and decode milliseconds per token (24 tokens forced), for the first
``--questions`` evaluation prompts, the dense model and each compressed one alternating prompt by prompt.
``--f1-questions N`` also scores EM/F1 of the saved folders on the first N questions (the 200 of the runs: 200).
Writes ``benchmarks/runs/smollm2/compressed_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import smollm2_checks as checks  # noqa: E402
import smollm2_data as data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--f1-questions", type=int, default=0)
    options = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folders = {"dense": os.path.join(data.WORK, "dense", "model"),
               **{run: os.path.join(data.WORK, run, "model") for run in options.runs}}
    tokenizers = {name: AutoTokenizer.from_pretrained(folder) for name, folder in folders.items()}
    models = {name: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
              for name, folder in folders.items()}
    # the same questions for every model (chosen by the dense tokenizer), each prompted with its own tokenizer (a
    # trimmed vocabulary tokenizes them differently)
    chosen = data.eval_questions(tokenizers["dense"], max(options.questions, options.f1_questions), 320)
    prompts = {name: data.retokenized(chosen, tokenizer) for name, tokenizer in tokenizers.items()}
    result = {"threads": torch.get_num_threads(), "questions": options.questions,
              "parameters": {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()},
              "vocabulary": {name: len(tokenizer) for name, tokenizer in tokenizers.items()},
              "timing": checks.batch1_timings(models, {name: rows[:options.questions]
                                                          for name, rows in prompts.items()})}
    dense = result["timing"]["dense"]
    result["speedup"] = {name: {"prefill": dense["prefill_seconds"] / row["prefill_seconds"],
                                "decode": dense["decode_ms_per_token"] / row["decode_ms_per_token"]}
                         for name, row in result["timing"].items() if name != "dense"}
    if options.f1_questions:
        result["saved_folder_scores"] = {name: {key: value for key, value in checks.evaluate(
            model, tokenizers[name], prompts[name][:options.f1_questions]).items() if key in ("exact_match", "f1")}
            for name, model in models.items()}
    path = os.path.join(data.WORK, "compressed_speed.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
