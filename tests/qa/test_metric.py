import pytest

from hf_prune.qa.metric import f1_score, normalize_answer, squad_v1, squad_v2


def _ref(qid, *texts):
    return {"id": qid, "answers": {"text": list(texts), "answer_start": [0] * len(texts)}}


def test_normalisation_official_rules():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("Theatre") == "theatre"  # 'the' only as a whole word


def test_v1_exact_and_f1_by_hand():
    predictions = [{"id": "q1", "prediction_text": "the Denver Broncos"},
                   {"id": "q2", "prediction_text": "Broncos won"},
                   {"id": "q3", "prediction_text": "nothing alike"}]
    references = [_ref("q1", "Denver Broncos", "Broncos"), _ref("q2", "the Broncos", "Denver Broncos won the game"),
                  _ref("q3", "Santa Clara")]
    # q1: EM 1, F1 1. q2: vs "broncos": P 1/2 R 1 -> 2/3; vs "denver broncos won game": P 1 R 2/4 -> 2/3. q3: 0, 0
    result = squad_v1(predictions, references)
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_v1_takes_max_over_references():
    result = squad_v1([{"id": "q", "prediction_text": "Levi's Stadium"}],
                      [_ref("q", "Santa Clara, California", "Levi's Stadium")])
    assert result == {"exact_match": 100.0, "f1": 100.0}


def test_v1_empty_prediction_scores_zero():
    assert f1_score("", "Broncos") == 0.0
    assert squad_v1([{"id": "q", "prediction_text": ""}], [_ref("q", "Broncos")]) == {"exact_match": 0.0, "f1": 0.0}


def test_v2_no_answer_questions():
    predictions = [{"id": "a", "prediction_text": "", "no_answer_probability": 0.0},
                   {"id": "b", "prediction_text": "Broncos", "no_answer_probability": 0.0},
                   {"id": "c", "prediction_text": "Denver", "no_answer_probability": 0.0}]
    references = [_ref("a"), _ref("b"), _ref("c", "Denver Broncos")]
    result = squad_v2(predictions, references)
    # a: right (no answer). b: wrong (answered an unanswerable one). c: EM 0, F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    assert result["exact"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert (result["HasAns_total"], result["NoAns_total"], result["total"]) == (1, 2, 3)
    assert result["NoAns_exact"] == pytest.approx(50.0)


def test_unknown_prediction_id_is_refused():
    with pytest.raises(ValueError, match="no reference"):
        squad_v1([{"id": "zz", "prediction_text": "x"}], [_ref("q", "x")])
