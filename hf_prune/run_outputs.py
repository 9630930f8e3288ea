"""A training script's output folder: never lose a model, never delete what the script did not write.

- :func:`check_output_location` refuses an output folder that is, holds or lies inside the model's (or the
  teacher's) folder, or that is the current directory or one of its parents.
- :func:`prepare_output_dir` is run_qa.py's guard: a folder holding a finished model is refused (unless
  ``--overwrite_output_dir``), a folder holding checkpoints resumes from the last. An overwrite sets the earlier
  run aside (:data:`PREVIOUS_NAME`) instead of deleting it; it is deleted only once the new run is published, and
  put back if the new run never finishes.
- The script knows its own files: :data:`MANIFEST_NAME` lists what a finished run published, and each checkpoint it
  saved holds :data:`CHECKPOINT_MARKER`. Only those are ever moved or removed; any other file in the way is refused.
- :func:`publish` moves a run's final files, written together into a staging folder, into the output folder, the
  model last, so a crash leaves the previous complete set or the new one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Dict, List, Optional

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

__all__ = ["prepare_output_dir", "publish", "staging_dir", "save_metrics", "MODEL_FILES", "check_output_location",
           "check_evaluation_output", "MarkCheckpoints", "MANIFEST_NAME", "CHECKPOINT_MARKER"]

MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
STAGING_NAME = ".hf_prune-staging"
PREVIOUS_NAME = ".hf_prune-previous"
MANIFEST_NAME = ".hf_prune-run.json"
CHECKPOINT_MARKER = ".hf_prune-checkpoint"
#: What a finished run of the script leaves in its folder besides the model (config, tokenizer, results, card).
RUN_FILES = MODEL_FILES + (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "added_tokens.json", "training_args.bin", "trainer_state.json", "README.md", "pruning_config.json",
    "distillation_config.json", "sparsity_report.json", "sparsity_report.md", "train_results.json",
    "eval_results.json", "predict_results.json", "all_results.json", "eval_predictions.json",
    "eval_nbest_predictions.json", "eval_null_odds.json", "predict_predictions.json", "predict_nbest_predictions.json",
    "predict_null_odds.json", "simkd_head.safetensors", "hidden_projections.safetensors",
    "sparsity.png")


def check_output_location(output_dir: str, protected: Dict[str, Optional[str]]) -> None:
    """Refuse an ``output_dir`` that is, contains or lies inside one of the ``protected`` local folders (label ->
    path: the model, the teacher ...), or that is the current directory or one of its parents: the script
    writes and replaces files there."""
    out = os.path.realpath(output_dir)
    here = os.path.realpath(os.getcwd())
    if os.path.commonpath([out, here]) == out:
        raise ValueError(f"output_dir {output_dir!r} is the current directory or one of its parents; give a folder "
                         "of its own (e.g. outputs/<run name>)")
    for label, path in protected.items():
        if not path or not os.path.isdir(path):
            continue
        folder = os.path.realpath(path)
        if os.path.commonpath([out, folder]) in (out, folder):
            raise ValueError(f"output_dir {output_dir!r} is, holds or lies inside the {label} folder {path!r}; "
                             "write the run elsewhere")


def prepare_output_dir(output_dir: str, overwrite: bool, resume_from_checkpoint: Optional[str]) -> Optional[str]:
    """For a training run into ``output_dir``: the checkpoint to resume from (the given one, else the last one
    found there), after refusing a folder that holds a finished model or other files. With ``overwrite`` the
    earlier run's files and checkpoints are set aside, to be deleted when this run is published."""
    if not os.path.isdir(output_dir):
        return resume_from_checkpoint
    recover_interrupted(output_dir)
    if overwrite:
        set_previous_run_aside(output_dir)
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
    leftovers = [name for name in os.listdir(output_dir) if name not in (STAGING_NAME, MANIFEST_NAME)]
    if leftovers:
        raise ValueError(f"output_dir {output_dir!r} is not empty and holds no checkpoint ({', '.join(leftovers[:5])}"
                         f"{', ...' if len(leftovers) > 5 else ''}); give --overwrite_output_dir or another --output_dir")
    return None


def check_evaluation_output(output_dir: str, model_path: str, overwrite: bool) -> None:
    """An evaluation-only (or slim-only) run writes its results into ``output_dir``: refused when that folder
    holds another finished model (its figures would sit beside a model they do not describe), unless
    ``overwrite``, which sets that run aside like a training overwrite."""
    if not os.path.isdir(output_dir):
        return
    recover_interrupted(output_dir)
    same = os.path.isdir(model_path) and os.path.realpath(model_path) == os.path.realpath(output_dir)
    holds_model = any(os.path.isfile(os.path.join(output_dir, name)) for name in MODEL_FILES)
    if holds_model and not same:
        if not overwrite:
            raise ValueError(f"output_dir {output_dir!r} holds another finished model; this run's results would "
                             "describe a model that is not there: give another --output_dir, or "
                             "--overwrite_output_dir to replace that run")
        set_previous_run_aside(output_dir)


