#!/usr/bin/env python
"""Compress a Llama-family causal LM into a smaller stock model, recover it by distillation, save it (and a GGUF).

    python examples/causal-lm/compress_llm.py --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct \\
        --train_file paragraphs.jsonl --target_params 90e6 --max_steps 100 --output_dir smollm2-90m

``--train_file``: JSON lines or CSV with a ``text`` column (or ``--dataset_name`` from the Hub). The first
``--calibration_batches`` batches rank every unit by activation importance; ``--search`` scores candidate shapes
by the language-model loss of the next ``--score_batches`` batches; the compressed model then trains with token
KD from the original (``DistillationTrainer``) and is saved with ``save_pretrained``: a plain folder that
``AutoModelForCausalLM.from_pretrained`` loads without hf_prune. ``--gguf`` also writes ``model.gguf`` for llama.cpp.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

import datasets
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, HfArgumentParser,
                          TrainingArguments, set_seed)

from hf_prune import DistillationConfig, DistillationTrainer, compress

logger = logging.getLogger(__name__)


@dataclass
class CompressionArguments:
    model_name_or_path: str = field(metadata={"help": "a Llama, Mistral, Qwen2 or Qwen3 causal LM (folder or Hub id)"})
    target_params: float = field(default=None, metadata={"help": "at most this many parameters, e.g. 90e6"})
    train_file: Optional[str] = field(default=None, metadata={"help": "JSON lines or CSV with a 'text' column"})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "a Hub dataset with a 'text' column"})
    text_column: str = field(default="text")
    max_length: int = field(default=256, metadata={"help": "tokens per training example"})
    calibration_batches: int = field(default=16, metadata={"help": "batches that rank the units"})
    score_batches: int = field(default=4, metadata={"help": "batches that score candidate shapes (--search)"})
    search: bool = field(default=True, metadata={"help": "score every candidate shape; else the most even widths"})
    layer_importance: str = field(default="cosine", metadata={"help": "cosine or loss"})
    temperature: float = field(default=2.0, metadata={"help": "KD temperature"})
    gguf: bool = field(default=False, metadata={"help": "also write model.gguf (needs the gguf package)"})


def load_texts(args: CompressionArguments) -> datasets.Dataset:
    if (args.train_file is None) == (args.dataset_name is None):
        raise ValueError("give exactly one of --train_file and --dataset_name")
    if args.dataset_name:
        data = datasets.load_dataset(args.dataset_name, split="train")
    else:
        kind = "csv" if args.train_file.endswith(".csv") else "json"
        data = datasets.load_dataset(kind, data_files=args.train_file, split="train")
    if args.text_column not in data.column_names:
        raise ValueError(f"no column {args.text_column!r} in the data (columns: {data.column_names})")
    return data


def main(argv=None) -> int:
    parser = HfArgumentParser((CompressionArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(argv)
    if args.target_params is None:
        parser.error("--target_params is required (e.g. 90e6)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    teacher = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=torch.float32)
    texts = load_texts(args)
    train = texts.map(lambda rows: tokenizer(rows[args.text_column], truncation=True, max_length=args.max_length),
                      batched=True, remove_columns=texts.column_names)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    batch_size = training_args.per_device_train_batch_size
    batches = [collator([train[i] for i in range(start, min(len(train), start + batch_size))])
               for start in range(0, min(len(train), (args.calibration_batches + args.score_batches) * batch_size),
                                  batch_size)]
    result = compress(teacher, batches, target_params=args.target_params, search=args.search,
                      max_batches=args.calibration_batches, score_batches=args.score_batches,
                      layer_method=args.layer_importance)
    logger.info("compressed %s -> %s parameters: %s", f"{result.parameters_before:,}", f"{result.parameters:,}",
                result.shape.describe())
    trainer = DistillationTrainer(model=result.model, teacher_model=teacher, args=training_args, train_dataset=train,
                                  data_collator=collator, distillation_config=DistillationConfig(
                                      temperature=args.temperature))
    trainer.train()
    trainer.save_model()
    tokenizer.save_pretrained(training_args.output_dir)
    summary = {"shape": asdict(result.shape), "parameters": result.parameters,
               "parameters_before": result.parameters_before,
               "candidates": [{"shape": shape.describe(), "parameters": count, "calibration_loss": loss}
                              for shape, count, loss in result.candidates]}
    with open(os.path.join(training_args.output_dir, "compression.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    if args.gguf:
        from hf_prune.gguf_export import save_gguf

        save_gguf(result.model, tokenizer, os.path.join(training_args.output_dir, "model.gguf"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
