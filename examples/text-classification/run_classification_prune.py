#!/usr/bin/env python
"""Fine-tune a text classifier while pruning it, optionally distilling from a fine-tuned teacher.

    python examples/text-classification/run_classification_prune.py --model_name_or_path bert-base-uncased \\
        --dataset_name glue --dataset_config sst2 --pruning_pattern 4x1 --target_sparsity 0.8 \\
        --num_train_epochs 3 --output_dir sst2-4x1
    python examples/text-classification/run_classification_prune.py --model_name_or_path ./my-model \\
        --train_file train.csv --validation_file dev.csv --text_column sentence --pruning_pattern 2:4 \\
        --teacher_model_name_or_path ./my-finetuned-teacher --output_dir out

CSV or JSON lines files with a text column (a second one with ``--text_pair_column``) and a ``label`` column, or
a Hub dataset. Pruning is ``PruningTrainerCallback`` in the stock ``Trainer``; with a teacher the Trainer is
``DistillationTrainer`` (logit KD). The output folder holds the model, ``pruning_config.json`` and the sparsity report.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Optional

import datasets
import numpy as np
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          HfArgumentParser, Trainer, TrainingArguments, set_seed)

from hf_prune import DistillationTrainer, PruningConfig, PruningTrainerCallback


@dataclass
class ExampleArguments:
    model_name_or_path: str = field(metadata={"help": "model folder or Hub id"})
    dataset_name: Optional[str] = field(default=None)
    dataset_config: Optional[str] = field(default=None)
    train_file: Optional[str] = field(default=None, metadata={"help": "CSV or JSON lines"})
    validation_file: Optional[str] = field(default=None)
    text_column: str = field(default="sentence")
    text_pair_column: Optional[str] = field(default=None)
    label_column: str = field(default="label")
    max_length: int = field(default=128)
    pruning_pattern: str = field(default="4x1", metadata={"help": "4x1, 2:4, 1x1, head, channel, lock ..."})
    target_sparsity: Optional[float] = field(default=0.8)
    pruning_criterion: str = field(default="snip_momentum")
    teacher_model_name_or_path: Optional[str] = field(default=None, metadata={"help": "distil from this model"})


def load(args: ExampleArguments) -> datasets.DatasetDict:
    if (args.dataset_name is None) == (args.train_file is None):
        raise ValueError("give exactly one of --dataset_name and --train_file")
    if args.dataset_name:
        return datasets.load_dataset(args.dataset_name, args.dataset_config)
    files = {"train": args.train_file, **({"validation": args.validation_file} if args.validation_file else {})}
    return datasets.load_dataset("csv" if args.train_file.endswith(".csv") else "json", data_files=files)


def main(argv=None) -> int:
    args, training_args = HfArgumentParser((ExampleArguments, TrainingArguments)).parse_args_into_dataclasses(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    pruning = PruningConfig(pattern=args.pruning_pattern, criterion=args.pruning_criterion,
                            target_sparsity=None if args.pruning_pattern == "lock" else args.target_sparsity)
    raw = load(args)
    for column in filter(None, (args.text_column, args.text_pair_column, args.label_column)):
        if column not in raw["train"].column_names:
            raise ValueError(f"no column {column!r} in the training data (columns: {raw['train'].column_names})")
    labels = sorted(set(raw["train"][args.label_column]))
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=len(labels))
    index = {label: i for i, label in enumerate(labels)}

    def encode(rows):
        pair = rows[args.text_pair_column] if args.text_pair_column else None
        encoded = tokenizer(rows[args.text_column], pair, truncation=True, max_length=args.max_length)
        encoded["labels"] = [index[label] for label in rows[args.label_column]]
        return encoded

    data = raw.map(encode, batched=True, remove_columns=raw["train"].column_names)
    kwargs = dict(model=model, args=training_args, train_dataset=data["train"],
                  eval_dataset=data.get("validation"), data_collator=DataCollatorWithPadding(tokenizer),
                  processing_class=tokenizer, callbacks=[PruningTrainerCallback(pruning)],
                  compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())})
    if args.teacher_model_name_or_path:
        teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher_model_name_or_path)
        trainer = DistillationTrainer(teacher_model=teacher, **kwargs)
    else:
        trainer = Trainer(**kwargs)
    if training_args.do_train:
        trainer.save_metrics("train", trainer.train().metrics)
        trainer.save_model()
    if training_args.do_eval and "validation" in data:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
