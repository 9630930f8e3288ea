"""Pattern "lock": fine-tune a sparse checkpoint keeping its zeros exactly (AdamW + weight decay, accumulation,
resume, DDP), report the locked sparsity, refuse what cannot be locked."""
import os

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, Trainer

from hf_prune import Pruner, PruningConfig, PruningTrainerCallback
from tests.conftest import QADataset, tiny_bert_qa
from tests.test_callback import _args
from tests.test_distributed import _launch


def sparse_checkpoint(folder, pattern="1x1", sparsity=0.6, seed=3):
    """A sparse model as another tool would leave it: zeros in the encoder's Linear weights, saved."""
    model = tiny_bert_qa(seed=seed)
    Pruner(model, PruningConfig(target_sparsity=sparsity, pattern=pattern, criterion="magnitude", start_step=0,
                                end_step=0, frequency=1)).step(0)
    model.save_pretrained(folder)
    return folder


def _zeros(model):
    return {name: module.weight == 0 for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and "encoder" in name}


def test_fine_tuning_keeps_the_loaded_zeros_exactly(tmp_path):
    model = AutoModelForQuestionAnswering.from_pretrained(sparse_checkpoint(tmp_path / "sparse"))
    loaded = _zeros(model)
    before = {name: w.clone() for name, w in model.state_dict().items()}
    callback = PruningTrainerCallback(PruningConfig(pattern="lock"))
    trainer = Trainer(model=model, args=_args(tmp_path / "out", max_steps=6, weight_decay=0.1,
                                              gradient_accumulation_steps=2, learning_rate=1e-2),
                      train_dataset=QADataset(64), callbacks=[callback])
    trainer.train()
    trainer.save_model()
    reloaded = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "out"))
    for name, zeros in _zeros(reloaded).items():
        assert torch.equal(zeros, loaded[name]), name                     # the same zeros, no more, no fewer
    changed = [name for name, w in reloaded.state_dict().items() if not torch.equal(w, before[name])]
    assert any("encoder" in name for name in changed)                     # and the rest did train
    locked = sum(int(z.sum()) for z in loaded.values()) / sum(z.numel() for z in loaded.values())
    report = callback.pruner.sparsity_report()
    assert report.pruned_sparsity == pytest.approx(locked, abs=1e-6) == pytest.approx(0.6, abs=0.01)
    assert callback.pruner.config.target_sparsity == pytest.approx(locked)          # reports state the locked figure
    assert "target-sparsity-0.60" in trainer.model.model_tags
    assert {row.pattern for row in report.layers if "encoder" in row.name} == {"lock"}


def test_resume_keeps_the_lock(tmp_path):
    folder = sparse_checkpoint(tmp_path / "sparse", pattern="4x1", sparsity=0.5)

    def run(resume=None):
        model = AutoModelForQuestionAnswering.from_pretrained(folder)
        trainer = Trainer(model=model, args=_args(tmp_path / "out", max_steps=8, save_strategy="steps", save_steps=4),
                          train_dataset=QADataset(64), callbacks=[PruningTrainerCallback(PruningConfig(pattern="lock"))])
        trainer.train(resume_from_checkpoint=resume)
        return model

    full = run()
    resumed = run(str(tmp_path / "out" / "checkpoint-4"))
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-6, rtol=0)


def test_include_locks_only_the_selected_layers(tmp_path):
    model = AutoModelForQuestionAnswering.from_pretrained(sparse_checkpoint(tmp_path / "sparse"))
    pruner = Pruner(model, PruningConfig(pattern="lock", include=[r"layer\.0\."]))
    assert pruner.masks and all(".layer.0." in name for name in pruner.masks)


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="found no zero weights"):
        Pruner(tiny_bert_qa(), PruningConfig(pattern="lock"))
    model = AutoModelForQuestionAnswering.from_pretrained(sparse_checkpoint(tmp_path / "sparse", sparsity=0.6))
    with pytest.raises(ValueError, match=r"target_sparsity 0.8 was given but the selected layers hold 0.6"):
        Pruner(model, PruningConfig(pattern="lock", target_sparsity=0.8))
    with pytest.raises(ValueError, match=r"so \['schedule', 'end_step'\] do not apply"):
        PruningConfig(pattern="lock", schedule="exp", end_step=10)


def test_two_processes_keep_the_lock(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    os.environ["HF_PRUNE_TEST_LOCK"] = "1"
    try:
        _launch(2, str(out), "6")
    finally:
        del os.environ["HF_PRUNE_TEST_LOCK"]
    loaded = _zeros(torch.load(out / "rank0-initial-model.pt", weights_only=False))
    saved = AutoModelForQuestionAnswering.from_pretrained(str(out / "final"))
    for name, zeros in _zeros(saved).items():
        assert torch.equal(zeros, loaded[name]), name


def test_script_fine_tunes_a_sparse_folder_with_lock(tmp_path):
    import json

    import run_qa_prune
    from tests.qa.helpers import squad_flat_jsonl, squad_nested, tiny_model_folder
    from tests.test_run_qa_prune import FAST

    files = {"model": tiny_model_folder(str(tmp_path / "model")), "train": squad_nested(str(tmp_path / "train.json")),
             "validation": squad_flat_jsonl(str(tmp_path / "validation.jsonl"))}
    run_qa_prune.main(["--model_name_or_path", files["model"], "--train_file", files["train"],
                       "--validation_file", files["validation"], "--output_dir", str(tmp_path / "sparse"),
                       "--do_train", *FAST, "--target_sparsity", "0.5", "--pruning_start_step", "1",
                       "--pruning_end_step", "2", "--pruning_frequency", "1", "--max_steps", "3"])
    report = json.loads((tmp_path / "sparse" / "sparsity_report.json").read_text())
    assert report["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
    run_qa_prune.main(["--model_name_or_path", str(tmp_path / "sparse"), "--train_file", files["train"],
                       "--validation_file", files["validation"], "--output_dir", str(tmp_path / "locked"),
                       "--do_train", *FAST, "--pruning_pattern", "lock", "--max_steps", "3"])
    before = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "sparse"))
    after = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "locked"))
    for name, zeros in _zeros(before).items():
        assert torch.equal(_zeros(after)[name], zeros), name
    card = (tmp_path / "locked" / "README.md").read_text()
    assert "| lock | 0.50 | 0.5000 |" in card and "the zeros of the loaded model kept" in card
    assert json.loads((tmp_path / "locked" / "sparsity_report.json").read_text())["sparsity_pruned_layers"] == \
        pytest.approx(0.5, abs=0.01)
