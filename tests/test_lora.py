"""Sparsity that survives LoRA (PEFT): the base weights are pruned by a gradient-free criterion (or locked), the
adapter's update is masked, and merge_and_unload() gives a plain model with exactly the reported zeros and the
outputs of the adapter model it came from."""
import pytest
import torch
from transformers import Trainer

from hf_prune import Pruner, PruningConfig, PruningTrainerCallback, sparsity_report
from tests.test_callback import _args
from tests.conftest import CausalLMDataset
from tests.test_wanda import _tiny_llama

peft = pytest.importorskip("peft", reason="peft is an optional extra (pip install peft)")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora(model):
    return peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=TARGETS))


def _zeros_2_4(weight):
    return int((weight != 0).view(weight.shape[0], -1, 4).sum(-1).max()) <= 2


def test_wanda_2_4_with_lora_merges_into_exactly_2_4(tmp_path):
    model = _lora(_tiny_llama())
    callback = PruningTrainerCallback(PruningConfig(target_sparsity=0.5, pattern="2:4", criterion="wanda",
                                                    schedule="oneshot", start_step=0, calibration_batches=2))
    Trainer(model=model, args=_args(tmp_path, max_steps=6, learning_rate=5e-2), train_dataset=CausalLMDataset(),
            callbacks=[callback]).train()
    names = list(callback.pruner.masks)
    assert names and all(name.endswith(".base_layer") for name in names) and len(names) == 2 * len(TARGETS)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(bool(p.abs().sum() > 0) for p in lora_b)                     # the adapters did train
    model.eval()
    batch = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        adapter_logits = model(input_ids=batch).logits
    reported = callback.pruner.sparsity()
    merged = model.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=batch).logits, adapter_logits, atol=1e-5, rtol=1e-4)
    for name in names:
        weight = merged.get_submodule(name.replace("base_model.model.", "").replace(".base_layer", "")).weight
        assert _zeros_2_4(weight), name
        assert torch.equal(weight == 0, ~callback.pruner.masks[name].cpu()), name   # the mask, exactly
    encoder = [row for row in sparsity_report(merged).layers if any(t in row.name for t in TARGETS)]
    assert sum(r.zeros for r in encoder) / sum(r.numel for r in encoder) == pytest.approx(reported)


def test_lock_keeps_a_sparse_base_through_lora_and_merge(tmp_path):
    base = _tiny_llama()
    Pruner(base, PruningConfig(target_sparsity=0.6, pattern="1x1", criterion="magnitude", start_step=0,
                               end_step=0)).step(0)
    zeros = {n: (m.weight == 0).clone() for n, m in base.named_modules() if any(n.endswith(t) for t in TARGETS)}
    model = _lora(base)
    Trainer(model=model, args=_args(tmp_path, max_steps=4, learning_rate=5e-2), train_dataset=CausalLMDataset(),
            callbacks=[PruningTrainerCallback(PruningConfig(pattern="lock"))]).train()
    merged = model.merge_and_unload()
    for name, zero in zeros.items():
        assert torch.equal(merged.get_submodule(name).weight == 0, zero), name


def test_gradient_criteria_are_refused_on_frozen_lora_bases():
    with pytest.raises(ValueError, match="LoRA's frozen base weights .* use criterion 'wanda' or 'magnitude'"):
        Pruner(_lora(_tiny_llama()), PruningConfig(target_sparsity=0.5, start_step=1, end_step=4))


def test_a_lora_student_distils_from_its_dense_teacher_and_merges_with_the_zeros(tmp_path):
    """Recovery of a sparse model with LoRA adapters and token KD (the decoder recipe): DistillationTrainer takes the
    PEFT student as the causal LM it wraps; the adapters train, the locked zeros survive the merge."""
    from hf_prune import DistillationConfig, DistillationTrainer

    teacher = _tiny_llama()
    base = _tiny_llama()
    Pruner(base, PruningConfig(target_sparsity=0.5, pattern="2:4", criterion="magnitude", start_step=0,
                               end_step=0)).step(0)
    model = _lora(base)
    trainer = DistillationTrainer(model=model, teacher_model=teacher, train_dataset=CausalLMDataset(),
                                  distillation_config=DistillationConfig(hard_label_weight=1.0),
                                  args=_args(tmp_path, max_steps=4, learning_rate=5e-2, logging_steps=2),
                                  callbacks=[PruningTrainerCallback(PruningConfig(pattern="lock"))])
    trainer.train()
    assert all(entry["loss_kd"] > 0 for entry in trainer.state.log_history if "loss_kd" in entry)
    assert any(bool(p.abs().sum() > 0) for n, p in model.named_parameters() if "lora_B" in n)
    merged = model.merge_and_unload()
    for name in TARGETS:
        for module_name, module in merged.named_modules():
            if module_name.endswith(name):
                assert _zeros_2_4(module.weight), module_name


