import json

import pytest
import torch
from torch import nn

from hf_prune import Pruner, PruningConfig
from tests.conftest import ToyMLP, tiny_bert_qa


def _backward(model, seed=0):
    torch.manual_seed(seed)
    model.zero_grad()
    model(torch.randn(8, 16)).pow(2).mean().backward()


def test_default_selection_skips_task_head():
    model = tiny_bert_qa()
    pruner = Pruner(model, PruningConfig(end_step=10))
    assert "qa_outputs" not in pruner.masks
    assert len(pruner.masks) == 2 * 6  # q, k, v, attention out, intermediate, output per layer
    assert all(name.startswith("bert.encoder.layer.") for name in pruner.masks)


def test_snip_momentum_scores_by_hand():
    model = nn.Sequential(nn.Linear(2, 4, bias=False))
    pruner = Pruner(model, PruningConfig(pattern="2x1", block_reduce="sum", momentum=0.5, end_step=10,
                                         exclude=[]))
    weight = model[0].weight
    with torch.no_grad():
        weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.5], [0.0, 3.0], [-1.0, 1.0]]))
    grads = [torch.tensor([[1.0, 1.0], [1.0, 2.0], [5.0, -1.0], [1.0, 1.0]]),
             torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, -4.0]])]
    expected = torch.zeros(2, 2)
    for grad in grads:
        weight.grad = grad.clone()
        pruner.update_scores()
        snip = (weight.detach() * grad).abs().view(2, 2, 2, 1).sum(dim=(1, 3))
        expected = 0.5 * expected + snip
    # by hand: step 1 |W*g| = [[1,1],[2,1],[0,3],[1,1]] -> 2x1 blocks [[3,2],[1,4]];
    # step 2 |W*g| = [[2,0],[0,0],[0,3],[0,4]] -> [[2,0],[0,7]]; 0.5 * step 1 + step 2:
    assert torch.equal(expected, torch.tensor([[3.5, 1.0], [0.5, 9.0]]))
    assert torch.equal(pruner.scores["0"], expected)


def test_non_finite_gradients_leave_scores_unchanged():
    model = nn.Sequential(nn.Linear(4, 4))
    pruner = Pruner(model, PruningConfig(pattern="1x1", end_step=10, exclude=[]))
    model[0].weight.grad = torch.ones(4, 4)
    pruner.update_scores()
    before = pruner.scores["0"].clone()
    model[0].weight.grad = torch.full((4, 4), float("inf"))
    pruner.update_scores()
    assert torch.equal(pruner.scores["0"], before)


