"""QA evaluation inside the Trainer: run the model over features, then post-process and score examples.

``QuestionAnsweringMixin`` overrides ``evaluate`` and ``predict`` only (as transformers' trainer_qa.py), so
it composes with any Trainer subclass, e.g. ``DistillationTrainer``.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, Optional

from transformers import Trainer
from transformers.trainer_utils import PredictionOutput, speed_metrics

from ..distillation import DistillationTrainer

__all__ = ["QuestionAnsweringMixin", "QuestionAnsweringTrainer", "QuestionAnsweringDistillationTrainer"]


class QuestionAnsweringMixin:
    """Needs ``eval_examples`` and ``post_process_function(examples, features, logits, stage) ->
    (predictions, references)``; metrics come from the Trainer's ``compute_metrics`` on those."""

    def __init__(self, *args, eval_examples=None, post_process_function: Optional[Callable] = None,
                 model_card_writer: Optional[Callable[[], None]] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eval_examples = eval_examples
        self.post_process_function = post_process_function
        self.model_card_writer = model_card_writer

    def _run_loop(self, dataset, description: str, metric_key_prefix: str):
        compute_metrics, self.compute_metrics = self.compute_metrics, None  # metrics need examples, not features
        start = time.time()
        try:
            output = self.evaluation_loop(self.get_eval_dataloader(dataset) if metric_key_prefix == "eval"
                          else self.get_test_dataloader(dataset), description=description,
                          prediction_loss_only=False if compute_metrics else None,
                          metric_key_prefix=metric_key_prefix)
        finally:
            self.compute_metrics = compute_metrics
        batch_size = self.args.eval_batch_size * self.args.world_size
        output.metrics.update(speed_metrics(metric_key_prefix, start, num_samples=output.num_samples,
                                            num_steps=math.ceil(output.num_samples / batch_size)))
        return output, compute_metrics

    def evaluate(self, eval_dataset=None, eval_examples=None, ignore_keys=None,
                 metric_key_prefix: str = "eval") -> Dict[str, float]:
        eval_dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        eval_examples = self.eval_examples if eval_examples is None else eval_examples
        output, compute_metrics = self._run_loop(eval_dataset, "Evaluation", metric_key_prefix)
        metrics = dict(output.metrics)
        if self.post_process_function is not None and compute_metrics is not None:
            predictions = self.post_process_function(eval_examples, eval_dataset, output.predictions, "eval")
            metrics.update({f"{metric_key_prefix}_{k}": v for k, v in compute_metrics(predictions).items()})
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def predict(self, predict_dataset, predict_examples, ignore_keys=None,
                metric_key_prefix: str = "test") -> PredictionOutput:
        output, compute_metrics = self._run_loop(predict_dataset, "Prediction", metric_key_prefix)
        if self.post_process_function is None or compute_metrics is None:
            return output
        predictions = self.post_process_function(predict_examples, predict_dataset, output.predictions, "predict")
        metrics = dict(output.metrics)
        metrics.update({f"{metric_key_prefix}_{k}": v for k, v in compute_metrics(predictions).items()})
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        return PredictionOutput(predictions=predictions.predictions, label_ids=predictions.label_ids,
                                metrics=metrics)

    def create_model_card(self, *args, **kwargs) -> None:
        """``push_to_hub`` writes the model card through this hook; hf_prune's card states pattern,
        sparsity and scores, so it replaces the generic one when a writer is set."""
        if self.model_card_writer is not None:
            self.model_card_writer()
        else:
            super().create_model_card(*args, **kwargs)


class QuestionAnsweringTrainer(QuestionAnsweringMixin, Trainer):
    """``Trainer`` with SQuAD-style evaluation."""



class QuestionAnsweringDistillationTrainer(QuestionAnsweringMixin, DistillationTrainer):
    """``DistillationTrainer`` with SQuAD-style evaluation."""