RELOAD = r'''
import json, sys
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM
out, base, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
batch = torch.arange(24).view(2, 12) % 64
result = {}
for how in ("auto", "dense_base"):
    if how == "auto":
        model = AutoPeftModelForCausalLM.from_pretrained(out)
    else:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    with torch.no_grad():
        logits = model.eval()(input_ids=batch).logits
    merged = model.merge_and_unload()
    zeros = {n: (merged.get_submodule(n).weight == 0).tolist() for n in names}
    with torch.no_grad():
        merged_logits = merged(input_ids=batch).logits
    result[how] = {"zeros": zeros, "logits": logits.tolist(), "merged_logits": merged_logits.tolist()}
assert "hf_prune" not in sys.modules
print(json.dumps(result))
'''


def test_sft_trainer_lora_save_reloads_in_a_fresh_process_with_the_reported_zeros(tmp_path):
    """README's flow: LoRA + SFTTrainer + wanda 2:4, save_model(); a process without hf_prune reloads the folder
    with AutoPeftModelForCausalLM (and PeftModel over the dense base) and gets the zeros and logits reported."""
    import json
    import subprocess
    import sys

    import datasets
    trl = pytest.importorskip("trl", reason="TRL is an optional extra (pip install trl)")
    from tests.distillation.test_token_kd import _word_tokenizer

    _tiny_llama().save_pretrained(tmp_path / "base")
    from transformers import AutoModelForCausalLM
    model = _lora(AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")))
    callback = PruningTrainerCallback(PruningConfig(target_sparsity=0.5, pattern="2:4", criterion="wanda",
                                                    schedule="oneshot", start_step=0, scope="local",
                                                    calibration_batches=2))
    rows = CausalLMDataset()
    dataset = datasets.Dataset.from_dict({"input_ids": [rows[i]["input_ids"].tolist() for i in range(len(rows))]})
    trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(output_dir=str(tmp_path / "out"),
                                                             per_device_train_batch_size=4, max_steps=4,
                                                             save_strategy="steps", save_steps=2, report_to=[], bf16=False,
                                                             use_cpu=True, disable_tqdm=True, learning_rate=5e-2),
                             train_dataset=dataset, processing_class=_word_tokenizer(), callbacks=[callback])
    trainer.train()
    assert any(bool(p.abs().sum() > 0) for n, p in model.named_parameters() if "lora_B" in n)  # adapters trained
    trainer.save_model()
    out = tmp_path / "out"
    names = [name.replace("base_model.model.", "").replace(".base_layer", "") for name in callback.pruner.masks]
    batch = torch.arange(24).view(2, 12) % 64
    with torch.no_grad():
        expected = model.eval()(input_ids=batch).logits
    run = subprocess.run([sys.executable, "-c", RELOAD, str(out), str(tmp_path / "base"), json.dumps(names)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    report = json.loads((out / "sparsity_report.json").read_text())
    for how in ("auto", "dense_base"):
        zeros = {n: torch.tensor(z) for n, z in result[how]["zeros"].items()}
        for mask_name, name in zip(callback.pruner.masks, names):
            assert torch.equal(zeros[name], ~callback.pruner.masks[mask_name]), (how, name)  # the masks, exactly
        measured = sum(int(z.sum()) for z in zeros.values()) / sum(z.numel() for z in zeros.values())
        assert measured == pytest.approx(report["sparsity_pruned_layers"], abs=1e-6) == pytest.approx(0.5)
        torch.testing.assert_close(torch.tensor(result[how]["logits"]), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(result[how]["merged_logits"]), expected, atol=1e-4, rtol=1e-4)
    sparsity_tags = [tag for tag in trainer.model.model_tags if tag.startswith("sparsity-")]
    assert sparsity_tags == ["sparsity-0.5000"]
    card = (out / "README.md").read_text()          # SFTTrainer's own card, written with its checkpoints
    assert "hf_prune" in card and "sparsity-0.5000" in card and "sparsity-0.0000" not in card
    assert (out / "pruning_config.json").exists()


def test_a_lora_run_resumes_from_its_merged_form_checkpoint(tmp_path):
    def run(resume=None):
        model = _lora(_tiny_llama())
        callback = PruningTrainerCallback(PruningConfig(target_sparsity=0.5, pattern="2:4", criterion="wanda",
                                                        schedule="oneshot", start_step=0, calibration_batches=2))
        trainer = Trainer(model=model, args=_args(tmp_path, max_steps=4, learning_rate=5e-2, save_strategy="steps",
                                                  save_steps=2), train_dataset=CausalLMDataset(), callbacks=[callback])
        trainer.train(resume_from_checkpoint=resume)
        return model, callback

    first, first_callback = run()
    resumed, callback = run(resume=str(tmp_path / "checkpoint-2"))
    for name, mask in callback.pruner.masks.items():
        assert torch.equal(mask, first_callback.pruner.masks[name]), name    # the checkpoint's masks came back
    merged = resumed.merge_and_unload()
    for name, mask in callback.pruner.masks.items():
        weight = merged.get_submodule(name.replace("base_model.model.", "").replace(".base_layer", "")).weight
        assert torch.equal(weight == 0, ~mask), name
