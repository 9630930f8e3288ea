"""Which compressed SmolLM2 shapes decode fast enough in llama.cpp? Batch-1 speed of one-shot shapes, no training.

    python benchmarks/llama_cpp_shapes.py --module <llama.cpp cffi module> [--ffn 1024 928 832 768] [--depth 28]
        [--questions 10]

Speed does not depend on the weights' values, so each shape is the dense SFT model trimmed to the training split's
vocabulary (as the runs do) and compressed one-shot (``hf_prune.compress`` with that shape: every head and the
hidden size kept, ``--depth`` layers, FFN width from ``--ffn``), written as an f32 GGUF by
``hf_prune.gguf_export.save_gguf`` to ``benchmarks/runs/smollm2/llama_cpp_shapes/``, and timed in llama.cpp (2
threads) against the dense model's GGUF, all models alternating prompt by prompt over the first ``--questions``
evaluation prompts: prefill seconds per prompt and decode milliseconds per token (24 tokens forced). It tells which
size a trained run needs for a decode target before spending a training run on it. Writes ``shapes.json`` there.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import smollm2_data as data  # noqa: E402
from gguf_llama_cpp import dense_gguf, llama_cpp_speed  # noqa: E402
from llama_cpp_api import LlamaCpp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, help="llama.cpp's cffi extension module (llama_cpp_api.py)")
    parser.add_argument("--ffn", type=int, nargs="+", default=[1024, 928, 832, 768])
    parser.add_argument("--depth", type=int, default=28)
    parser.add_argument("--questions", type=int, default=10)
    options = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_prune.gguf_export import save_gguf
    from hf_prune.llm_compression import compress
    from hf_prune.model_shape import ModelShape

    torch.set_num_threads(2)
    out = os.path.join(data.WORK, "llama_cpp_shapes")
    os.makedirs(out, exist_ok=True)
    dense_dir = os.path.join(data.WORK, "dense", "model")
    dense_tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    chosen = data.eval_questions(dense_tokenizer, options.questions, 320)
    model = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32).eval()
    dense_parameters = sum(p.numel() for p in model.parameters())   # before the vocabulary is trimmed in place
    tokenizer, trimmed_questions, _ = data.trim_run_vocabulary(model, None, dense_tokenizer, chosen)
    batches = data.masked_batches(data.sft_dataset(tokenizer, 16, 320), tokenizer, 8, 2)
    llamas = {"dense": LlamaCpp(options.module, dense_gguf(dense_tokenizer))}
    prompts = {"dense": data.retokenized(chosen, dense_tokenizer)}
    shapes = {}
    for width in options.ffn:
        shape = dataclasses.replace(ModelShape.of(model.config), num_hidden_layers=options.depth,
                                    intermediate_size=width)
        result = compress(model, batches, shape=shape, max_batches=2)
        name = f"{options.depth} layers, FFN {width}"
        path = os.path.join(out, f"layers{options.depth}-ffn{width}.gguf")
        save_gguf(result.model, tokenizer, path, pre_tokenizer="smollm")
        shapes[name] = {"shape": shape.describe(), "parameters": result.parameters}
        llamas[name], prompts[name] = LlamaCpp(options.module, path), trimmed_questions
        del result
    timing = llama_cpp_speed(llamas, prompts)
    dense = timing["dense"]
    for name, facts in shapes.items():
        facts.update(timing[name], prefill_speedup=dense["prefill_seconds"] / timing[name]["prefill_seconds"],
                     decode_speedup=dense["decode_ms_per_token"] / timing[name]["decode_ms_per_token"])
    for llama in llamas.values():
        llama.close()
    report = {"dense": {**dense, "parameters": dense_parameters}, "shapes": shapes, "threads": 2,
              "questions": options.questions}
    with open(os.path.join(out, "shapes.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
