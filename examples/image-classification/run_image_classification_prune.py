#!/usr/bin/env python
"""Fine-tune an image classifier (ViT, DeiT ...) while pruning it.

    python examples/image-classification/run_image_classification_prune.py \\
        --model_name_or_path google/vit-base-patch16-224-in21k --dataset_name beans \\
        --pruning_pattern 4x1 --target_sparsity 0.5 --num_train_epochs 5 --output_dir vit-beans-4x1
    python examples/image-classification/run_image_classification_prune.py --model_name_or_path ./vit \\
        --train_dir images/train --validation_dir images/val --output_dir out

A Hub dataset with ``image`` and ``label`` columns, or folders of images with one sub-folder per class
(``imagefolder``). Pruning is ``PruningTrainerCallback`` in the stock ``Trainer``; the classifier head stays dense.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Optional

import datasets
import numpy as np
import torch
from transformers import (AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser, Trainer,
                          TrainingArguments, set_seed)

from hf_prune import PruningConfig, PruningTrainerCallback


@dataclass
class ExampleArguments:
    model_name_or_path: str = field(metadata={"help": "model folder or Hub id (with its image processor)"})
    dataset_name: Optional[str] = field(default=None)
    train_dir: Optional[str] = field(default=None, metadata={"help": "a folder of class sub-folders"})
    validation_dir: Optional[str] = field(default=None)
    pruning_pattern: str = field(default="4x1")
    target_sparsity: Optional[float] = field(default=0.5)
    pruning_criterion: str = field(default="snip_momentum")


def load(args: ExampleArguments) -> datasets.DatasetDict:
    if (args.dataset_name is None) == (args.train_dir is None):
        raise ValueError("give exactly one of --dataset_name and --train_dir")
    if args.dataset_name:
        return datasets.load_dataset(args.dataset_name)
    files = {"train": args.train_dir, **({"validation": args.validation_dir} if args.validation_dir else {})}
    return datasets.DatasetDict({split: datasets.load_dataset("imagefolder", data_dir=folder, split="train")
                                 for split, folder in files.items()})


def main(argv=None) -> int:
    args, training_args = HfArgumentParser((ExampleArguments, TrainingArguments)).parse_args_into_dataclasses(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    pruning = PruningConfig(pattern=args.pruning_pattern, criterion=args.pruning_criterion,
                            target_sparsity=None if args.pruning_pattern == "lock" else args.target_sparsity)
    data = load(args)
    names = data["train"].features["label"].names
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    model = AutoModelForImageClassification.from_pretrained(
        args.model_name_or_path, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)}, ignore_mismatched_sizes=True)

    def transform(rows):
        rows["pixel_values"] = processor([image.convert("RGB") for image in rows["image"]],
                                         return_tensors="pt")["pixel_values"]
        return rows

    data = data.with_transform(transform)

    def collate(rows):
        return {"pixel_values": torch.stack([row["pixel_values"] for row in rows]),
                "labels": torch.tensor([row["label"] for row in rows])}

    training_args.remove_unused_columns = False
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"],
                      eval_dataset=data.get("validation"), data_collator=collate,
                      callbacks=[PruningTrainerCallback(pruning)],
                      compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1)
                                                                    == p.label_ids).mean())})
    if training_args.do_train:
        trainer.save_metrics("train", trainer.train().metrics)
        trainer.save_model()
        processor.save_pretrained(training_args.output_dir)
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
