"""SQuAD accuracy on the offline split in ../shared: hf_prune vs Intel Neural Compressor's pruner, one run per command.

Every run is ``run_qa_prune.main`` with a recipe from ``recipes/all-MiniLM-L6-v2/``: same data, tokenization,
loss, distillation, optimizer and step budget; the INC runs only swap hf_prune's callback for INC 3.7.1's pruner
(``benchmarks/inc_pruning.py``), configured with the same target, pattern, criterion and steps and INC's own
defaults otherwise. Start with ``dense`` (the teacher, and the student's starting point for every pruned run)::

    python benchmarks/squad_accuracy.py dense
    python benchmarks/squad_accuracy.py hf-4x1-kd
    inc-venv/bin/python benchmarks/squad_accuracy.py inc-4x1-kd     # INC lives in its own venv (RESULTS.md)
    python benchmarks/squad_accuracy.py --table                     # markdown rows of every finished run
    python benchmarks/squad_accuracy.py --write-results             # ...written into benchmarks/RESULTS.md

The seed's budget on a GPU (issue 30): the ``gpu-*`` runs take ``--epochs`` and ``--batch``, and every step count
of their recipe (pruning start, end and frequency, the learning rate's decay) is rescaled to that budget, so one
recipe describes the one-epoch CPU run and the ten-epoch GPU run alike. ``benchmarks/squad_gpu_budget.py`` runs
them all on one GPU::

    python benchmarks/squad_accuracy.py gpu-dense --epochs 10 --batch 32
    python benchmarks/squad_accuracy.py gpu-4x1-kd --epochs 10 --batch 32
    python benchmarks/squad_accuracy.py --gpu-table                 # markdown rows of the finished gpu-* runs

A run writes ``benchmarks/runs/<name>/`` (the run_qa_prune output folder) and, only when it finishes,
``benchmark.json`` there: an interrupted run leaves no row. Arguments after ``--`` go to run_qa_prune (e.g.
``-- --max_steps 3 --max_eval_samples 20`` for a smoke check); such runs go to ``benchmarks/runs/smoke/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

RUNS_DIR = os.path.join("benchmarks", "runs")
MINILM = os.path.join("..", "shared", "models", "all-MiniLM-L6-v2")
DENSE = os.path.join(RUNS_DIR, "dense")
RECIPES = os.path.join("recipes", "all-MiniLM-L6-v2")
ROW_NAME = "benchmark.json"
RESULTS = os.path.join("benchmarks", "RESULTS.md")
TABLE_START = "<!-- accuracy table: python benchmarks/squad_accuracy.py --write-results -->"
TABLE_END = "<!-- end accuracy table -->"
PRUNER_LABELS = {"hf_prune": "hf_prune", "inc": "INC 3.7.1", "none": "none"}


@dataclass(frozen=True)
class Run:
    recipe: str
    student: str = DENSE
    teacher: Optional[str] = DENSE
    pruner: str = "hf_prune"          # "inc": INC 3.7.1's pruner; "none": dense fine-tuning
    extra: Tuple[str, ...] = field(default_factory=tuple)
    scaled: bool = False              # the recipe's step counts rescaled to --epochs / --batch (the gpu-* runs)
    ffn_keep_multiple_of: Optional[int] = None  # slim: the FFN group keeps a multiple of this many channels per layer


#: learning rate held at its peak through the pruning window (53 warm-up + 317 stable steps, to the last event at
#: step 370), then decayed linearly over the 157 steps left
_WSD = ("--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs",
        '{"num_stable_steps": 317, "num_decay_steps": 157, "decay_type": "linear"}')

#: the schedule every run before hf-4x1-kd-wsd used (10 % warm-up, linear decay): 4x1.yaml, 2-4.yaml and slim.yaml
#: hold the wsd shape since their seed repeats, so the earlier runs (and INC's arm, whose method stays unchanged)
#: name the old one
_LINEAR = ("--lr_scheduler_type", "linear", "--lr_scheduler_kwargs", "{}")

RUNS = {
    "dense": Run("dense.yaml", student=MINILM, teacher=None, pruner="none"),
    # the pruned runs' exact budget (one more epoch from dense, same KD) with pruning off: what pruning costs
    "dense-continued": Run("4x1.yaml", pruner="none", extra=_LINEAR),
    "hf-4x1-kd": Run("4x1.yaml", extra=_LINEAR),
    "inc-4x1-kd": Run("4x1.yaml", pruner="inc", extra=_LINEAR),
    "hf-2-4-kd": Run("2-4.yaml", extra=("--pruning_scope", "global", *_LINEAR)),
    "inc-2-4-kd": Run("2-4.yaml", pruner="inc", extra=("--pruning_scope", "global", *_LINEAR)),
    "hf-4x1-simkd": Run("4x1.yaml", extra=("--distill_method", "reused_classifier", *_LINEAR)),
    "hf-4x1-nokd": Run("4x1.yaml", teacher=None, extra=_LINEAR),
    "hf-slim-kd": Run("slim.yaml", extra=_LINEAR),
    # hf_prune with INC's default schedule shape (exp): how much of the difference to INC is the schedule
    "hf-4x1-kd-exp": Run("4x1.yaml", extra=("--pruning_schedule", "exp", *_LINEAR)),
    # 2:4 with local scope: every layer becomes 2:4 at the same pace (with global ranking, every layer must still
    # end 2:4, so the ranking only decides which layers are converted last, all at once)
    "hf-2-4-kd-local": Run("2-4.yaml", extra=("--pruning_scope", "local", *_LINEAR)),
    # the same run with another seed: how far apart two runs of one setting land (the noise floor of the table)
    "hf-4x1-kd-seed43": Run("4x1.yaml", extra=("--seed", "43", *_LINEAR)),
    # what more budget buys: 4x1 @ 0.8 over two epochs (1,054 steps), pruning done at 70 % of them
    "hf-4x1-kd-2ep": Run("4x1.yaml", extra=("--num_train_epochs", "2", "--pruning_end_step", "740", *_LINEAR)),
    # issue 15, layer-wise distillation: logit KD plus hidden-state MSE over all 6 layers (identity map). Weight 10
    # chosen before the run from training windows only: on the dense model pruned one-shot to 4x1 at 0.3-0.8, the
    # KD term is 12-15x the per-element hidden MSE, so 10 gives the two terms the same order of magnitude
    "hf-4x1-lwkd": Run("4x1.yaml", extra=("--hidden_state_weight", "10", *_LINEAR)),
    # issue 15, recovery: the learning rate stays at its peak through the pruning window and decays (linearly) only
    # over the 157 steps after the last event (53 warm-up + 317 stable + 157 decay = 527), instead of decaying
    # while pruning: the hf-4x1-lwkd losses plateau after step 370 with the learning rate already below 3e-5
    "hf-4x1-kd-wsd": Run("4x1.yaml", extra=_WSD),
    "hf-2-4-lwkd-local": Run("2-4.yaml", extra=("--pruning_scope", "local", "--hidden_state_weight", "10", *_LINEAR)),
    # the seed repeat of hf-4x1-kd-wsd (+2.98 F1 over hf-4x1-kd), required before it becomes the recipes' default
    "hf-4x1-kd-wsd-seed43": Run("4x1.yaml", extra=(*_WSD, "--seed", "43")),
    # the same learning-rate shape for the best 2:4 setting (local scope) and for slim heads + channels
    "hf-2-4-kd-local-wsd": Run("2-4.yaml", extra=("--pruning_scope", "local", *_WSD)),
    "hf-slim-kd-wsd": Run("slim.yaml", extra=_WSD),
    # the seed repeat of hf-2-4-kd-local-wsd (+2.45 F1 over hf-2-4-kd-local), before it becomes 2-4.yaml's default
    "hf-2-4-kd-local-wsd-seed43": Run("2-4.yaml", extra=("--pruning_scope", "local", *_WSD, "--seed", "43")),
    # the doubled budget for the best 4x1 setting: two epochs (1,054 steps), the last event at 740 as in
    # hf-4x1-kd-2ep; 106 warm-up + 634 stable steps to it, then 314 of linear decay
    "hf-4x1-kd-wsd-2ep": Run("4x1.yaml", extra=(
        "--num_train_epochs", "2", "--pruning_end_step", "740", "--lr_scheduler_type", "warmup_stable_decay",
        "--lr_scheduler_kwargs", '{"num_stable_steps": 634, "num_decay_steps": 314, "decay_type": "linear"}')),
    # the seed repeat of hf-slim-kd-wsd, run only if it beats hf-slim-kd (60.50), before slim.yaml takes the wsd shape
    "hf-slim-kd-wsd-seed43": Run("slim.yaml", extra=(*_WSD, "--seed", "43")),
}

# ---- the seed's budget on a GPU (issue 30) ---------------------------------------------------------------------
#: training windows of train.json at seq 256 / stride 128 with transformers 5.25 (527 steps of 16); transformers 5.18's
#: tokenizer gives 8,117 (measured on the H200 image), so squad_gpu_budget.py passes the teacher's own count on. A
#: scaled run checks its step count against the one derived from its --windows
TRAIN_WINDOWS = 8418
#: the one-epoch recipes' step counts (batch 16, 527 steps) that a scaled run stretches to its own budget
RECIPE_STEPS, RECIPE_START, RECIPE_END, RECIPE_FREQUENCY = 527, 50, 370, 20
GPU_DENSE = os.path.join(RUNS_DIR, "gpu-dense")
RUNS.update({
    # the teacher: dense fine-tuning from the pretrained model for the whole budget, scored after every epoch
    "gpu-dense": Run("dense.yaml", student=MINILM, teacher=None, pruner="none", scaled=True,
                     extra=("--eval_strategy", "epoch")),
    # from the teacher, distilled from it, the same budget: without pruning, then each pruned recipe
    "gpu-dense-continued": Run("4x1.yaml", student=GPU_DENSE, teacher=GPU_DENSE, pruner="none", scaled=True),
    "gpu-4x1-kd": Run("4x1.yaml", student=GPU_DENSE, teacher=GPU_DENSE, scaled=True),
    "gpu-2-4-kd": Run("2-4.yaml", student=GPU_DENSE, teacher=GPU_DENSE, scaled=True),
    # slim.yaml with the FFN widths kept at multiples of 64 (GPU kernels; RESULTS "Slimming needs aligned widths")
    "gpu-slim-kd": Run("slim.yaml", student=GPU_DENSE, teacher=GPU_DENSE, scaled=True, ffn_keep_multiple_of=64),
})


@dataclass(frozen=True)
class Budget:
    """A scaled run's length: ``epochs`` over train.json in batches of ``batch``."""
    epochs: int
    batch: int
    windows: int = TRAIN_WINDOWS  # training windows per epoch (a smoke run on a subset gives its own count)

    @property
    def steps(self) -> int:
        return math.ceil(self.windows / self.batch) * self.epochs

    def arguments(self, run: Run) -> List[str]:
        """The flags that stretch the recipe's one-epoch step counts to this budget: the same fractions of training
        (pruning from 9.5 % to 70 % of the steps in 16 events, then the learning rate's linear decay)."""
        argv = ["--num_train_epochs", str(self.epochs), "--per_device_train_batch_size", str(self.batch)]
        if run.recipe == "dense.yaml":
            return argv  # 10 % warm-up, linear decay: fractions already
        scale = self.steps / RECIPE_STEPS
        end = round(RECIPE_END * scale)
        argv += ["--lr_scheduler_kwargs", json.dumps({"num_decay_steps": self.steps - end, "decay_type": "linear"})]
        if run.pruner != "none":
            argv += ["--pruning_start_step", str(round(RECIPE_START * scale)), "--pruning_end_step", str(end),
                     "--pruning_frequency", str(max(1, round(RECIPE_FREQUENCY * scale)))]
        return argv


