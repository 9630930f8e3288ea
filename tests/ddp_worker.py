"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: a Trainer with the pruning callback
on CPU (gloo); every rank writes its masks and scores at each pruning event, rank 0 saves the model."""
import os
import sys

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_prune import Pruner, PruningConfig, PruningTrainerCallback  # noqa: E402
from tests.conftest import QADataset, tiny_bert_qa  # noqa: E402


class RecordingCallback(PruningTrainerCallback):
    def __init__(self, config, out_dir):
        super().__init__(config)
        self.out_dir = out_dir

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if self.pruner.last_event_step == state.global_step:
            torch.save({"masks": dict(self.pruner.masks), "scores": self.pruner.scores},
                       os.path.join(self.out_dir, f"rank{args.process_index}-step{state.global_step}.pt"))


class StopAt(TrainerCallback):
    """Ends the run after ``step`` (a crash stand-in): the schedule is sized for max_steps, as in a real run."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def main(out_dir: str, max_steps: int, resume: str = "", stop_at: int = 0) -> None:
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=4, max_steps=max_steps,
                             learning_rate=5e-3, weight_decay=0.1, save_strategy="steps", save_steps=4,
                             report_to=[], use_cpu=True, ddp_backend="gloo", disable_tqdm=True, seed=11)
    config = PruningConfig(target_sparsity=0.75, pattern="4x1", start_step=2, end_step=6, frequency=2)
    model = tiny_bert_qa(seed=4)
    if os.environ.get("HF_PRUNE_TEST_LOCK"):  # fine-tune a sparse model keeping its zeros (tests/test_lock.py)
        Pruner(model, PruningConfig(target_sparsity=0.6, pattern="1x1", criterion="magnitude", start_step=0,
                                    end_step=0, frequency=1)).step(0)
        torch.save(model, os.path.join(out_dir, f"rank{args.process_index}-initial-model.pt"))
        config = PruningConfig(pattern="lock")
    callback = RecordingCallback(config, out_dir)
    callbacks = [callback] + ([StopAt(stop_at)] if stop_at else [])
    trainer = Trainer(model=model, args=args, train_dataset=QADataset(64), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume or None)
    trainer.save_model(os.path.join(out_dir, "final"))
    torch.save(trainer.model.state_dict(), os.path.join(out_dir, f"rank{args.process_index}-final-state.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank leaves while another still talks to it (a gloo abort at exit)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "",
         int(sys.argv[4]) if len(sys.argv) > 4 else 0)
