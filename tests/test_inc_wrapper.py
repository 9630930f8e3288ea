"""The INC-wrapper callback of benchmarks/ runs a few steps on a tiny model when neural-compressor is importable."""
import os
import sys

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_prune import PruningConfig, sparsity_report
from tests.conftest import QADataset, tiny_bert_qa

pytest.importorskip("neural_compressor.training", reason="neural-compressor is not installed (benchmark-only; "
                    "see benchmarks/RESULTS.md for its separate environment)")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from inc_pruning import INCPruningCallback, inc_config  # noqa: E402


def test_inc_callback_prunes_inside_the_trainer(tmp_path):
    config = PruningConfig(target_sparsity=0.5, pattern="4x1", start_step=1, end_step=4, frequency=1)
    model = tiny_bert_qa(seed=2)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=6, learning_rate=1e-3,
                             save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    callback = INCPruningCallback(inc_config(config))
    Trainer(model=model, args=args, train_dataset=QADataset(48), callbacks=[callback]).train()
    report = sparsity_report(model)
    encoder = [row for row in report.layers if "encoder" in row.name]
    sparsity = sum(r.zeros for r in encoder) / sum(r.numel for r in encoder)
    assert sparsity == pytest.approx(0.5, abs=0.05)
    # INC's "elementwise_over_matmul_gemm_conv" counts zeros over every Linear weight, as our all-Linear total
    assert callback.reported_sparsity["elementwise_over_matmul_gemm_conv"] == pytest.approx(report.linear_sparsity,
                                                                                            abs=1e-6)
    assert all(row.zeros == 0 for row in report.layers if row.name == "qa_outputs")
    assert torch.isfinite(model.qa_outputs.weight).all()
