"""llama.cpp against transformers on a compressed SmolLM2 run's GGUF: the same greedy tokens?

    python benchmarks/gguf_llama_cpp.py minitron-search-kd [--questions 5]

Reads ``benchmarks/runs/smollm2/<run>/model`` (the saved stock folder) and ``<run>/gguf/model.gguf`` (written by
``hf_prune.gguf_export.save_gguf`` in ``smollm2_squad.py``), generates 24 greedy tokens for the first
``--questions`` evaluation prompts with transformers and with llama.cpp (``llama-cpp-python``, a benchmark-only
dependency built from source), and writes ``<run>/llama_cpp.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import smollm2_squad as benchmark  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--questions", type=int, default=5)
    options = parser.parse_args()
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = os.path.join(benchmark.WORK, options.run)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(folder, "model"))
    model = AutoModelForCausalLM.from_pretrained(os.path.join(folder, "model"), dtype=torch.float32).eval()
    llama = Llama(model_path=os.path.join(folder, "gguf", "model.gguf"), n_ctx=512, verbose=False)
    rows = []
    for _, ids in benchmark.eval_questions(tokenizer, options.questions, 320):
        inputs = torch.tensor([ids])
        with torch.no_grad():
            expected = model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                      max_new_tokens=benchmark.MAX_NEW_TOKENS,
                                      pad_token_id=tokenizer.eos_token_id)[0, len(ids):].tolist()
        produced = []
        for token in llama.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if token == llama.token_eos() or len(produced) == benchmark.MAX_NEW_TOKENS:
                break
            produced.append(int(token))
        eos = tokenizer.eos_token_id
        expected = expected[:expected.index(eos)] if eos in expected else expected  # both stop at end of turn
        rows.append({"identical": produced == expected, "transformers": tokenizer.decode(expected),
                     "llama_cpp": tokenizer.decode(produced)})
    result = {"run": options.run, "identical_greedy": sum(r["identical"] for r in rows), "questions": len(rows),
              "examples": rows}
    with open(os.path.join(folder, "llama_cpp.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