@pytest.mark.parametrize("pattern", ["4x1", "1x4", "2x2", "1x1"])
@pytest.mark.parametrize("scope", ["global", "local"])
def test_one_shot_reaches_target_with_block_structure(pattern, scope):
    model = ToyMLP()
    config = PruningConfig(target_sparsity=0.75, pattern=pattern, scope=scope, start_step=1, end_step=1,
                           exclude=[r"layers\.2"])
    pruner = Pruner(model, config)
    _backward(model)
    pruner.update_scores()
    assert pruner.step(1)
    assert pruner.sparsity() == pytest.approx(0.75, abs=1e-9)
    rows, cols = map(int, pattern.split("x"))
    for name, mask in pruner.masks.items():
        weight = model.get_submodule(name).weight
        assert torch.all(weight[~mask] == 0)
        blocks = mask.view(mask.shape[0] // rows, rows, mask.shape[1] // cols, cols).sum(dim=(1, 3))
        assert set(blocks.unique().tolist()) <= {0, rows * cols}
        if scope == "local":
            assert (~mask).float().mean().item() == pytest.approx(0.75)


def test_global_prunes_lowest_scores_across_layers():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(10.0)
    config = PruningConfig(target_sparsity=0.5, pattern="1x1", criterion="magnitude", start_step=0, end_step=0,
                           exclude=[], max_sparsity_per_layer=1.0)
    pruner = Pruner(model, config)
    pruner.step(0)
    assert torch.all(model[0].weight == 0) and torch.all(model[1].weight == 10)


def test_max_and_min_per_layer_bound_global_ranking():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(10.0)
    config = PruningConfig(target_sparsity=0.5, pattern="1x1", criterion="magnitude", start_step=0, end_step=0,
                           exclude=[], min_sparsity_per_layer=0.25, max_sparsity_per_layer=0.75)
    pruner = Pruner(model, config)
    pruner.step(0)
    sparsity = {name: (~mask).float().mean().item() for name, mask in pruner.masks.items()}
    assert sparsity == {"0": 0.75, "1": 0.25}
    assert pruner.sparsity() == 0.5


def test_groups_give_each_module_its_own_pattern():
    model = tiny_bert_qa()
    config = PruningConfig(target_sparsity=0.8, pattern="4x1", start_step=1, end_step=1,
                           groups=[{"include": [r"intermediate\.dense", r"layer\.\d+\.output\.dense"],
                                    "pattern": "2:4", "target_sparsity": 0.5, "name": "ffn"}])
    pruner = Pruner(model, config)
    assert [g.config.name for g in pruner.groups] == ["ffn", "default"]
    model(input_ids=torch.randint(0, 96, (2, 12)), start_positions=torch.tensor([1, 2]),
          end_positions=torch.tensor([3, 4])).loss.backward()
    pruner.update_scores()
    pruner.step(1)
    sparsity = pruner.group_sparsity()
    assert sparsity["ffn"] == pytest.approx(0.5) and sparsity["default"] == pytest.approx(0.8, abs=1e-3)
    mask = pruner.masks["bert.encoder.layer.0.intermediate.dense"]
    assert torch.all(mask.view(mask.shape[0], -1, 4).sum(-1) == 2)


def test_gradual_semi_structured_prunes_whole_groups():
    model = ToyMLP()
    pruner = Pruner(model, PruningConfig(target_sparsity=0.5, pattern="2:4", start_step=1, end_step=3,
                                         frequency=1, schedule="linear", exclude=[r"layers\.2"]))
    _backward(model)
    pruner.update_scores()
    pruner.step(1)  # progress 1/3: a third of the groups become 2:4
    assert pruner.sparsity() == pytest.approx(0.5 / 3, abs=0.01)
    for mask in pruner.masks.values():
        assert set(mask.view(mask.shape[0], -1, 4).sum(-1).unique().tolist()) <= {2, 4}
    pruner.step(3)
    assert pruner.sparsity() == 0.5


def test_ties_are_deterministic():
    def masks():
        model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
        with torch.no_grad():
            for layer in model:
                layer.weight.fill_(1.0)
        pruner = Pruner(model, PruningConfig(target_sparsity=0.5, pattern="4x1", criterion="magnitude",
                                             start_step=0, end_step=0, exclude=[],
                                             max_sparsity_per_layer=1.0))
        pruner.step(0)
        return pruner.masks
    first, second = masks(), masks()
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert (~first["0"]).sum() == 64  # ties favour the earlier layer


def test_state_round_trip(tmp_path):
    model = ToyMLP()
    config = PruningConfig(target_sparsity=0.5, pattern="4x1", start_step=1, end_step=3, frequency=1,
                           exclude=[r"layers\.2"])
    pruner = Pruner(model, config)
    _backward(model)
    pruner.update_scores()
    pruner.step(1)
    pruner.save_state(str(tmp_path))
    restored = Pruner(ToyMLP(seed=1), config)
    restored.load_state(str(tmp_path))
    assert restored.last_event_step == 1
    for name in pruner.masks:
        assert torch.equal(restored.masks[name], pruner.masks[name])
        assert torch.equal(restored.scores[name], pruner.scores[name])
    in_memory = Pruner(ToyMLP(seed=2), config)
    in_memory.load_state_dict(pruner.state_dict())
    assert all(torch.equal(in_memory.masks[n], pruner.masks[n]) for n in pruner.masks)
    assert all(torch.equal(in_memory.scores[n], pruner.scores[n]) for n in pruner.masks)


def test_masks_are_saved_as_bits_and_format_1_states_still_resume(tmp_path):
    from safetensors.torch import load_file, save_file

    from hf_prune.pruner_state import STATE_FORMAT

    config = PruningConfig(target_sparsity=0.5, pattern="2:4", start_step=1, end_step=1, exclude=[])
    model = ToyMLP(sizes=(16, 32, 16, 8))
    pruner = Pruner(model, config)
    _backward(model)
    pruner.update_scores()
    pruner.step(1)
    path = pruner.save_state(str(tmp_path))
    saved = load_file(path)
    assert all(saved[f"mask.{name}"].dtype == torch.uint8 and saved[f"mask.{name}"].numel() * 8 == mask.numel()
               for name, mask in pruner.masks.items())
    assert STATE_FORMAT == 2
    restored = Pruner(ToyMLP(seed=3, sizes=(16, 32, 16, 8)), config)
    restored.load_state(str(tmp_path))
    assert all(torch.equal(restored.masks[n], pruner.masks[n]) for n in pruner.masks)
    # the format every earlier release wrote: whole bool masks, no "format" in the metadata
    state = pruner.state_dict()
    old = {f"mask.{name}": mask for name, mask in state["masks"].items()}
    save_file(old, path, metadata={"last_event_step": "1", "config": json.dumps(state["config"])})
    from_old = Pruner(ToyMLP(seed=4, sizes=(16, 32, 16, 8)), config)
    from_old.load_state(str(tmp_path))
    assert all(torch.equal(from_old.masks[n], pruner.masks[n]) for n in pruner.masks)
    assert from_old.last_event_step == 1


def test_scores_are_dropped_after_the_last_event(tmp_path):
    """A finished schedule keeps masks only, in memory and on disk; a state saved with scores (before scores were
    dropped) still resumes, its scores ignored, and a mid-schedule state gives a finished pruner its scores back."""
    config = PruningConfig(target_sparsity=0.5, pattern="4x1", start_step=1, end_step=2, frequency=1,
                           exclude=[r"layers\.2"])
    model = ToyMLP()
    pruner = Pruner(model, config)
    _backward(model)
    pruner.update_scores()
    pruner.step(1)
    mid_schedule = pruner.state_dict()
    assert set(mid_schedule["scores"]) == set(pruner.masks)
    pruner.update_scores()
    pruner.step(2)
    assert pruner.schedule_finished and pruner.scores == {}
    pruner.update_scores()  # nothing left to score: a no-op, not an error
    finished = pruner.state_dict()
    assert finished["scores"] == {}
    old_format = dict(finished, scores=mid_schedule["scores"])
    restored = Pruner(ToyMLP(seed=1), config)
    restored.load_state_dict(old_format)
    assert restored.scores == {} and all(torch.equal(restored.masks[n], pruner.masks[n]) for n in pruner.masks)
    restored.load_state_dict(mid_schedule)
    assert restored.last_event_step == 1
    assert all(torch.equal(restored.scores[n], mid_schedule["scores"][n]) for n in pruner.masks)


def test_state_for_another_model_is_refused():
    config = PruningConfig(end_step=1, exclude=[])
    state = Pruner(ToyMLP(), config).state_dict()
    other = Pruner(ToyMLP(sizes=(16, 32, 4)), config)
    with pytest.raises(ValueError, match="missing|shape"):
        other.load_state_dict(state)


def test_masked_weights_stay_zero_through_adamw():
    model = ToyMLP()
    pruner = Pruner(model, PruningConfig(target_sparsity=0.6, pattern="4x1", start_step=1, end_step=1,
                                         exclude=[r"layers\.2"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    for step in range(1, 6):
        _backward(model, seed=step)
        pruner.update_scores()
        optimizer.step()
        pruner.apply_masks()
        pruner.step(step)
        for name, mask in pruner.masks.items():
            assert torch.all(model.get_submodule(name).weight[~mask] == 0)


def test_bad_model_input():
    with pytest.raises(ValueError, match=r"include pattern 'decoder' \(group 'default'\) matches no nn.Linear"):
        Pruner(ToyMLP(), PruningConfig(end_step=1, include=["decoder"]))
    with pytest.raises(ValueError, match=r"layer 'layers.2' has weight shape \(4, 16\)"):
        Pruner(ToyMLP(sizes=(16, 32, 16, 4)), PruningConfig(pattern="8x1", end_step=1, exclude=[]))
    with pytest.raises(ValueError, match="end_step is unset"):
        Pruner(ToyMLP(), PruningConfig())
    with pytest.raises(ValueError, match="selects no nn.Linear"):
        Pruner(ToyMLP(), PruningConfig(end_step=1, include=["layers"], exclude=["layers"]))
    with pytest.raises(ValueError, match="no nn.Linear module"):
        Pruner(nn.Sequential(nn.ReLU()), PruningConfig(end_step=1))


@pytest.mark.parametrize("edit, message", [
    (lambda tensors, meta: tensors.update({k: torch.full_like(v, float("nan")) for k, v in tensors.items()
                                           if k.startswith("score.")}), "NaN or infinite"),
    (lambda tensors, meta: tensors.update({k: torch.full(v.shape, 0.5) for k, v in tensors.items()
                                           if k.startswith("mask.")}), "packed bits"),
    (lambda tensors, meta: (meta.pop("format"), tensors.update(  # format 1: whole masks
        {f"mask.{name}": torch.full(shape, 0.5) for name, shape in json.loads(meta["mask_shapes"]).items()})),
     "values other than 0 and 1"),
    (lambda tensors, meta: meta.update(format="3"), "newer than this hf_prune reads"),
    (lambda tensors, meta: meta.update(last_event_step="-7"), "last_event_step must be a non-negative integer"),
    (lambda tensors, meta: meta.update(last_event_step="1e9"), "last_event_step must be a non-negative integer"),
])
def test_crafted_pruner_states_are_refused_naming_the_file(tmp_path, edit, message):
    """Issues 25 (3) and 26 (9): a checkpoint's pruner state is validated before it is used."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    from hf_prune.pruner_state import read_state

    pruner = Pruner(tiny_bert_qa(seed=1), PruningConfig(target_sparsity=0.5, pattern="4x1", start_step=1, end_step=2))
    path = pruner.save_state(str(tmp_path))
    tensors = load_file(path)
    with safe_open(path, framework="pt") as handle:
        meta = dict(handle.metadata())
    edit(tensors, meta)
    save_file(tensors, path, metadata=meta)
    with pytest.raises(ValueError, match=message) as error:
        read_state(str(tmp_path))
    assert "pruner_state.safetensors" in str(error.value)
    open(path, "wb").write(b"\x00" * 10)
    with pytest.raises(ValueError, match="is not a readable pruner state"):
        read_state(str(tmp_path))
