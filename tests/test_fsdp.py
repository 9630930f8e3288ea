"""FSDP2 on two CPU processes (torchrun, gloo): the parameters really are row-sharded DTensors, the masks at every
pruning event equal those of one unsharded process on the same global batches, the saved full model holds exactly
the masked zeros at the target, and a checkpoint resumes on 2 and on 1 process(es) with the same masks (the Trainer itself resumes an FSDP checkpoint only under
FSDP: the one-process resume is FSDP2 on a one-rank mesh)."""
import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from hf_prune.launch_modes import check_sharded_trainer_args
from hf_prune.pruner_state import read_state
from hf_prune.sharding import RowShard, WeightShards
from tests.test_distributed import _launch

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fsdp_worker.py")
EVENTS = (2, 4, 6)


def _run(tmp_path_factory, name, nproc, model_kind, launch="fsdp", *resume):
    out = tmp_path_factory.mktemp(name) if not isinstance(tmp_path_factory, os.PathLike) else tmp_path_factory
    _launch(nproc, str(out), model_kind, launch, *resume, worker=WORKER)
    return out


@pytest.fixture(scope="module")
def bert_fsdp(tmp_path_factory):
    return _run(tmp_path_factory, "bert_fsdp", 2, "bert")


@pytest.fixture(scope="module")
def bert_single(tmp_path_factory):
    return _run(tmp_path_factory, "bert_single", 1, "bert", "plain")


def _assert_same_masks(sharded, single, steps=EVENTS):
    for step in steps:
        got, expected = torch.load(sharded / f"step{step}.pt"), torch.load(single / f"step{step}.pt")
        for kind in ("masks", "bias_masks"):
            assert got[kind].keys() == expected[kind].keys()
            for name in expected[kind]:
                assert torch.equal(got[kind][name], expected[kind][name]), (step, kind, name)
        for name in expected["scores"]:  # gradients reduce in another order: equal up to float rounding
            torch.testing.assert_close(got["scores"][name], expected["scores"][name], rtol=1e-4, atol=1e-7)


