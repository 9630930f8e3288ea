"""llama.cpp against transformers on a compressed SmolLM2 run's GGUF: the same tokens, logits and greedy answers?
And batch-1 speed in llama.cpp against the dense model's GGUF.

    python benchmarks/gguf_llama_cpp.py <run> --module <llama.cpp cffi module> [--questions 10]

Reads ``benchmarks/runs/smollm2/<run>/model`` (the saved stock folder) and ``<run>/gguf/model.gguf`` (f32, written
by ``hf_prune.gguf_export.save_gguf`` in ``smollm2_squad.py``); the dense SFT model's GGUF is written the same way
to ``dense/gguf/model.gguf`` when absent. For the first ``--questions`` evaluation prompts (the runs' 200, chosen by
the dense tokenizer, each model prompted with its own tokenizer):

* tokens: llama.cpp's tokenization of the prompt text (GGUF vocabulary, ``smollm`` pre-tokenizer) against
  transformers' ids;
* logits: the largest absolute difference of the next-token logits after the prompt (float32 both);
* greedy: 24 argmax tokens, both stopping at end of turn — the same tokens?
* speed (llama.cpp, 2 threads, dense and compressed alternating prompt by prompt): prefill seconds per prompt and
  decode milliseconds per token (24 tokens forced).

``--module``: see ``llama_cpp_api.py`` (a prebuilt llama.cpp; benchmark-only). Writes ``<run>/llama_cpp.json``.

Runs reported in RESULTS.md (``--questions 10``): ``minitron-vocab-ffn-hskd``, ``minitron-vocab-ffn-hskd-400``,
``minitron-vocab-ffn80-kd``; named before it ran: ``minitron-vocab-ffn-kd-mq5`` (the best <= 90M model, five
questions a row); then ``minitron-vocab-ffn80-kd-mq5`` (its decode speed on the same machine: 1.38x at 88.6M here
against 1.42-1.50x on the machine before); then both once more, in the same order (run-to-run spread). Then
``minitron-vocab-ffn80-kd-mq5-tmq5`` (the 79.3M shape distilled from the teacher trained on the same rows), then
``minitron-vocab-ffn80-kd-mq5`` (the same shape, the same hour), then ``minitron-vocab-ffn80-kd-mq5-tmq5`` again.
Then ``minitron-vocab-ffn77-kd-mq5-tmq5`` (76.2M) and ``minitron-vocab-ffn80-kd-mq5-tmq5`` once more, in that order.
Then each ``-mq5x2-tmq5`` run that trained (two paragraphs' conversations a row), once each after its training, and
``minitron-vocab-ffn77-kd-mq5-tmq5`` beside them in the same hour (the same shape, the hour's spread).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import smollm2_data as data  # noqa: E402
from llama_cpp_api import LlamaCpp  # noqa: E402


def dense_gguf(tokenizer) -> str:
    """The dense SFT model's GGUF, written once like the runs' (f32, ``smollm`` pre-tokenizer)."""
    from transformers import AutoModelForCausalLM

    from hf_prune.gguf_export import save_gguf

    path = os.path.join(data.WORK, "dense", "gguf", "model.gguf")
    if not os.path.exists(path):
        model = AutoModelForCausalLM.from_pretrained(os.path.join(data.WORK, "dense", "model"),
                                                     dtype=torch.float32)
        save_gguf(model, tokenizer, path, pre_tokenizer="smollm")
    return path


def agreement(model, tokenizer, llama: LlamaCpp, questions) -> dict:
    """Tokens, logits and greedy answers of transformers and llama.cpp on the same prompts."""
    rows = []
    for record, ids in questions:
        text = data.prompt_text(tokenizer, record["context"], record["question"])
        inputs = torch.tensor([ids])
        with torch.no_grad():
            expected_logits = model(inputs, logits_to_keep=1).logits[0, -1].numpy()
            expected = model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                      max_new_tokens=data.MAX_NEW_TOKENS,
                                      pad_token_id=tokenizer.eos_token_id)[0, len(ids):].tolist()
        eos = tokenizer.eos_token_id
        expected = expected[:expected.index(eos)] if eos in expected else expected
        produced, _, _ = llama.greedy(ids, data.MAX_NEW_TOKENS, stop=eos)
        rows.append({"same_prompt_tokens": llama.tokenize(text) == list(ids),
                     "max_abs_logit_difference": float(np.abs(llama.logits(ids) - expected_logits).max()),
                     "identical_greedy": produced == expected,
                     "transformers": tokenizer.decode(expected), "llama_cpp": tokenizer.decode(produced)})
    return {"same_prompt_tokens": sum(row["same_prompt_tokens"] for row in rows),
            "identical_greedy": sum(row["identical_greedy"] for row in rows),
            "max_abs_logit_difference": max(row["max_abs_logit_difference"] for row in rows),
            "questions": len(rows), "examples": rows}


def llama_cpp_speed(models: dict, prompts: dict) -> dict:
    """Per GGUF (alternating prompt by prompt): mean prefill seconds, mean decode milliseconds per token."""
    totals = {name: ([], []) for name in models}
    for index in range(len(next(iter(prompts.values())))):
        for name, llama in models.items():
            _, prefill, token_seconds = llama.greedy(prompts[name][index][1], data.MAX_NEW_TOKENS)
            totals[name][0].append(prefill)
            totals[name][1].extend(token_seconds)
    return {name: {"prefill_seconds": statistics.mean(prefill), "decode_ms_per_token": 1000 * statistics.mean(decode)}
            for name, (prefill, decode) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--module", required=True, help="llama.cpp's cffi extension module (llama_cpp_api.py)")
    parser.add_argument("--questions", type=int, default=10)
    options = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    folder = os.path.join(data.WORK, options.run)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(folder, "model"))
    dense_tokenizer = AutoTokenizer.from_pretrained(os.path.join(data.WORK, "dense", "model"))
    chosen = data.eval_questions(dense_tokenizer, options.questions, 320)
    prompts = {"dense": data.retokenized(chosen, dense_tokenizer),
               "small": data.retokenized(chosen, tokenizer)}
    model = AutoModelForCausalLM.from_pretrained(os.path.join(folder, "model"), dtype=torch.float32).eval()
    llamas = {"dense": LlamaCpp(options.module, dense_gguf(dense_tokenizer)),
              "small": LlamaCpp(options.module, os.path.join(folder, "gguf", "model.gguf"))}
    result = {"run": options.run, "module": os.path.basename(options.module),
              **agreement(model, tokenizer, llamas["small"], prompts["small"])}
    timing = llama_cpp_speed(llamas, prompts)
    result["llama_cpp_speed"] = {**timing, "threads": 2,
                                 "prefill_speedup": timing["dense"]["prefill_seconds"]
                                 / timing["small"]["prefill_seconds"],
                                 "decode_speedup": timing["dense"]["decode_ms_per_token"]
                                 / timing["small"]["decode_ms_per_token"]}
    for llama in llamas.values():
        llama.close()
    with open(os.path.join(folder, "llama_cpp.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps({key: value for key, value in result.items() if key != "examples"}, indent=2))


if __name__ == "__main__":
    main()
