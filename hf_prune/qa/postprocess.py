"""Start/end logits -> answer text. numpy only, no model, so it is tested on hand-made logits."""
from __future__ import annotations

import collections
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["postprocess_qa_predictions", "format_for_metric"]


def _best_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: Sequence, n_best_size: int,
                max_answer_length: int, context: str) -> List[dict]:
    """Candidate spans of one feature: the top start and end indexes, combined where the span lies in the
    context, ends after it starts and is at most ``max_answer_length`` tokens long."""
    starts = np.argsort(start_logits)[-1: -n_best_size - 1: -1]
    ends = np.argsort(end_logits)[-1: -n_best_size - 1: -1]
    spans = []
    for start in starts:
        for end in ends:
            if start >= len(offsets) or end >= len(offsets) or offsets[start] is None or offsets[end] is None:
                continue
            if end < start or end - start + 1 > max_answer_length:
                continue
            begin, finish = offsets[start][0], offsets[end][1]
            spans.append({"text": context[begin:finish], "offsets": (int(begin), int(finish)),
                          "score": float(start_logits[start] + end_logits[end]),
                          "start_logit": float(start_logits[start]), "end_logit": float(end_logits[end])})
    return spans


def postprocess_qa_predictions(
    examples, features, predictions: Tuple[np.ndarray, np.ndarray], version_2_with_negative: bool = False,
    n_best_size: int = 20, max_answer_length: int = 30, null_score_diff_threshold: float = 0.0,
    output_dir: Optional[str] = None, prefix: Optional[str] = None,
) -> Dict[str, str]:
    """The best answer text per example id, searching every feature (window) of the example.

    ``features`` needs ``example_id`` and an ``offset_mapping`` with ``None`` outside the context. For
    SQuAD v2.0 the empty answer wins when the null score (CLS start + end, minimum over the features)
    beats the best span by more than ``null_score_diff_threshold``. With ``output_dir``, writes
    ``{prefix_}predictions.json`` and ``{prefix_}nbest_predictions.json`` (and null odds for v2.0).
    """
    all_start, all_end = predictions
    if len(all_start) != len(features["example_id"]):
        raise ValueError(f"got {len(all_start)} predictions for {len(features['example_id'])} features")
    features_by_example = collections.defaultdict(list)
    for index, example_id in enumerate(features["example_id"]):
        features_by_example[example_id].append(index)
    offsets_all = features["offset_mapping"]
    answers, nbest_json, null_odds = collections.OrderedDict(), collections.OrderedDict(), collections.OrderedDict()
    for example in examples:
        spans, null_score = [], None
        for index in features_by_example[example["id"]]:
            start_logits, end_logits = np.asarray(all_start[index]), np.asarray(all_end[index])
            feature_null = float(start_logits[0] + end_logits[0])
            null_score = feature_null if null_score is None or feature_null < null_score else null_score
            spans += _best_spans(start_logits, end_logits, offsets_all[index], n_best_size, max_answer_length,
                                 example["context"])
        spans = sorted(spans, key=lambda span: span["score"], reverse=True)[:n_best_size]
        if version_2_with_negative and null_score is not None:
            spans.append({"text": "", "offsets": (0, 0), "score": null_score, "start_logit": null_score,
                          "end_logit": 0.0})
            spans.sort(key=lambda span: span["score"], reverse=True)
        if not spans or (len(spans) == 1 and spans[0]["text"] == "" and not version_2_with_negative):
            spans = [{"text": "", "offsets": (0, 0), "score": 0.0, "start_logit": 0.0, "end_logit": 0.0}]
        scores = np.array([span["score"] for span in spans])
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        for span, probability in zip(spans, probabilities):
            span["probability"] = float(probability)
        if version_2_with_negative:
            best_text = next((span for span in spans if span["text"]), None)
            diff = null_score - best_text["score"] if best_text else float("inf")
            null_odds[example["id"]] = float(diff)
            answers[example["id"]] = "" if best_text is None or diff > null_score_diff_threshold else best_text["text"]
        else:
            answers[example["id"]] = spans[0]["text"]
        nbest_json[example["id"]] = [{k: (list(v) if k == "offsets" else v) for k, v in span.items()} for span in spans]
    if output_dir is not None:
        _write_predictions(output_dir, prefix, answers, nbest_json, null_odds if version_2_with_negative else None)
    return answers


def _write_predictions(output_dir: str, prefix: Optional[str], answers, nbest, null_odds) -> None:
    os.makedirs(output_dir, exist_ok=True)
    stem = f"{prefix}_" if prefix else ""
    outputs = {"predictions": answers, "nbest_predictions": nbest, "null_odds": null_odds}
    for name, content in outputs.items():
        if content is not None:
            with open(os.path.join(output_dir, f"{stem}{name}.json"), "w", encoding="utf-8") as handle:
                json.dump(content, handle, indent=2, ensure_ascii=False)
                handle.write("\n")


def format_for_metric(answers: Dict[str, str], examples, version_2_with_negative: bool = False):
    """(predictions, references) in the shape :mod:`hf_prune.qa.metric` and ``evaluate`` take."""
    predictions = [{"id": qid, "prediction_text": text} for qid, text in answers.items()]
    if version_2_with_negative:
        for prediction in predictions:
            prediction["no_answer_probability"] = 0.0
    references = [{"id": example["id"], "answers": example["answers"]} for example in examples]
    return predictions, references
