"""Wanda (|W| x input-activation norm): scores against a hand computation, one-shot 2:4 at step 0 from calibration
batches inside the Trainer, then recovery with the mask fixed; refusals when no input was seen."""
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Trainer

from hf_prune import Pruner, PruningConfig, PruningTrainerCallback
from hf_prune.criteria import get_criterion
from tests.conftest import CausalLMDataset
from tests.test_callback import _args


def test_scores_against_hand_computation():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    model = nn.Sequential(layer)
    pruner = Pruner(model, PruningConfig(target_sparsity=0.5, pattern="1x1", criterion="wanda", schedule="oneshot",
                                         start_step=0, end_step=0, include=["0"], exclude=[]))
    inputs = [torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]]), torch.tensor([[0.0, 1.0, 2.0]])]
    model.eval()
    model(torch.full((1, 3), 100.0))                         # evaluation forwards are not counted
    model.train()
    for x in inputs:                                         # training forwards are
        model(x)
    norms = torch.tensor([(1 + 9 + 0) ** 0.5, (4 + 0 + 1) ** 0.5, (0 + 1 + 4) ** 0.5])
    torch.testing.assert_close(pruner.input_norms.norms("0"), norms)
    expected = layer.weight.detach().abs() * norms
    torch.testing.assert_close(get_criterion("wanda").element_scores(layer.weight, norms), expected)
    pruner.step(0)
    kept = pruner.masks["0"]
    threshold = expected.flatten().sort().values[2]          # the 3 lowest of 6 scores are pruned
    assert torch.equal(kept, expected > threshold)


def _tiny_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))


def test_one_shot_2_4_at_step_0_then_recovery_keeps_the_mask(tmp_path):
    model = _tiny_llama()
    config = PruningConfig(target_sparsity=0.5, pattern="2:4", criterion="wanda", schedule="oneshot", start_step=0,
                           calibration_batches=2)
    callback = PruningTrainerCallback(config)
    masks_at_start = {}

    class Snapshot(PruningTrainerCallback.__mro__[1]):   # a plain TrainerCallback
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                masks_at_start.update({k: v.clone() for k, v in callback.pruner.masks.items()})

    Trainer(model=model, args=_args(tmp_path, max_steps=4), train_dataset=CausalLMDataset(),
            callbacks=[callback, Snapshot()]).train()
    assert callback.pruner.input_norms.tokens                                  # calibration fed it
    assert not callback.pruner.input_norms._handles                           # no statistics after the last event
    assert callback.pruner.last_event_step == 0
    for name, mask in callback.pruner.masks.items():
        assert torch.equal(mask, masks_at_start[name]), name                  # recovery kept the one-shot mask
        weight = model.get_submodule(name).weight.detach()
        groups = (weight != 0).view(weight.shape[0], -1, 4).sum(-1)
        assert int(groups.max()) <= 2, name                                    # 2:4 on the trained weights
    assert "lm_head" not in callback.pruner.masks


def test_a_step_0_event_without_inputs_is_refused():
    pruner = Pruner(_tiny_llama(), PruningConfig(target_sparsity=0.5, pattern="2:4", criterion="wanda",
                                                 schedule="oneshot", start_step=0, end_step=0))
    with pytest.raises(ValueError, match="has run no forward pass yet: call pruner.calibrate"):
        pruner.step(0)


def test_activation_sums_are_saved_and_restored(tmp_path):
    model = _tiny_llama()
    pruner = Pruner(model, PruningConfig(target_sparsity=0.5, pattern="1x1", criterion="wanda", start_step=2,
                                         end_step=4, frequency=1))
    pruner.calibrate([{"input_ids": torch.randint(0, 64, (2, 8))}], max_batches=1)
    pruner.save_state(str(tmp_path))
    other = Pruner(_tiny_llama(seed=1), pruner.config)
    other.load_state(str(tmp_path))
    for name, sums in pruner.input_sums.items():
        assert torch.equal(other.input_sums[name], sums) and sums.any()