def derived_recipe(run: Run, output_dir: str) -> str:
    """The run's recipe path; with ``ffn_keep_multiple_of``, a copy whose FFN group carries it, written beside
    the run's output (the recipe file itself stays as it is)."""
    path = os.path.join(RECIPES, run.recipe)
    if run.ffn_keep_multiple_of is None:
        return path
    import yaml
    from hf_prune.config_io import load_yaml

    recipe = load_yaml(path)
    groups = [group for group in recipe["pruning"].get("groups") or [] if group.get("name") == "ffn"]
    if len(groups) != 1:
        raise ValueError(f"{path}: ffn_keep_multiple_of needs exactly one pruning group named 'ffn'")
    groups[0]["keep_multiple_of"] = run.ffn_keep_multiple_of
    os.makedirs(os.path.dirname(output_dir.rstrip("/")) or ".", exist_ok=True)
    derived = output_dir.rstrip("/") + ".recipe.yaml"
    with open(derived, "w", encoding="utf-8") as handle:
        yaml.safe_dump(recipe, handle, sort_keys=False)
    return derived


def run_arguments(name: str, run: Run, output_dir: str, passthrough: List[str],
                  budget: Optional[Budget] = None) -> List[str]:
    argv = ["--model_name_or_path", run.student, "--recipe", derived_recipe(run, output_dir),
            "--output_dir", output_dir, "--overwrite_output_dir", *run.extra]  # a rerun replaces the run
    if run.scaled:
        if budget is None:
            raise SystemExit(f"run {name!r} is scaled to a budget: give --epochs and --batch")
        argv += budget.arguments(run)
    elif budget is not None:
        raise SystemExit(f"run {name!r} has the recipe's fixed one-epoch budget: --epochs/--batch are for gpu-* runs")
    if run.teacher:
        argv += ["--teacher_model_name_or_path", run.teacher]
    if run.pruner == "none":
        argv += ["--do_prune", "False"]
    return argv + passthrough


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def execute(name: str, passthrough: List[str], budget: Optional[Budget] = None) -> dict:
    import run_qa_prune

    run = RUNS[name]
    if passthrough:  # a smoke run starts from (and distils from) the smoke run of its teacher
        smoke = {path: os.path.join(RUNS_DIR, "smoke", os.path.basename(path)) for path in (DENSE, GPU_DENSE)}
        run = dataclasses.replace(run, student=smoke.get(run.student, run.student),
                                  teacher=smoke.get(run.teacher, run.teacher))
    if run.student.startswith(RUNS_DIR) and not os.path.isfile(os.path.join(run.student, "model.safetensors")):
        raise SystemExit(f"run {name!r} starts from (and distils from) {run.student}: run "
                         f"{os.path.basename(run.student)!r} first")
    output_dir = os.path.join(RUNS_DIR, "smoke" if passthrough else "", name)
    argv = run_arguments(name, run, output_dir, passthrough, budget)
    make_callback = run_qa_prune.PruningTrainerCallback
    inc_callbacks = []
    if run.pruner == "inc":
        from inc_pruning import INCPruningCallback, inc_config

        def make_callback(config):
            inc_callbacks.append(INCPruningCallback(inc_config(config)))
            return inc_callbacks[-1]

    started, started_at = time.time(), commit()
    metrics = run_qa_prune.main(argv, make_pruning_callback=make_callback)
    wall = time.time() - started
    import torch
    import transformers

    row = {
        "run": name, "pruner": PRUNER_LABELS[run.pruner],
        "pattern": metrics.get("pruning_pattern"),
        "sparsity_pruned_layers": metrics.get("sparsity_pruned_layers"),
        "sparsity_all_linear": metrics.get("sparsity_all_linear"),
        "inc_reported_sparsity": inc_callbacks[0].reported_sparsity if inc_callbacks else None,
        "exact_match": metrics.get("eval_exact_match"), "f1": metrics.get("eval_f1"),
        "train_seconds": metrics.get("train_runtime"),
        "seconds_per_step": 1.0 / metrics["train_steps_per_second"] if metrics.get("train_steps_per_second") else None,
        "wall_seconds": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "command": " ".join(["python", "benchmarks/squad_accuracy.py", name] + (["--", *passthrough] if passthrough else [])),
        "run_qa_prune_arguments": argv, "commit": started_at, "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   + (f"{torch.cuda.get_device_name()}, " if torch.cuda.is_available() else "")
                   + f"torch {torch.__version__}, transformers {transformers.__version__}",
    }
    if budget is not None:
        state = _trainer_state(output_dir)
        row.update(epochs=budget.epochs, batch=budget.batch, steps=state.get("global_step"), windows=budget.windows,
                   eval_f1_per_epoch=[entry["eval_f1"] for entry in state.get("log_history", [])
                                      if "eval_f1" in entry][:budget.epochs])  # the final score repeats the last
        if run.recipe != "dense.yaml" and row["steps"] != budget.steps and not passthrough:  # dense: fractions only
            raise SystemExit(f"run {name!r} took {row['steps']} steps, but its schedule was scaled to {budget.steps} "
                             f"({budget.windows} windows): the rescaled step counts do not describe it")
    with open(os.path.join(output_dir, ROW_NAME), "w", encoding="utf-8") as handle:
        json.dump(row, handle, indent=2)
        handle.write("\n")
    return row


