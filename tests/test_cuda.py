"""The callback and the pruner on a CUDA GPU: masks and scores live beside the weights, the masks hold after every
optimizer step under bf16 mixed precision, and the saved, reloaded model has the zeros its report states. Every
other Trainer test pins ``use_cpu=True``; these run only where a GPU exists."""
import json

import pytest
import torch
from transformers import Trainer

from hf_prune import Pruner, PruningConfig, PruningTrainerCallback, from_pretrained, to_semi_structured
from tests.conftest import QADataset, best_at_evaluation, tiny_bert_qa
from tests.test_callback import _args
from tests.test_trainer_features import BEST, _measured

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none here")


class _CheckEveryStep(PruningTrainerCallback):
    """After each optimizer step: every mask is on its weight's device and every masked weight is exactly zero."""

    def __init__(self, config: PruningConfig) -> None:
        super().__init__(config)
        self.checked_steps = []

    def on_optimizer_step(self, args, state, control, **kwargs):
        super().on_optimizer_step(args, state, control, **kwargs)
        model = kwargs["model"]
        for name, mask in self.pruner.masks.items():
            weight = model.get_submodule(name).weight
            assert mask.device == weight.device and weight.device.type == "cuda", name
            assert torch.all(weight[~mask] == 0), (state.global_step, name)
        self.checked_steps.append(state.global_step)


@pytest.mark.parametrize("pattern, sparsity", [("4x1", 0.8), ("2:4", 0.5)])
def test_bf16_gradient_criterion_masks_hold_and_the_reloaded_model_matches_its_report(tmp_path, pattern, sparsity):
    config = PruningConfig(target_sparsity=sparsity, pattern=pattern, criterion="snip_momentum", start_step=2,
                           end_step=10, frequency=2)
    callback = _CheckEveryStep(config)
    trainer = Trainer(model=tiny_bert_qa(seed=3), train_dataset=QADataset(128), callbacks=[callback],
                      args=_args(tmp_path, use_cpu=False, bf16=True, gradient_accumulation_steps=2,
                                 max_grad_norm=1.0, max_steps=14))
    trainer.train()
    assert callback.checked_steps == list(range(14))  # global_step before its increment: every step checked
    assert all(score.device.type == "cuda" for score in callback.pruner.scores.values())
    trainer.save_model()
    reloaded = from_pretrained(str(tmp_path))
    measured = _measured(reloaded, callback.pruner.masks)
    assert measured == pytest.approx(sparsity, abs=0.01)
    report = json.loads((tmp_path / "sparsity_report.json").read_text())
    assert report["sparsity_pruned_layers"] == pytest.approx(measured, abs=1e-6)


def test_load_best_model_at_end_on_gpu_returns_the_best_checkpoints_masks(tmp_path):
    config = PruningConfig(target_sparsity=0.8, pattern="4x1", start_step=2, end_step=10, frequency=2)
    callback = PruningTrainerCallback(config)
    trainer = Trainer(model=tiny_bert_qa(seed=3), train_dataset=QADataset(96), eval_dataset=QADataset(16, seed=1),
                      compute_metrics=best_at_evaluation(2), callbacks=[callback],
                      args=_args(tmp_path, use_cpu=False, **BEST))
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    measured = _measured(trainer.model, callback.pruner.masks)
    assert measured < 0.7 and callback.pruner.sparsity() == pytest.approx(measured)
    for name, mask in callback.pruner.masks.items():
        assert mask.device.type == "cuda"
        assert torch.all(trainer.model.get_submodule(name).weight[~mask] == 0), name


def test_pruned_two_four_bert_runs_on_sparse_kernels_with_the_same_outputs():
    model = tiny_bert_qa(seed=3, hidden_size=128, intermediate_size=256, num_attention_heads=4)
    Pruner(model, PruningConfig(target_sparsity=0.5, pattern="2:4", criterion="magnitude", start_step=0,
                                end_step=0)).step(0)
    model = model.half().cuda().eval()
    inputs = {name: value.unsqueeze(0).repeat(32, 1).cuda() for name, value in QADataset(1, seq_len=32)[0].items()
              if name in ("input_ids", "attention_mask")}
    with torch.no_grad():
        expected = model(**inputs).start_logits
    plan = to_semi_structured(model)
    assert len(plan.convertible) == 2 * 6  # q, k, v, attention output, intermediate, output per layer
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).start_logits, expected, atol=3e-2, rtol=3e-2)
