"""A training script's output folder: never lose a model, never leave one beside another run's figures.

- :func:`prepare_output_dir` is run_qa.py's guard: a folder holding a finished model is refused (unless
  ``--overwrite_output_dir``, which clears the earlier run), a folder holding checkpoints resumes from the last.
- :func:`publish` moves a run's final files, written together into a staging folder, into the output folder and
  removes what an earlier run left there, so a crash leaves the previous complete set or the new one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Dict, Optional

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

__all__ = ["prepare_output_dir", "publish", "staging_dir", "save_metrics", "MODEL_FILES"]

MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
STAGING_NAME = ".hf_prune-staging"
#: What a finished run of the script leaves in its folder besides the model (config, tokenizer, results, card).
RUN_FILES = MODEL_FILES + (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "added_tokens.json", "training_args.bin", "trainer_state.json", "README.md", "pruning_config.json",
    "distillation_config.json", "sparsity_report.json", "sparsity_report.md", "train_results.json",
    "eval_results.json", "predict_results.json", "all_results.json", "eval_predictions.json",
    "eval_nbest_predictions.json", "eval_null_odds.json", "predict_predictions.json", "predict_nbest_predictions.json",
    "predict_null_odds.json", "simkd_head.safetensors", "hidden_projections.safetensors")


def prepare_output_dir(output_dir: str, overwrite: bool, resume_from_checkpoint: Optional[str]) -> Optional[str]:
    """For a training run into ``output_dir``: the checkpoint to resume from (the given one, else the last one
    found there), after refusing a folder that holds a finished model or other files. With ``overwrite`` the
    earlier run's files and checkpoints are removed first."""
    if not os.path.isdir(output_dir):
        return resume_from_checkpoint
    if overwrite:
        clear_run(output_dir)
        return resume_from_checkpoint
    if any(os.path.isfile(os.path.join(output_dir, name)) for name in MODEL_FILES):
        raise ValueError(f"output_dir {output_dir!r} already holds a trained model; give --overwrite_output_dir to "
                         "replace it, or another --output_dir")
    if resume_from_checkpoint is not None:
        return resume_from_checkpoint
    last = last_complete_checkpoint(output_dir)
    if last is not None:
        logger.warning("output_dir %s holds checkpoints: resuming from %s (give --overwrite_output_dir to start "
                       "again)", output_dir, last)
        return last
    leftovers = [name for name in os.listdir(output_dir) if name != STAGING_NAME]
    if leftovers:
        raise ValueError(f"output_dir {output_dir!r} is not empty and holds no checkpoint ({', '.join(leftovers[:5])}"
                         f"{', ...' if len(leftovers) > 5 else ''}); give --overwrite_output_dir or another --output_dir")
    return None


def last_complete_checkpoint(output_dir: str) -> Optional[str]:
    """The highest-numbered checkpoint that holds its ``trainer_state.json``: the Trainer writes that file after the
    model, optimizer and callback states, so a run killed while saving leaves a folder without it, which is
    skipped (with a warning) rather than resumed from."""
    numbered = []
    for name in os.listdir(output_dir):
        step = name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and step.isdigit() and os.path.isdir(os.path.join(output_dir, name)):
            numbered.append((int(step), os.path.join(output_dir, name)))
    for _, path in sorted(numbered, reverse=True):
        if os.path.isfile(os.path.join(path, "trainer_state.json")):
            return path
        logger.warning("%s is incomplete (no trainer_state.json: the run stopped while saving it); skipping it", path)
    return None


def clear_run(output_dir: str) -> None:
    """Remove an earlier run's files, checkpoints and staging folder (nothing else) from ``output_dir``."""
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and (name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") or name == STAGING_NAME):
            shutil.rmtree(path)
        elif name in RUN_FILES:
            os.remove(path)


def staging_dir(output_dir: str) -> str:
    """An empty folder inside ``output_dir`` for this run's final files (a rename away from their place)."""
    path = os.path.join(output_dir, STAGING_NAME)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def publish(staging: str, output_dir: str, replace_run: bool) -> None:
    """Move every file of ``staging`` into ``output_dir``. With ``replace_run`` (a training run) the earlier
    run's files are removed first, its model first: a crash in between leaves a folder without a model (never an
    old model beside new figures, or the reverse), and the model is moved in last."""
    written = set(os.listdir(staging))
    if replace_run:
        for name in MODEL_FILES + RUN_FILES:
            path = os.path.join(output_dir, name)
            if os.path.isfile(path):
                os.remove(path)
    for name in sorted(written, key=lambda n: n in MODEL_FILES):  # the model last: it marks a finished run
        os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    shutil.rmtree(staging)


def save_metrics(folder: str, split: str, metrics: Dict[str, float], all_metrics: Dict[str, float]) -> None:
    """``<split>_results.json`` and ``all_results.json``, as ``Trainer.save_metrics`` writes them."""
    for name, values in ((f"{split}_results.json", metrics), ("all_results.json", all_metrics)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            json.dump(values, handle, indent=4, sort_keys=True)