def _trainer_state(output_dir: str) -> dict:
    path = os.path.join(output_dir, "trainer_state.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def gpu_table() -> str:
    """Markdown rows of the finished gpu-* runs: F1/EM, and each pruned run's relative F1 change against
    ``gpu-dense-continued`` and against the teacher ``gpu-dense``."""
    rows = {}
    for name in (n for n in RUNS if n.startswith("gpu-")):
        path = os.path.join(RUNS_DIR, name, ROW_NAME)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                rows[name] = json.load(handle)

    def relative(name: str, reference: str) -> str:
        if reference not in rows or name == reference or RUNS[name].pruner == "none" and reference != "gpu-dense":
            return "—"
        return f"{100 * (rows[name]['f1'] / rows[reference]['f1'] - 1):+.2f} %"

    lines = ["| run | pattern | sparsity (pruned layers) | EM | F1 | vs dense-continued | vs teacher | epochs | batch | "
             "steps | train s | commit | date |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| `{name}` | {row['pattern']} | {row['sparsity_pruned_layers']:.4f} | {row['exact_match']:.2f} | "
                     f"{row['f1']:.2f} | {relative(name, 'gpu-dense-continued')} | {relative(name, 'gpu-dense')} | "
                     f"{row['epochs']} | {row['batch']} | {row['steps']} | {row['train_seconds']:.0f} | "
                     f"{row['commit']} | {row['date']} |")
    return "\n".join(lines)


def table(names: List[str]) -> str:
    """Markdown rows of the finished runs, with delta F1 to the dense run, then a line naming the runs that have
    not finished (they have no row)."""
    rows = {}
    for name in (n for n in names if not RUNS[n].scaled):
        path = os.path.join(RUNS_DIR, name, ROW_NAME)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                rows[name] = json.load(handle)
    def delta(name: str, reference: str) -> str:
        if reference not in rows or name in ("dense", reference):
            return "—"
        return f"{rows[name]['f1'] - rows[reference]['f1']:+.2f}"

    lines = ["| run | pruner | pattern | target | sparsity (pruned layers) | sparsity (all Linear) | EM | F1 | "
             "ΔF1 vs teacher | ΔF1 vs dense-continued | wall time | s/step | peak RSS | commit | date |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        config = _recipe_pruning(RUNS[name])
        pattern, target = ("dense", "0") if config is None else ("+".join(config.pattern_names()), config.describe())
        lines.append(
            f"| `{name}` | {row['pruner']} | {pattern} | {target} | {row['sparsity_pruned_layers']:.4f} | "
            f"{row['sparsity_all_linear']:.4f} | {row['exact_match']:.2f} | {row['f1']:.2f} | {delta(name, 'dense')} | "
            f"{delta(name, 'dense-continued')} | "
            f"{row['wall_seconds'] / 60:.1f} min | {row['seconds_per_step']:.2f} | {row['peak_rss_mib'] / 1024:.1f} GiB | "
            f"{row['commit']} | {row['date']} |")
    unfinished = [name for name in names if name not in rows and not RUNS[name].scaled]
    if unfinished:
        lines += ["", "Not finished (no row until a run completes): " + ", ".join(f"`{n}`" for n in unfinished) + "."]
    return "\n".join(lines)


def write_results(names: List[str], path: str = RESULTS) -> None:
    """Replace the block between the table markers in RESULTS.md with the current table."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no block between {TABLE_START!r} and {TABLE_END!r} to replace")
    text = text[: start + len(TABLE_START)] + "\n" + table(names) + "\n" + text[end:]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _recipe_pruning(run: Run):
    """The run's PruningConfig as its recipe states it (None for dense)."""
    from hf_prune import PruningConfig
    from hf_prune.config_io import load_yaml

    section = load_yaml(os.path.join(RECIPES, run.recipe)).get("pruning")
    return PruningConfig.from_dict(section) if section and run.pruner != "none" else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", choices=sorted(RUNS), help="which run")
    parser.add_argument("--table", action="store_true", help="print the markdown table of finished runs")
    parser.add_argument("--write-results", action="store_true", help=f"write that table into {RESULTS}")
    parser.add_argument("--gpu-table", action="store_true", help="print the markdown table of finished gpu-* runs")
    parser.add_argument("--epochs", type=int, help="gpu-* runs: epochs over train.json")
    parser.add_argument("--batch", type=int, help="gpu-* runs: training batch size")
    parser.add_argument("--windows", type=int, default=TRAIN_WINDOWS,
                        help="gpu-* runs: training windows per epoch (only for smoke runs on a subset)")
    argv = sys.argv[1:]
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    options = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    os.chdir(ROOT)
    if options.table:
        print(table(list(RUNS)))
    elif options.write_results:
        write_results(list(RUNS))
    elif options.gpu_table:
        print(gpu_table())
    elif options.run:
        if (options.epochs is None) != (options.batch is None) or (options.epochs or 1) < 1 or (options.batch or 1) < 1:
            parser.error(f"--epochs and --batch go together, each a positive integer (got {options.epochs}, "
                         f"{options.batch})")
        budget = Budget(options.epochs, options.batch, options.windows) if options.epochs else None
        print(json.dumps(execute(options.run, passthrough, budget), indent=2))
    else:
        parser.error("name a run or give --table")


if __name__ == "__main__":
    main()
