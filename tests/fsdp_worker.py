"""Run by tests/test_fsdp.py: a Trainer with the pruning callback on a model FSDP2 or DeepSpeed ZeRO-3 shards over
2 CPU processes (gloo), or the same run on one unsharded process with the same global batch (the reference).

Every pruning event writes the whole-model pruner state (``state_dict()``, gathered from the shards) from rank 0;
the run writes what it saw of the sharding, the logged sparsity, and saves the final full model.

accelerate 1.15 turns FSDP on for GPU-type distributed states only, and silently uses DDP on CPU; the Trainer
subclass below sets the accelerate state to FSDP itself (a test-only workaround: on GPUs the Trainer's own
``fsdp``/``fsdp_config`` arguments do this).
"""
import dataclasses
import json
import os
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_prune import DistillationTrainer, PruningConfig, PruningTrainerCallback  # noqa: E402
from hf_prune.sharding import full_shape  # noqa: E402
from tests.conftest import CausalLMDataset, QADataset, best_at_evaluation, tiny_bert_qa  # noqa: E402

BERT_CONFIG = PruningConfig(target_sparsity=0.6, pattern="4x1", include=["attention"], start_step=2, end_step=6,
                            frequency=2, groups=[{"include": [r"intermediate\.dense", r"layer\.\d+\.output\.dense"],
                                                  "pattern": "2:4", "target_sparsity": 0.5, "scope": "local"}])
#: the gradient-free criteria: no scores to carry, activation statistics instead
BERT_MAGNITUDE_CONFIG = dataclasses.replace(BERT_CONFIG, criterion="magnitude",
                                            groups=[dict(BERT_CONFIG.groups[0], criterion="wanda")])
ZERO3 = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
         "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
         "gradient_clipping": "auto", "zero_allow_untested_optimizer": True}
QWEN2_CONFIG = PruningConfig(target_sparsity=0.5, pattern="head", include=["self_attn"], start_step=2, end_step=6,
                             frequency=2, groups=[{"include": ["mlp"], "pattern": "channel", "criterion": "wanda"}])


def zero3_arguments(launch: str) -> dict:
    """``"zero3"``: a persistence threshold between the tiny BERT's 32x32 attention weights (kept whole on every rank,
    "persistent", as DeepSpeed keeps a real model's small weights) and its 32x64 FFN weights (partitioned);
    ``"zero3-split"``: every parameter partitioned (as a real model's large weights are)."""
    if not launch.startswith("zero3"):
        return {}
    config = json.loads(json.dumps(ZERO3))
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0 if launch == "zero3-split" else 1500
    return {"deepspeed": config}


def tiny_qwen2(seed: int) -> Qwen2ForCausalLM:
    """A Llama-family decoder with grouped-query attention (2 query heads per key/value head) and q/k/v biases."""
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        max_position_embeddings=32))


class FSDPOnCPU:
    """Trainer mixin: the accelerate state set to FSDP2 on CPU (see the module docstring)."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        from accelerate.state import AcceleratorState, PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        for state in (AcceleratorState(), PartialState()):
            state.distributed_type = DistributedType.FSDP
        AcceleratorState().fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        self.is_fsdp_enabled = True


class RecordingCallback(PruningTrainerCallback):
    def __init__(self, config, out_dir):
        super().__init__(config)
        self.out_dir = out_dir
        self.seen = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, **kwargs)
        weight = self.pruner.modules[next(iter(self.pruner.modules))].weight
        self.seen = {"weight_type": type(weight).__name__, "sharded": self.pruner.shards.active,
                     "zero3": self.pruner.shards.zero3,
                     "local_mask_rows": [int(mask.shape[0]) for mask in self.pruner.masks.values()],
                     "full_rows": [int(full_shape(module.weight)[0]) for module in self.pruner.modules.values()]}

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if self.pruner.last_event_step == state.global_step:
            full = self.pruner.state_dict()  # every rank: a collective when sharded
            if args.process_index == 0:
                torch.save({"masks": full["masks"], "scores": full["scores"], "bias_masks": full["bias_masks"]},
                           os.path.join(self.out_dir, f"step{state.global_step}.pt"))


def main(out_dir: str, model_kind: str, launch: str, resume: str = "") -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    best = model_kind.endswith("-best")  # load_best_model_at_end, evaluated every 4 steps, best at step 4
    model_kind = model_kind.removesuffix("-best")
    best_args = dict(eval_strategy="steps", eval_steps=4, per_device_eval_batch_size=4, load_best_model_at_end=True,
                     metric_for_best_model="score", greater_is_better=True) if best else {}
    sharded = launch == "fsdp"  # "zero3": DeepSpeed; "plain": one unsharded process, the reference
    layer = "BertLayer" if model_kind == "bert" else "Qwen2DecoderLayer"
    fsdp = dict(fsdp=True, fsdp_config={"fsdp_version": 2, "state_dict_type": "FULL_STATE_DICT",
                                        "transformer_layer_cls_to_wrap": [layer]})
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=8 // world, max_steps=8,
                             learning_rate=5e-3, save_strategy="steps", save_steps=4, report_to=[], use_cpu=True,
                             ddp_backend="gloo", disable_tqdm=True, seed=11, logging_steps=2,
                             **(fsdp if sharded else {}), **zero3_arguments(launch), **best_args)
    configs = {"bert": BERT_CONFIG, "bert-magnitude": BERT_MAGNITUDE_CONFIG, "qwen2": QWEN2_CONFIG}
    callback = RecordingCallback(configs[model_kind], out_dir)
    callbacks = [callback]
    if model_kind.startswith("bert"):
        base, model = Trainer, tiny_bert_qa(seed=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        kwargs = dict(train_dataset=QADataset(64))
        if best:
            kwargs.update(eval_dataset=QADataset(16, seed=1), compute_metrics=best_at_evaluation(1))
    else:  # "qwen2": a causal LM student distilled (token-level KD) from an unsharded teacher
        base, model = DistillationTrainer, tiny_qwen2(seed=4)
        kwargs = dict(train_dataset=CausalLMDataset(64), teacher_model=tiny_qwen2(seed=5),
                      distillation_config={"hard_label_weight": 0.5})
    trainer_class = type(f"FSDPOnCPU{base.__name__}", (FSDPOnCPU, base), {}) if sharded else base
    trainer = trainer_class(model=model, args=args, callbacks=callbacks, **kwargs)
    trainer.train(resume_from_checkpoint=resume or None)
    trainer.save_model(os.path.join(out_dir, "final"))
    logged = [entry["sparsity"] for entry in trainer.state.log_history if "sparsity" in entry]
    seen = dict(callback.seen, logged_sparsity=logged, sparsity=callback.pruner.sparsity(),
                best_model_checkpoint=trainer.state.best_model_checkpoint)
    if args.process_index == 0:
        with open(os.path.join(out_dir, "seen.json"), "w") as handle:
            json.dump(seen, handle)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    # DeepSpeed leaves a native thread behind that aborts the interpreter's teardown now and then ("terminate called
    # without an active exception", after all files are written): leave without it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
