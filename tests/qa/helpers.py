"""Tiny SQuAD-format data and a tiny local QA model folder (random init, real fast tokenizer), made by tests."""
from __future__ import annotations

import json
import os

import torch
from transformers import BertForQuestionAnswering, BertTokenizerFast

from tests.conftest import tiny_bert_config

WORDS = ("the a an who what where when which won lost played team city river game year bowl super denver "
         "carolina broncos panthers santa clara california stadium levi's in of and was is by at to 50 2016 "
         "february seventh final score ? , . '").split()
PARAGRAPHS = [
    ("Super_Bowl", "the denver broncos won the super bowl 50 game in santa clara california .", [
        ("q1", "who won the super bowl 50 game ?", "the denver broncos"),
        ("q2", "where was the game played ?", "santa clara california"),
        ("q3", "which game was won by the broncos ?", "super bowl 50"),
    ]),
    ("Panthers", "the carolina panthers lost the final game of the year at levi's stadium .", [
        ("q4", "who lost the final game ?", "the carolina panthers"),
        ("q5", "where was the final game played ?", "levi's stadium"),
        ("q6", "what did the panthers lose ?", "the final game"),
    ]),
]


def squad_nested(path: str) -> str:
    data = {"version": "1.1", "data": []}
    for title, context, questions in PARAGRAPHS:
        qas = [{"id": qid, "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
               for qid, q, a in questions]
        data["data"].append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    return path


def squad_flat_jsonl(path: str) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        for title, context, questions in PARAGRAPHS:
            for qid, q, a in questions:
                record = {"id": qid, "title": title, "context": context, "question": q,
                          "answers": {"text": [a], "answer_start": [context.index(a)]}}
                handle.write(json.dumps(record) + "\n")
    return path


def tiny_model_folder(path: str, seed: int = 0) -> str:
    os.makedirs(path, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True)
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(tiny_bert_config(vocab_size=len(tokenizer), max_position_embeddings=128))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
