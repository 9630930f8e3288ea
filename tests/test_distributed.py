"""Two CPU processes (torchrun, gloo): identical masks and scores on both ranks at every pruning event, the
saved model equals rank 0's, and checkpoints resume across process counts: 2 -> 1 and 1 -> 2."""
import glob
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hf_prune.pruner_state import read_state

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(nproc: int, *worker_args: str, worker: str = WORKER) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", worker, *worker_args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, DS_ACCELERATOR="cpu")  # DeepSpeed (when used): CPU
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, "stderr:\n" + result.stderr[-3000:] + "\nstdout:\n" + result.stdout[-3000:]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _launch(2, str(out), "8")
    return out


def test_ranks_hold_identical_masks_and_scores_at_every_event(two_process_run):
    events = sorted(glob.glob(str(two_process_run / "rank0-step*.pt")))
    assert [os.path.basename(p) for p in events] == ["rank0-step2.pt", "rank0-step4.pt", "rank0-step6.pt"]
    for rank0_file in events:
        rank0 = torch.load(rank0_file)
        rank1 = torch.load(rank0_file.replace("rank0-", "rank1-"))
        for kind in ("masks", "scores"):
            assert rank0[kind].keys() == rank1[kind].keys()
            for name in rank0[kind]:
                assert torch.equal(rank0[kind][name], rank1[kind][name]), (rank0_file, kind, name)


def test_saved_model_equals_rank_zero(two_process_run):
    saved = load_file(str(two_process_run / "final" / "model.safetensors"))
    rank0 = torch.load(two_process_run / "rank0-final-state.pt")
    rank1 = torch.load(two_process_run / "rank1-final-state.pt")
    for key, value in saved.items():
        assert torch.equal(value, rank0[key]) and torch.equal(value, rank1[key]), key


def test_two_process_checkpoint_resumes_on_one_process(two_process_run, tmp_path):
    import shutil

    checkpoint = two_process_run / "checkpoint-4"
    saved_masks = read_state(str(checkpoint))["masks"]
    for name, keep in torch.load(two_process_run / "rank0-step4.pt")["masks"].items():
        assert torch.equal(saved_masks[name], keep), name
    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed / "checkpoint-4")
    _launch(1, str(resumed), "8", str(resumed / "checkpoint-4"))
    # one process sees other batches than two, so later masks may differ; the schedule and the zeros must hold
    final_masks = torch.load(resumed / "rank0-step6.pt")["masks"]
    state = load_file(str(resumed / "final" / "model.safetensors"))
    pruned = sum(int((~keep).sum()) for keep in final_masks.values())
    assert pruned / sum(keep.numel() for keep in final_masks.values()) == pytest.approx(0.75, abs=0.01)
    for name, keep in final_masks.items():
        assert torch.all(state[f"{name}.weight"][~keep] == 0), name


def test_one_process_checkpoint_resumes_on_two_processes(tmp_path):
    import shutil

    single = tmp_path / "single"
    _launch(1, str(single), "8", "", "4")  # stopped after step 4 of a run sized for 8
    resumed = tmp_path / "resumed"
    shutil.copytree(single / "checkpoint-4", resumed / "checkpoint-4")
    _launch(2, str(resumed), "8", str(resumed / "checkpoint-4"))
    # the resumed ranks start from the one-process masks and stay identical to each other at every later event
    assert sorted(os.path.basename(p) for p in glob.glob(str(resumed / "rank0-step*.pt"))) == ["rank0-step6.pt"]
    rank0, rank1 = torch.load(resumed / "rank0-step6.pt"), torch.load(resumed / "rank1-step6.pt")
    for kind in ("masks", "scores"):
        for name in rank0[kind]:
            assert torch.equal(rank0[kind][name], rank1[kind][name]), (kind, name)
    pruned = sum(int((~keep).sum()) for keep in rank0["masks"].values())
    assert pruned / sum(keep.numel() for keep in rank0["masks"].values()) == pytest.approx(0.75, abs=0.01)
    state = load_file(str(resumed / "final" / "model.safetensors"))
    for name, keep in rank0["masks"].items():
        assert torch.all(state[f"{name}.weight"][~keep] == 0), name
