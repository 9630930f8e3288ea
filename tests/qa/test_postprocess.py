import numpy as np

from hf_prune.qa.postprocess import format_for_metric, postprocess_qa_predictions

CONTEXT = "Denver Broncos won Super Bowl 50"
# token offsets: [CLS] q [SEP] Denver Broncos won Super Bowl 50 [SEP]
OFFSETS = [None, None, None, (0, 6), (7, 14), (15, 18), (19, 24), (25, 29), (30, 32), None]


def _features(*windows):
    return {"example_id": [w[0] for w in windows], "offset_mapping": [w[1] for w in windows]}


def test_best_span_maps_back_to_context_text():
    start = np.full(10, -10.0)
    end = np.full(10, -10.0)
    start[3], end[4] = 5.0, 5.0  # "Denver Broncos"
    start[0], end[0] = 9.0, 9.0  # CLS: not a valid span in v1
    answers = postprocess_qa_predictions([{"id": "q", "context": CONTEXT}], _features(("q", OFFSETS)),
                                         (start[None], end[None]))
    assert answers == {"q": "Denver Broncos"}


def test_rejects_reversed_and_too_long_spans():
    start, end = np.zeros(10), np.zeros(10)
    start[4], end[3] = 10.0, 10.0  # the top pair ends before it starts: invalid
    start[5], end[8] = 6.0, 6.0    # "won Super Bowl 50" (4 tokens): score 12
    end[4] = 1.0                   # "Broncos" (1 token): score 11
    answers = postprocess_qa_predictions([{"id": "q", "context": CONTEXT}], _features(("q", OFFSETS)),
                                         (start[None], end[None]), max_answer_length=3)
    assert answers["q"] == "Broncos"
    answers = postprocess_qa_predictions([{"id": "q", "context": CONTEXT}], _features(("q", OFFSETS)),
                                         (start[None], end[None]), max_answer_length=4)
    assert answers["q"] == "won Super Bowl 50"


def test_searches_all_windows_of_an_example(tmp_path):
    weak, strong = np.zeros((2, 10)), np.zeros((2, 10))
    weak[0, 3], weak[1, 3] = 1.0, 1.0     # window 1: "Denver" score 2
    strong[0, 6], strong[1, 7] = 4.0, 4.0  # window 2: "Super Bowl" score 8
    features = _features(("q", OFFSETS), ("q", OFFSETS))
    logits = (np.stack([weak[0], strong[0]]), np.stack([weak[1], strong[1]]))
    answers = postprocess_qa_predictions([{"id": "q", "context": CONTEXT}], features, logits,
                                         output_dir=str(tmp_path), prefix="eval")
    assert answers == {"q": "Super Bowl"}
    assert (tmp_path / "eval_predictions.json").is_file() and (tmp_path / "eval_nbest_predictions.json").is_file()


def test_v2_prefers_null_when_it_wins_by_threshold():
    start, end = np.zeros(10), np.zeros(10)
    start[0], end[0] = 5.0, 5.0  # null score 10
    start[3], end[4] = 4.0, 4.0  # best span 8
    example = [{"id": "q", "context": CONTEXT}]
    assert postprocess_qa_predictions(example, _features(("q", OFFSETS)), (start[None], end[None]),
                                      version_2_with_negative=True) == {"q": ""}
    assert postprocess_qa_predictions(example, _features(("q", OFFSETS)), (start[None], end[None]),
                                      version_2_with_negative=True, null_score_diff_threshold=3.0) == {
        "q": "Denver Broncos"}


def test_format_for_metric():
    predictions, references = format_for_metric({"q": "x"}, [{"id": "q", "answers": {"text": ["x"], "answer_start": [0]}}])
    assert predictions == [{"id": "q", "prediction_text": "x"}]
    assert references == [{"id": "q", "answers": {"text": ["x"], "answer_start": [0]}}]
