"""The seed's budget on one GPU (issue 30): the teacher, then four runs from it side by side, within a deadline.

INC's published SQuAD figures come from ten epochs of pruning with distillation from a fine-tuned dense model. This
script runs that budget with ``benchmarks/squad_accuracy.py``'s ``gpu-*`` runs on the offline split: ``gpu-dense``
(the teacher, ``--teacher-epochs`` from the pretrained model, scored after every epoch), then ``gpu-dense-continued``,
``gpu-4x1-kd``, ``gpu-2-4-kd`` and ``gpu-slim-kd`` from it, all four at once on the same GPU (the model is small: one
run leaves the GPU mostly idle). The four runs get ``--epochs`` when the teacher's measured seconds per step say
they fit in what is left of ``--deadline``, else the most whole epochs that fit (stated in the summary)::

    python benchmarks/squad_gpu_budget.py --deadline 540 --out /tmp/rows

Each finished run's ``benchmark.json`` and log are copied to ``--out``; ``squad_accuracy.py --gpu-table`` makes the
RESULTS rows from the rows put back into ``benchmarks/runs/``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from squad_accuracy import RUNS_DIR, ROW_NAME, TRAIN_WINDOWS  # noqa: E402

STUDENTS = ("gpu-dense-continued", "gpu-4x1-kd", "gpu-2-4-kd", "gpu-slim-kd")
#: a student's seconds per step over the teacher's, assumed before any student has run: the teacher's forward pass
#: (~+30 %), the pruning callback (~+20 %) and four processes taking turns on one GPU
STUDENT_SLOWDOWN = 2.5
#: seconds a run spends outside its training steps: loading, tokenizing (cached after the teacher), scoring, saving
RUN_OVERHEAD = 75.0


def launch(name: str, epochs: int, batch: int, out: str, threads: int, passthrough,
           windows: int = TRAIN_WINDOWS) -> subprocess.Popen:
    command = [sys.executable, os.path.join("benchmarks", "squad_accuracy.py"), name, "--epochs", str(epochs),
               "--batch", str(batch), "--windows", str(windows), *(["--", *passthrough] if passthrough else [])]
    stale = os.path.join(ROOT, RUNS_DIR, "smoke" if passthrough else "", name, ROW_NAME)
    if os.path.exists(stale):
        os.remove(stale)  # an earlier run's row must not stand for this one
    log = open(os.path.join(out, f"{name}.log"), "w", encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def collect(name: str, out: str, smoke: bool) -> dict:
    path = os.path.join(ROOT, RUNS_DIR, "smoke" if smoke else "", name, ROW_NAME)
    if not os.path.isfile(path):
        return {}
    shutil.copy(path, os.path.join(out, f"{name}.json"))
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _train_windows(row: dict) -> int:
    folder = os.path.join(ROOT, os.path.dirname(row["run_qa_prune_arguments"][
        row["run_qa_prune_arguments"].index("--output_dir") + 1].rstrip("/")), "gpu-dense")
    with open(os.path.join(folder, "train_results.json"), encoding="utf-8") as handle:
        return int(json.load(handle)["train_samples"])


def wait(processes: dict, deadline: float) -> dict:
    """Exit status of each process; one still running at the deadline is killed (status None)."""
    status = {}
    for name, process in processes.items():
        try:
            status[name] = process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            status[name] = None
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, default=540, help="seconds from start for everything")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="the students' epochs when they fit")
    parser.add_argument("--student-epochs", type=int, help="the students' epochs, whatever the estimate says")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", required=True, help="folder for the rows and logs")
    options, passthrough = parser.parse_known_args()
    passthrough = passthrough[1:] if passthrough[:1] == ["--"] else passthrough
    os.makedirs(options.out, exist_ok=True)
    started = time.time()
    deadline = started + options.deadline
    summary = {"deadline_s": options.deadline, "batch": options.batch, "teacher_epochs": options.teacher_epochs}

    teacher = launch("gpu-dense", options.teacher_epochs, options.batch, options.out, 16, passthrough)
    summary["teacher_status"] = wait({"gpu-dense": teacher}, deadline - 60)["gpu-dense"]
    row = collect("gpu-dense", options.out, bool(passthrough))
    summary["teacher_seconds"] = time.time() - started
    if not row:
        summary["stopped"] = "the teacher did not finish"
    else:
        windows = _train_windows(row)  # the teacher's, which a smoke run's subset changes
        steps_per_epoch = math.ceil(windows / options.batch)
        estimate = row["seconds_per_step"] * STUDENT_SLOWDOWN * steps_per_epoch  # a student epoch, in seconds
        left = deadline - time.time() - RUN_OVERHEAD
        epochs = options.student_epochs or min(options.epochs, int(left // estimate))
        summary.update(teacher_seconds_per_step=row["seconds_per_step"], student_epoch_estimate_s=estimate,
                       student_epochs=epochs)
        if epochs >= 1:
            students = {name: launch(name, epochs, options.batch, options.out, 3, passthrough, windows)
                        for name in STUDENTS}
            summary["student_status"] = wait(students, deadline)
            summary["student_rows"] = {name: bool(collect(name, options.out, bool(passthrough))) for name in STUDENTS}
        else:
            summary["stopped"] = f"not one student epoch fits in the {left:.0f} s left"
    summary["wall_seconds"] = time.time() - started
    with open(os.path.join(options.out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
