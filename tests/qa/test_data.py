import json

import pytest

from hf_prune.qa.data import load_squad_file, prepare_train_features, prepare_validation_features
from tests.qa.helpers import squad_flat_jsonl, squad_nested, tiny_model_folder


def test_nested_and_flat_give_the_same_records(tmp_path):
    nested = load_squad_file(squad_nested(str(tmp_path / "n.json")))
    flat = load_squad_file(squad_flat_jsonl(str(tmp_path / "f.jsonl")))
    assert len(nested) == 6 and nested.to_list() == flat.to_list()
    assert nested[0]["answers"] == {"text": ["the denver broncos"], "answer_start": [0]}


def test_flat_json_with_data_field_and_csv(tmp_path):
    records = load_squad_file(squad_flat_jsonl(str(tmp_path / "f.jsonl"))).to_list()
    (tmp_path / "d.json").write_text(json.dumps({"data": records}))
    assert load_squad_file(str(tmp_path / "d.json")).to_list() == records
    lines = ["id,title,context,question,answers"]
    import csv
    import io
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "title", "context", "question", "answers"])
    for r in records:
        writer.writerow([r["id"], r["title"], r["context"], r["question"], json.dumps(r["answers"])])
    (tmp_path / "d.csv").write_text(buffer.getvalue())
    assert load_squad_file(str(tmp_path / "d.csv")).to_list() == records
    assert lines


def test_bad_answer_offset_names_file_and_question(tmp_path):
    path = squad_nested(str(tmp_path / "bad.json"))
    data = json.load(open(path))
    data["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 3
    json.dump(data, open(path, "w"))
    with pytest.raises(ValueError, match=r"bad\.json: question 'q2': answer 'santa clara california' is not found "
                                         r"at answer_start 3"):
        load_squad_file(path)


@pytest.mark.parametrize("content,message", [
    ("{not json", "neither a JSON document nor JSON lines"),
    ('{"version": "1.1"}', "needs a top-level 'data' list"),
    ('{"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}', "lacks 'context' or 'qas'"),
    ('{"data": [{"id": "q", "context": "c", "question": "?", "answers": {"text": []}}]}', "of equal length"),
    ('{"data": [{"id": "q", "context": "c", "question": "?", "answers": {"text": [], "answer_start": []}}]}',
     "has no answer"),
])
def test_malformed_files(tmp_path, content, message):
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_squad_file(str(path))


def test_missing_file():
    with pytest.raises(ValueError, match="data file 'nope.json' does not exist"):
        load_squad_file("nope.json")


def test_feature_labels_point_at_the_answer_tokens(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_folder(str(tmp_path / "m")))
    examples = load_squad_file(squad_nested(str(tmp_path / "n.json")))[:6]
    features = prepare_train_features(examples, tokenizer, max_seq_length=24, doc_stride=8, pad_to_max_length=False)
    assert len(features["input_ids"]) > 6  # long contexts overflow into several windows
    answers = {tokenizer.decode(ids[s:e + 1]) for ids, s, e in zip(features["input_ids"], features["start_positions"],
                                                                    features["end_positions"]) if s > 0}
    assert {"the denver broncos", "santa clara california", "super bowl 50"} <= answers
    validation = prepare_validation_features(examples, tokenizer, max_seq_length=24, doc_stride=8,
                                             pad_to_max_length=False)
    assert set(validation["example_id"]) == {"q1", "q2", "q3", "q4", "q5", "q6"}
    first = validation["offset_mapping"][0]
    assert first[0] is None and any(offset is not None for offset in first)