def test_parameters_are_row_sharded_dtensors(bert_fsdp):
    seen = json.loads((bert_fsdp / "seen.json").read_text())
    assert seen["weight_type"] == "DTensor" and seen["sharded"]
    assert seen["local_mask_rows"] == [rows // 2 for rows in seen["full_rows"]]


def test_masks_equal_an_unsharded_run_and_the_saved_model_holds_them(bert_fsdp, bert_single):
    _assert_same_masks(bert_fsdp, bert_single)
    masks = torch.load(bert_fsdp / "step6.pt")["masks"]
    saved = load_file(str(bert_fsdp / "final" / "model.safetensors"))
    attention = [name for name in masks if "attention" in name]
    ffn = [name for name in masks if name not in attention]
    for names, target in ((attention, 0.6), (ffn, 0.5)):  # 4x1 global, 2:4 local
        zeros = sum(int((saved[f"{name}.weight"] == 0).sum()) for name in names)
        masked = sum(int((~masks[name]).sum()) for name in names)
        assert zeros == masked and masked / sum(masks[name].numel() for name in names) == pytest.approx(target, abs=2e-3)
        for name in names:
            assert torch.all(saved[f"{name}.weight"][~masks[name]] == 0), name
    checkpoint_masks = read_state(str(bert_fsdp / "checkpoint-4"))["masks"]
    for name, keep in torch.load(bert_fsdp / "step4.pt")["masks"].items():  # whole masks, as an unsharded run saves
        assert torch.equal(checkpoint_masks[name], keep), name
    report = json.loads((bert_fsdp / "sparsity_report.json").read_text())
    sharded, single = (json.loads((run / "seen.json").read_text()) for run in (bert_fsdp, bert_single))
    assert report["sparsity_pruned_layers"] == pytest.approx(sharded["sparsity"], abs=1e-6)
    assert sharded["logged_sparsity"] == single["logged_sparsity"]  # all-reduced, not one rank's shard


@pytest.mark.parametrize("nproc", [2, 1])
def test_checkpoint_resumes_with_the_same_masks(bert_fsdp, tmp_path, nproc):
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(bert_fsdp / "checkpoint-4", checkpoint)
    _run(tmp_path, None, nproc, "bert", "fsdp", str(checkpoint))  # 1 process: FSDP2 on a 1-rank mesh
    _assert_same_masks(tmp_path, bert_fsdp, steps=(6,))
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    for name, keep in torch.load(tmp_path / "step6.pt")["masks"].items():
        assert torch.all(saved[f"{name}.weight"][~keep] == 0), name


@pytest.fixture(scope="module")
def qwen2_single(tmp_path_factory):
    return _run(tmp_path_factory, "qwen2_single", 1, "qwen2", "plain")


def test_decoder_heads_channels_and_distillation_match_an_unsharded_run(tmp_path_factory, qwen2_single):
    """Qwen2 (grouped-query attention, q/k/v biases): head units' partial column sums reduced across ranks,
    channel units ranked by wanda (input norms summed over ranks), bias masks, and DistillationTrainer's token KD
    from an unsharded teacher."""
    sharded = _run(tmp_path_factory, "qwen2_fsdp", 2, "qwen2")
    _assert_same_masks(sharded, qwen2_single)
    assert torch.load(sharded / "step6.pt")["bias_masks"], "q/k/v biases are masked with their heads"
    assert json.loads((sharded / "seen.json").read_text())["sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize("launch", ["fsdp", "zero3-split"])
def test_load_best_model_at_end_returns_the_best_checkpoint_with_its_masks(tmp_path, launch):
    """The best checkpoint is the mid-schedule one (step 4): the saved final model holds exactly its masks' zeros,
    and the sparsity reported at the end is that checkpoint's, not the last event's."""
    if launch.startswith("zero3"):
        _require_deepspeed()
    _run(tmp_path, None, 2, "bert-best", launch)
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["best_model_checkpoint"].endswith("checkpoint-4")
    at_best, at_end = torch.load(tmp_path / "step4.pt")["masks"], torch.load(tmp_path / "step6.pt")["masks"]
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    for name, keep in at_best.items():
        assert torch.equal(saved[f"{name}.weight"] != 0, keep), name
    pruned = sum(int((~keep).sum()) for keep in at_best.values())
    assert pruned < sum(int((~keep).sum()) for keep in at_end.values())
    assert seen["sparsity"] == pytest.approx(pruned / sum(keep.numel() for keep in at_best.values()))


def test_a_block_across_a_shard_boundary_is_refused():
    shards = WeightShards({})
    shards.shards["layer.0.attention.self.query"] = RowShard(None, 0, (0, 6), (6, 6), 12)
    with pytest.raises(ValueError, match=r"query: sharding splits its 12 rows into shards of \[6, 6\] rows, and a "
                                         r"unit of pattern '4x1' spans 4 rows"):
        shards.check_rows("layer.0.attention.self.query", 4, "a unit of pattern '4x1'")
    shards.check_rows("layer.0.attention.self.query", 2, "a unit of pattern '2x1'")  # 6 = 3 blocks of 2 rows


@pytest.mark.parametrize("strategy", ["every_save", "checkpoint", "all_checkpoints"])
def test_pushing_checkpoints_under_fsdp2_is_refused(strategy):
    with pytest.raises(ValueError, match=f"hub_strategy={strategy!r} under FSDP2 or ZeRO-3.*use hub_strategy='end'"):
        check_sharded_trainer_args(SimpleNamespace(push_to_hub=True, hub_strategy=strategy))
    check_sharded_trainer_args(SimpleNamespace(push_to_hub=True, hub_strategy="end"))


# ---- DeepSpeed ZeRO-3 (optional extra: pip install -e ".[deepspeed]"), on CPU through DS_ACCELERATOR=cpu ----------
def _require_deepspeed():
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (optional extra: pip install -e '.[deepspeed]')")


@pytest.fixture(scope="module")
def magnitude_single(tmp_path_factory):
    return _run(tmp_path_factory, "magnitude_single", 1, "bert-magnitude", "plain")


@pytest.mark.parametrize("launch", ["zero3", "zero3-split"])
def test_zero3_masks_equal_an_unsharded_run_and_the_saved_model_holds_them(magnitude_single, tmp_path, launch):
    """``zero3``: the attention weights persistent (whole on every rank: the whole copy, the partition and the fp32
    master are masked) and the FFN weights partitioned; ``zero3-split``: every weight partitioned into rows."""
    _require_deepspeed()
    _run(tmp_path, None, 2, "bert-magnitude", launch)
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["zero3"] and seen["sharded"]
    whole = [local == full for local, full in zip(seen["local_mask_rows"], seen["full_rows"])]
    assert any(whole) == (launch == "zero3") and not all(whole)
    _assert_same_masks(tmp_path, magnitude_single)
    single = json.loads((magnitude_single / "seen.json").read_text())
    assert seen["logged_sparsity"] == single["logged_sparsity"]  # whole and split layers each counted once
    masks = torch.load(tmp_path / "step6.pt")["masks"]
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert sum(int((saved[f"{name}.weight"] == 0).sum()) for name in masks) == sum(int((~keep).sum()) for keep in
                                                                                 masks.values())
    for name, keep in masks.items():
        assert torch.all(saved[f"{name}.weight"][~keep] == 0), name
    if launch == "zero3-split":  # and its checkpoint resumes on 2 processes with the same masks
        resumed = tmp_path / "resumed"
        shutil.copytree(tmp_path / "checkpoint-4", resumed / "checkpoint-4")
        _run(resumed, None, 2, "bert-magnitude", launch, str(resumed / "checkpoint-4"))
        _assert_same_masks(resumed, magnitude_single, steps=(6,))


def test_zero3_decoder_heads_channels_and_distillation_match_an_unsharded_run(tmp_path_factory, qwen2_single):
    """Qwen2 under ZeRO-3 partitions: heads by snip-momentum (gradient scores' column partial sums reduced),
    channels by wanda, q/k/v bias masks, DistillationTrainer's token KD from an unsharded teacher."""
    _require_deepspeed()
    sharded = _run(tmp_path_factory, "qwen2_zero3", 2, "qwen2", "zero3-split")
    assert json.loads((sharded / "seen.json").read_text())["sharded"]
    _assert_same_masks(sharded, qwen2_single)


@pytest.mark.parametrize("launch", ["zero3", "zero3-split"])
def test_zero3_gradient_criteria_match_an_unsharded_run(bert_single, tmp_path, launch):
    """snip_momentum under ZeRO-3: scored inside DeepSpeed's step on its reduced gradient partitions (and on the
    gathered gradient of a persistent weight), unscaled and clipped as the Trainer clips: the same scores and
    masks as one unsharded process."""
    _require_deepspeed()
    _run(tmp_path, None, 2, "bert", launch)
    assert json.loads((tmp_path / "seen.json").read_text())["zero3"]
    _assert_same_masks(tmp_path, bert_single)
