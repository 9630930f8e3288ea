"""Extractive question answering: SQuAD data, post-processing, the SQuAD metrics and a QA Trainer."""
from .data import (check_question_lengths, load_qa_datasets, load_squad_file, prepare_train_features,
                   prepare_validation_features, tokenize_splits, window_length)
from .metric import compute_squad, squad_v1, squad_v2
from .postprocess import format_for_metric, postprocess_qa_predictions
from .trainer import QuestionAnsweringDistillationTrainer, QuestionAnsweringMixin, QuestionAnsweringTrainer

__all__ = [
    "QuestionAnsweringDistillationTrainer", "QuestionAnsweringMixin", "QuestionAnsweringTrainer", "compute_squad", "format_for_metric", "load_qa_datasets",
    "load_squad_file", "postprocess_qa_predictions", "prepare_train_features", "prepare_validation_features",
    "squad_v1", "squad_v2", "check_question_lengths", "tokenize_splits", "window_length",
]
