"""SQuAD-format data: loading local files (nested as published, or flat) and turning examples into features.

Every path works offline; ``--dataset_name`` goes through ``datasets.load_dataset`` as in run_qa.py.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from functools import partial
from typing import Any, Dict, Iterable, List, Optional

import datasets

__all__ = ["load_squad_file", "load_qa_datasets", "prepare_train_features", "prepare_validation_features",
           "window_length", "check_question_lengths", "tokenize_splits"]

logger = logging.getLogger(__name__)

QA_COLUMNS = ("id", "title", "context", "question", "answers")


def _read_records(path: str) -> List[Dict[str, Any]]:
    """Records from a SQuAD JSON (nested ``data/paragraphs/qas``), a JSON file holding ``{"data": [flat...]}``
    or a list, JSON lines, or CSV, all normalised to the flat run_qa columns."""
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} does not exist")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            if isinstance(row.get("answers"), str):
                try:
                    row["answers"] = json.loads(row["answers"])
                except json.JSONDecodeError:
                    raise ValueError(f"{path}: question {row.get('id')!r} has an 'answers' cell that is not JSON") from None
        return rows
    if extension not in (".json", ".jsonl"):
        raise ValueError(f"data file {path!r} must be .json, .jsonl or .csv")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is neither a JSON document nor JSON lines: {err}") from None
    if isinstance(data, dict):
        data = data.get("data")
        if not isinstance(data, list):
            raise ValueError(f"{path}: a SQuAD JSON file needs a top-level 'data' list")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of records, got {type(data).__name__}")
    if data and isinstance(data[0], dict) and "paragraphs" in data[0]:
        return list(_flatten_nested(path, data))
    return data


def _flatten_nested(path: str, articles: List[dict]) -> Iterable[Dict[str, Any]]:
    for article in articles:
        for paragraph in article.get("paragraphs", []):
            if "context" not in paragraph or "qas" not in paragraph:
                raise ValueError(f"{path}: a paragraph of article {article.get('title')!r} lacks 'context' or 'qas'")
            for qa in paragraph["qas"]:
                answers = qa.get("answers", [])
                yield {
                    "id": qa.get("id"),
                    "title": article.get("title", ""),
                    "context": paragraph["context"],
                    "question": qa.get("question"),
                    "answers": {"text": [a.get("text") for a in answers],
                                "answer_start": [a.get("answer_start") for a in answers]},
                }


def _validate(path: str, record: Dict[str, Any], allow_no_answer: bool) -> Dict[str, Any]:
    qid = record.get("id")
    for key in ("id", "context", "question"):
        if not isinstance(record.get(key), str) or not record.get(key):
            raise ValueError(f"{path}: question {qid!r} has no valid {key!r}")
    answers = record.get("answers")
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
            or not isinstance(answers.get("answer_start"), list) or len(answers["text"]) != len(answers["answer_start"]):
        raise ValueError(f"{path}: question {qid!r} needs answers {{'text': [...], 'answer_start': [...]}} of equal length")
    if not answers["text"] and not allow_no_answer:
        raise ValueError(f"{path}: question {qid!r} has no answer (use --version_2_with_negative for SQuAD v2.0)")
    for text, start in zip(answers["text"], answers["answer_start"]):
        if not isinstance(start, int) or not isinstance(text, str) or record["context"][start:start + len(text)] != text:
            raise ValueError(
                f"{path}: question {qid!r}: answer {text!r} is not found at answer_start {start!r} of its context"
            )
    return {"id": qid, "title": record.get("title", "") or "", "context": record["context"],
            "question": record["question"], "answers": {"text": answers["text"], "answer_start": answers["answer_start"]}}


def load_squad_file(path: str, allow_no_answer: bool = False) -> datasets.Dataset:
    """One split from a local SQuAD-format file, validated record by record."""
    records = [_validate(path, record, allow_no_answer) for record in _read_records(path)]
    if not records:
        raise ValueError(f"{path} holds no questions")
    features = datasets.Features({
        "id": datasets.Value("string"), "title": datasets.Value("string"), "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {"text": datasets.Sequence(datasets.Value("string")),
                    "answer_start": datasets.Sequence(datasets.Value("int32"))},
    })
    columns = {name: [record[name] for record in records] for name in features}
    table = datasets.table.InMemoryTable.from_pydict(features.encode_batch(columns), schema=features.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features),
                            fingerprint=_file_fingerprint(path, allow_no_answer))


def _file_fingerprint(path: str, allow_no_answer: bool) -> str:
    """The split's cache key, from the file's bytes: stable across processes (so tokenized features are reused)
    and cheap, where ``datasets`` would otherwise pickle every record to hash them (a pass that also fails on some
    Python/pyarrow pairs, seen with Python 3.12.3 and pyarrow 26)."""
    digest = hashlib.sha256(f"hf_prune squad v1 allow_no_answer={allow_no_answer}\n".encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_qa_datasets(dataset_name: Optional[str], dataset_config_name: Optional[str],
                     files: Dict[str, Optional[str]], allow_no_answer: bool = False,
                     cache_dir: Optional[str] = None) -> datasets.DatasetDict:
    """Local files when given (``files`` maps split -> path), else the Hub dataset ``dataset_name``."""
    local = {split: path for split, path in files.items() if path}
    if local:
        return datasets.DatasetDict({split: load_squad_file(path, allow_no_answer) for split, path in local.items()})
    if not dataset_name:
        raise ValueError("give --dataset_name (e.g. squad) or local --train_file/--validation_file")
    return datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)


def _tokenize(examples, tokenizer, max_seq_length: int, doc_stride: int, pad_to_max_length: bool):
    """Question and context as a pair, the context truncated into windows overlapping by ``doc_stride``.
    Models padding on the left (XLNet-style) take the context first. Returns the encoding and which
    sequence id marks context tokens."""
    question_first = tokenizer.padding_side == "right"
    questions = [q.lstrip() for q in examples["question"]]
    encoded = tokenizer(
        questions if question_first else examples["context"],
        examples["context"] if question_first else questions,
        truncation="only_second" if question_first else "only_first",
        max_length=max_seq_length, stride=doc_stride, return_overflowing_tokens=True,
        return_offsets_mapping=True, padding="max_length" if pad_to_max_length else False,
    )
    return encoded, 1 if question_first else 0


def prepare_train_features(examples, tokenizer, max_seq_length: int, doc_stride: int, pad_to_max_length: bool):
    """Tokenize question + context into overlapping windows and label each with the answer's token span,
    or with the CLS index when the answer is not inside the window."""
    encoded, context_id = _tokenize(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    sample_map = encoded.pop("overflow_to_sample_mapping")
    offsets_all = encoded.pop("offset_mapping")
    encoded["start_positions"], encoded["end_positions"] = [], []
    for i, offsets in enumerate(offsets_all):
        input_ids = encoded["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        sequence_ids = encoded.sequence_ids(i)
        answers = examples["answers"][sample_map[i]]
        if not answers["answer_start"]:
            encoded["start_positions"].append(cls_index)
            encoded["end_positions"].append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start = sequence_ids.index(context_id)
        token_end = len(sequence_ids) - 1 - sequence_ids[::-1].index(context_id)
        if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
            encoded["start_positions"].append(cls_index)
            encoded["end_positions"].append(cls_index)
            continue
        while token_start <= token_end and offsets[token_start][0] <= start_char:
            token_start += 1
        while token_end >= token_start - 1 and offsets[token_end][1] >= end_char:
            token_end -= 1
        encoded["start_positions"].append(token_start - 1)
        encoded["end_positions"].append(token_end + 1)
    return encoded


def prepare_validation_features(examples, tokenizer, max_seq_length: int, doc_stride: int, pad_to_max_length: bool):
    """Windows as for training, plus ``example_id`` and an offset mapping that is ``None`` outside the
    context, which is what post-processing needs to map logits back to text."""
    encoded, context_id = _tokenize(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    sample_map = encoded.pop("overflow_to_sample_mapping")
    encoded["example_id"] = []
    for i in range(len(encoded["input_ids"])):
        sequence_ids = encoded.sequence_ids(i)
        encoded["example_id"].append(examples["id"][sample_map[i]])
        encoded["offset_mapping"][i] = [
            offset if sequence_ids[k] == context_id else None for k, offset in enumerate(encoded["offset_mapping"][i])
        ]
    return encoded


def window_length(max_seq_length: int, doc_stride: int, tokenizer, model) -> int:
    """``--max_seq_length`` capped at what the model and tokenizer take (as run_qa.py does, with a warning);
    ``--doc_stride`` must leave room for new context in every window."""
    limits = [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None) or 10 ** 9]
    max_len = min(max_seq_length, *limits)
    if max_len < max_seq_length:
        logger.warning("--max_seq_length %d is more than the model takes; using %d (its max_position_embeddings / "
                       "the tokenizer's model_max_length)", max_seq_length, max_len)
    if doc_stride >= max_len:
        raise ValueError(f"--doc_stride ({doc_stride}) must be smaller than --max_seq_length ({max_len}): "
                         "windows overlap by doc_stride tokens, so each must bring new context")
    return max_len


def check_question_lengths(examples, tokenizer, max_len: int, doc_stride: int, split: str) -> None:
    """Every window holds the whole question plus more than ``doc_stride`` context tokens; a question too long for
    that is refused by id (the tokenizer would fail inside ``datasets.map`` with a truncation error)."""
    room = max_len - tokenizer.num_special_tokens_to_add(pair=True) - doc_stride
    lengths = [len(ids) for ids in tokenizer([q.lstrip() for q in examples["question"]], add_special_tokens=False)["input_ids"]]
    too_long = [(qid, n) for qid, n in zip(examples["id"], lengths) if n >= room]
    if too_long:
        qid, n = max(too_long, key=lambda item: item[1])
        raise ValueError(f"{split}: {len(too_long)} question(s) do not fit a window, the longest {qid!r} with {n} "
                         f"tokens: raise --max_seq_length ({max_len}) or lower --doc_stride ({doc_stride}) so that "
                         f"question + {doc_stride} context tokens fit")


def _first_rows(dataset, limit: Optional[int]):
    return dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset


def tokenize_splits(raw, tokenizer, data_args, training_args, max_len: int) -> tuple:
    """(train features, eval examples, eval features, test examples, test features); None where not needed.
    ``data_args``: run_qa_prune.py's data arguments (doc_stride, pad_to_max_length, max_*_samples, ...);
    ``training_args``: the run's TrainingArguments (do_train / do_eval / do_predict)."""
    options = dict(tokenizer=tokenizer, max_seq_length=max_len, doc_stride=data_args.doc_stride,
                   pad_to_max_length=data_args.pad_to_max_length)
    mapped = dict(batched=True, num_proc=data_args.preprocessing_num_workers,
                  load_from_cache_file=not data_args.overwrite_cache)
    needed = {"train": training_args.do_train, "validation": training_args.do_eval, "test": training_args.do_predict}
    for split, wanted in needed.items():
        if wanted and split not in raw:
            raise ValueError(f"--do_{'eval' if split == 'validation' else split.replace('test', 'predict')} needs a "
                             f"{split} split: give --{split}_file")
    outputs = [None] * 5
    if training_args.do_train:
        train = _first_rows(raw["train"], data_args.max_train_samples)
        check_question_lengths(train, tokenizer, max_len, data_args.doc_stride, "train")
        with training_args.main_process_first(desc="train features"):
            outputs[0] = train.map(partial(prepare_train_features, **options), remove_columns=train.column_names,
                                   desc="Tokenizing train", **mapped)
    for index, (split, limit) in ((1, ("validation", data_args.max_eval_samples)),
                                  (3, ("test", data_args.max_predict_samples))):
        if needed[split]:
            examples = _first_rows(raw[split], limit)
            check_question_lengths(examples, tokenizer, max_len, data_args.doc_stride, split)
            with training_args.main_process_first(desc=f"{split} features"):
                features = examples.map(partial(prepare_validation_features, **options),
                                        remove_columns=examples.column_names, desc=f"Tokenizing {split}", **mapped)
            outputs[index], outputs[index + 1] = examples, features
    return tuple(outputs)
