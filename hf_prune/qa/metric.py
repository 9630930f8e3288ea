"""The official SQuAD v1.1 and v2.0 metrics, shipped in the package (``evaluate.load("squad")`` needs the Hub).

Answers are normalised as in the official scripts (lower case, no punctuation, no articles a/an/the,
single spaces); each prediction scores the max over its reference answers; results are on a 0-100 scale
with the same keys as ``evaluate``'s "squad" (``exact_match``, ``f1``) and "squad_v2" (``exact``, ``f1``,
``total``, ``HasAns_*``, ``NoAns_*``).
"""
from __future__ import annotations

import collections
import re
import string
from typing import Dict, List, Sequence

__all__ = ["normalize_answer", "exact_match_score", "f1_score", "squad_v1", "squad_v2", "compute_squad"]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str, empty_matches_empty: bool = False) -> float:
    """Token-overlap F1. v1.1 scores an empty side as 0; v2.0 (``empty_matches_empty``) scores
    "no answer" against "no answer" as 1."""
    pred_tokens, truth_tokens = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if empty_matches_empty and (not pred_tokens or not truth_tokens):
        return float(pred_tokens == truth_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(truth_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def _references_by_id(references: Sequence[dict]) -> Dict[str, List[str]]:
    return {ref["id"]: list(ref["answers"]["text"]) for ref in references}


def _check_ids(predictions: Sequence[dict], truths: Dict[str, List[str]]) -> None:
    missing = [p["id"] for p in predictions if p["id"] not in truths]
    if missing:
        raise ValueError(f"predictions for ids with no reference: {missing[:5]}")


def squad_v1(predictions: Sequence[dict], references: Sequence[dict]) -> Dict[str, float]:
    """``predictions``: ``[{"id", "prediction_text"}]``; ``references``: ``[{"id", "answers": {"text": [...]}}]``."""
    truths = _references_by_id(references)
    _check_ids(predictions, truths)
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    exact = f1 = 0.0
    for pred in predictions:
        answers = truths[pred["id"]]
        exact += max(exact_match_score(pred["prediction_text"], a) for a in answers)
        f1 += max(f1_score(pred["prediction_text"], a) for a in answers)
    return {"exact_match": 100.0 * exact / len(predictions), "f1": 100.0 * f1 / len(predictions)}


def squad_v2(predictions: Sequence[dict], references: Sequence[dict],
             no_answer_threshold: float = 1.0) -> Dict[str, float]:
    """v2.0: a question with no reference answer is right when the prediction is empty. A prediction whose
    ``no_answer_probability`` exceeds ``no_answer_threshold`` counts as empty (as the official script)."""
    truths = _references_by_id(references)
    _check_ids(predictions, truths)
    exact, f1, has_answer = {}, {}, {}
    for pred in predictions:
        answers = [a for a in truths[pred["id"]] if normalize_answer(a)] or [""]
        text = pred["prediction_text"]
        if pred.get("no_answer_probability", 0.0) > no_answer_threshold:
            text = ""
        exact[pred["id"]] = max(exact_match_score(text, a) for a in answers)
        f1[pred["id"]] = max(f1_score(text, a, empty_matches_empty=True) for a in answers)
        has_answer[pred["id"]] = answers != [""]

    def summary(ids: List[str], prefix: str) -> Dict[str, float]:
        if not ids:
            return {}
        return {f"{prefix}exact": 100.0 * sum(exact[i] for i in ids) / len(ids),
                f"{prefix}f1": 100.0 * sum(f1[i] for i in ids) / len(ids), f"{prefix}total": len(ids)}

    results = summary(list(exact), "")
    results.update(summary([i for i in exact if has_answer[i]], "HasAns_"))
    results.update(summary([i for i in exact if not has_answer[i]], "NoAns_"))
    return results


def compute_squad(predictions, references, version_2_with_negative: bool = False) -> Dict[str, float]:
    return squad_v2(predictions, references) if version_2_with_negative else squad_v1(predictions, references)