def _own_entries(output_dir: str) -> List[str]:
    """Names in ``output_dir`` that an earlier run of the script wrote: its manifest's files and its marked
    checkpoints."""
    names = []
    manifest = os.path.join(output_dir, MANIFEST_NAME)
    if os.path.isfile(manifest):
        try:
            with open(manifest, encoding="utf-8") as handle:
                listed = json.load(handle).get("files", [])
        except (ValueError, AttributeError):
            raise ValueError(f"{manifest} is not this script's manifest; move it out of {output_dir!r}") from None
        names += [name for name in listed if isinstance(name, str) and os.path.basename(name) == name
                  and name not in ("", ".", "..") and os.path.isfile(os.path.join(output_dir, name))]
        names.append(MANIFEST_NAME)
    for name in os.listdir(output_dir):
        if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and os.path.isfile(os.path.join(output_dir, name,
                                                                                          CHECKPOINT_MARKER)):
            names.append(name)
    return names


def set_previous_run_aside(output_dir: str) -> None:
    """Move the earlier run's own files and checkpoints into :data:`PREVIOUS_NAME` (renames, nothing deleted);
    refuse when a file this run would write is there but was not written by the script."""
    own = set(_own_entries(output_dir))
    foreign = sorted(name for name in os.listdir(output_dir) if name not in own and (
        name in RUN_FILES or name in MODEL_FILES or name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")))
    if foreign:
        raise ValueError(f"output_dir {output_dir!r} holds {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
                         ", which no run of this script wrote (or an older hf_prune, before runs kept a manifest): "
                         "--overwrite_output_dir replaces only the script's own files; move those out or give "
                         "another --output_dir")
    if not own:
        return
    previous = os.path.join(output_dir, PREVIOUS_NAME)
    os.makedirs(previous, exist_ok=True)
    for name in own:
        os.replace(os.path.join(output_dir, name), os.path.join(previous, name))


def recover_interrupted(output_dir: str) -> None:
    """Undo what an interrupted run left: a set-aside earlier run comes back when no new model replaced it (and
    is deleted when one did); a staging folder holding a finished model (a publish cut off) is refused, since
    it may be the only copy."""
    _refuse_unfinished_publish(os.path.join(output_dir, STAGING_NAME), output_dir)
    previous = os.path.join(output_dir, PREVIOUS_NAME)
    if not os.path.isdir(previous):
        return
    if any(os.path.isfile(os.path.join(output_dir, name)) for name in MODEL_FILES):
        shutil.rmtree(previous)  # the new run was published; only the clean-up was cut off
        return
    for name in os.listdir(previous):
        target = os.path.join(output_dir, name)
        if os.path.isdir(target) and name.startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
            shutil.rmtree(target)  # a checkpoint of the run that never finished, which reused the number
        elif os.path.exists(target):
            os.remove(target)
        os.replace(os.path.join(previous, name), target)
    os.rmdir(previous)
    logger.warning("%s: the earlier run an interrupted overwrite had set aside is back in place", output_dir)


def _refuse_unfinished_publish(staging: str, output_dir: str) -> None:
    """A staging folder holding a model is a publish that was cut off: it may hold the only copy of that model."""
    if os.path.isdir(staging) and any(os.path.isfile(os.path.join(staging, name)) for name in MODEL_FILES):
        raise ValueError(f"{staging} holds a finished model that an interrupted run did not finish moving into "
                         f"{output_dir!r}: move its files into place (or elsewhere) first")


class MarkCheckpoints(TrainerCallback):
    """Marks each checkpoint the script saves as its own (:data:`CHECKPOINT_MARKER`): an overwrite moves only
    marked ones."""

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            with open(os.path.join(folder, CHECKPOINT_MARKER), "w", encoding="utf-8") as handle:
                handle.write("written by hf_prune's run_qa_prune.py\n")


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


def staging_dir(output_dir: str) -> str:
    """An empty folder inside ``output_dir`` for this run's final files (a rename away from their place)."""
    path = os.path.join(output_dir, STAGING_NAME)
    _refuse_unfinished_publish(path, output_dir)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def publish(staging: str, output_dir: str, replace_run: bool) -> None:
    """Move every file of ``staging`` into ``output_dir``, the model last (it marks a finished run), then list
    them in the manifest and delete the earlier run that an overwrite set aside. ``replace_run``: the files of
    the published run that this one does not write again are removed first (set aside by now under overwrite)."""
    written = sorted(os.listdir(staging), key=lambda n: n in MODEL_FILES)
    own_files = [name for name in _own_entries(output_dir) if not name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
                 and name != MANIFEST_NAME]
    in_the_way = [name for name in written if os.path.exists(os.path.join(output_dir, name)) and name not in own_files]
    if in_the_way:
        raise ValueError(f"output_dir {output_dir!r} holds {', '.join(in_the_way[:5])}, which no run of this script "
                         f"wrote; the finished run stays in {staging}: move those files out, then its files in")
    if replace_run:
        for name in own_files:
            if name not in written:
                os.remove(os.path.join(output_dir, name))
    for name in written:
        os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    files = sorted(set(written) | (set() if replace_run else set(own_files)))
    with open(os.path.join(output_dir, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        json.dump({"written_by": "hf_prune run_qa_prune.py", "files": files}, handle, indent=2)
    shutil.rmtree(staging)
    shutil.rmtree(os.path.join(output_dir, PREVIOUS_NAME), ignore_errors=True)


def save_metrics(folder: str, split: str, metrics: Dict[str, float], all_metrics: Dict[str, float]) -> None:
    """``<split>_results.json`` and ``all_results.json``, as ``Trainer.save_metrics`` writes them."""
    for name, values in ((f"{split}_results.json", metrics), ("all_results.json", all_metrics)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            json.dump(values, handle, indent=4, sort_keys=True)
