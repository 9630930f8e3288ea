"""SmolLM2 on generative SQuAD, the measuring side of ``smollm2_squad.py``: EM/F1, held-out perplexity, answer
loss, batch-1 speed, sparsity, slim against masked, and whether the saved folder loads without hf_prune and
round-trips through GGUF."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import torch

from smollm2_data import MAX_NEW_TOKENS, SQUAD, answer_batches

from hf_prune import slim
from hf_prune.qa.data import load_squad_file
from hf_prune.qa.metric import squad_v1

STOCK_LOAD = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
out = []
for ids in json.loads(sys.argv[2]):
    inputs = torch.tensor([ids])
    out.append(model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=24, do_sample=False,
                              pad_token_id=0)[0, len(ids):].tolist())
assert "hf_prune" not in sys.modules
print(json.dumps({"class": type(model).__name__, "tokens": out}))
"""


@torch.no_grad()
def evaluate(model, tokenizer, questions) -> dict:
    """Greedy answers, EM/F1, and generated tokens per second (batch 1, as a chat turn is served on CPU; prompt
    time included, so models that answer at other lengths do not compare: ``compare_slim`` times them fairly)."""
    model.eval()
    predictions, generated, seconds = [], 0, 0.0
    for record, ids in questions:
        inputs = torch.tensor([ids])
        started = time.perf_counter()
        output = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=MAX_NEW_TOKENS,
                                do_sample=False, pad_token_id=tokenizer.eos_token_id)
        seconds += time.perf_counter() - started
        new = output[0, inputs.shape[1]:]
        generated += len(new)
        predictions.append({"id": record["id"], "prediction_text": tokenizer.decode(new, skip_special_tokens=True)
                            .strip()})
    references = [{"id": record["id"], "answers": record["answers"]} for record, _ in questions]
    scores = squad_v1(predictions, references)
    return {"exact_match": scores["exact_match"], "f1": scores["f1"], "tokens_per_second": generated / seconds,
            "questions": len(questions), "examples": predictions[:5]}


@torch.no_grad()
def compare_slim(masked, slimmed, tokenizer, questions) -> dict:
    """The slimmed model against the masked one it came from: the largest logit difference in float64 (0 when the
    removal is exact) and in float32 (kernel rounding of other matrix shapes), how many greedy answers are
    identical, and the speed of batch-1 generation: prefill seconds per prompt and decode milliseconds per token
    (24 tokens forced), the two models alternating question by question."""
    def largest_logit_difference(a, b) -> float:
        return max(float((a(torch.tensor([ids])).logits - b(torch.tensor([ids])).logits).abs().max())
                   for _, ids in questions[:2])

    row = {"max_logit_difference_float64": largest_logit_difference(copy.deepcopy(masked).double(),
                                                                    copy.deepcopy(slimmed).double()),
           "max_logit_difference_float32": largest_logit_difference(masked, slimmed)}
    timing = {"masked": [0.0, 0.0], "slim": [0.0, 0.0]}
    outputs = {"masked": [], "slim": []}
    for _, ids in questions:
        inputs = torch.tensor([ids])
        for label, model in (("masked", masked), ("slim", slimmed)):
            model.eval()
            started = time.perf_counter()
            model(inputs, logits_to_keep=1)
            prefill = time.perf_counter() - started
            started = time.perf_counter()
            output = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=MAX_NEW_TOKENS,
                                    min_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                    pad_token_id=tokenizer.eos_token_id)
            timing[label][0] += prefill
            timing[label][1] += time.perf_counter() - started - prefill
            outputs[label].append(output)
    row["identical_greedy_generations"] = sum(torch.equal(a, b) for a, b in zip(outputs["masked"], outputs["slim"]))
    row["questions_compared"] = len(questions)
    for label, (prefill, decode) in timing.items():
        row[f"{label}_prefill_seconds"] = prefill / len(questions)
        row[f"{label}_decode_ms_per_token"] = 1000 * decode / (len(questions) * MAX_NEW_TOKENS)
    total = {label: prefill + decode for label, (prefill, decode) in timing.items()}
    row["generation_speedup"] = total["masked"] / total["slim"]  # prompt + 24 tokens, end to end
    row["prefill_speedup"] = row["masked_prefill_seconds"] / row["slim_prefill_seconds"]
    row["decode_speedup"] = row["masked_decode_ms_per_token"] / row["slim_decode_ms_per_token"]
    return row


def slim_against_masked(model, tokenizer, questions) -> dict:
    """``hf_prune.slim`` on ``model`` in place, and how the result compares with the masked model it was."""
    masked = copy.deepcopy(model)
    summary = slim(model)
    return {"slim": str(summary), "slim_against_masked": compare_slim(masked, model, tokenizer, questions)}


def sparsity_of(model) -> dict:
    """Over the layers that hold zeros (the decoder's projections; lm_head, tied to the embeddings, stays dense) and
    over every Linear weight."""
    from hf_prune.report import sparsity_report

    report = sparsity_report(model)
    return {"sparsity_pruned_layers": report.pruned_sparsity, "sparsity_all_linear": report.linear_sparsity}


@torch.no_grad()
def wikipedia_perplexity(model, tokenizer, paragraphs: int = 64, max_tokens: int = 320, reference=None) -> float:
    """Perplexity on the first ``paragraphs`` distinct contexts of validation.json (held-out Wikipedia text).
    With a ``reference`` tokenizer (the original, for a model with a trimmed vocabulary), each paragraph is the text
    of the reference's first ``max_tokens`` tokens, and the loss of ``tokenizer``'s tokens of that text is divided
    by the reference's token count: the same text and the same denominator as the original model's perplexity."""
    records = load_squad_file(os.path.join(SQUAD, "validation.json"))
    contexts = list(dict.fromkeys(record["context"] for record in records))
    model.eval()
    total, count = 0.0, 0
    for text in contexts[:paragraphs]:
        original = (reference if reference is not None else tokenizer)(text, add_special_tokens=False)["input_ids"]
        original = original[:max_tokens]
        if reference is not None:
            text = reference.decode(original)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"] if reference is not None
                            else original])
        logits = model(input_ids=ids).logits[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += len(original) - 1
    return float(torch.exp(torch.tensor(total / count)))


@torch.no_grad()
def batch1_timings(models: dict, prompts: dict) -> dict:
    """Per model (name -> model, alternating prompt by prompt): batch-1 prefill seconds per prompt and decode
    milliseconds per token (24 tokens forced). ``prompts``: name -> the model's own prompt ids of the same
    questions (a trimmed vocabulary tokenizes them differently)."""
    totals = {name: [0.0, 0.0] for name in models}
    count = len(next(iter(prompts.values())))
    for index in range(count):
        for name, model in models.items():
            inputs = torch.tensor([prompts[name][index][1]])
            model.eval()
            started = time.perf_counter()
            model(inputs, logits_to_keep=1)
            prefill = time.perf_counter() - started
            started = time.perf_counter()
            model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=MAX_NEW_TOKENS,
                           min_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=0)
            totals[name][0] += prefill
            totals[name][1] += time.perf_counter() - started - prefill
    return {name: {"prefill_seconds": prefill / count,
                   "decode_ms_per_token": 1000 * decode / (count * MAX_NEW_TOKENS)}
            for name, (prefill, decode) in totals.items()}


def speed_against(dense, small, questions, small_questions=None) -> dict:
    """:func:`batch1_timings` of the dense and the small model, and the ratios dense / small."""
    timing = batch1_timings({"dense": dense, "small": small},
                            {"dense": questions, "small": small_questions or questions})
    row = {f"{name}_{key}": value for name, values in timing.items() for key, value in values.items()}
    row["prefill_speedup"] = row["dense_prefill_seconds"] / row["small_prefill_seconds"]
    row["decode_speedup"] = row["dense_decode_ms_per_token"] / row["small_decode_ms_per_token"]
    return row


@torch.no_grad()
def stock_load_check(model, folder: str, questions) -> dict:
    """A fresh process that never imports hf_prune loads ``folder`` with AutoModelForCausalLM: same greedy tokens?"""
    prompts = [ids for _, ids in questions]
    expected = [model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
                for ids in prompts]
    run = subprocess.run([sys.executable, "-c", STOCK_LOAD, folder, json.dumps(prompts)], capture_output=True,
                         text=True, timeout=900)
    if run.returncode != 0:
        return {"stock_load": "failed", "stock_load_error": run.stderr[-2000:]}
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    return {"stock_load": loaded["class"], "stock_load_identical_greedy": sum(
        a == b for a, b in zip(loaded["tokens"], expected)), "stock_load_questions": len(prompts)}


@torch.no_grad()
def gguf_round_trip(model, tokenizer, folder: str, questions) -> dict:
    """``hf_prune.gguf_export.save_gguf`` (f32; the tokenizer's llama.cpp pre-tokenizer name as the downloaded GGUF
    states it: "smollm"), read back by transformers' GGUF loader: same greedy tokens? (llama.cpp itself: see
    RESULTS.md.)"""
    from transformers import AutoModelForCausalLM

    from hf_prune.gguf_export import save_gguf

    path = save_gguf(model, tokenizer, os.path.join(folder, "model.gguf"), pre_tokenizer="smollm")
    back = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32).eval()
    same = 0
    for _, ids in questions:
        inputs = torch.tensor([ids])
        outputs = [m.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=MAX_NEW_TOKENS,
                              do_sample=False, pad_token_id=0) for m in (model, back)]
        same += torch.equal(*outputs)
    return {"gguf_bytes": os.path.getsize(path), "gguf_identical_greedy": same, "gguf_questions": len(questions)}


def answer_loss(model, tokenizer, examples, batch_size: int) -> float:
    """Mean cross-entropy on the answer tokens (the SFT loss) of held-out training examples (the mean of the
    batches' mean losses)."""
    model.eval()
    losses = [float(model(**batch).loss) for batch in answer_batches(examples, tokenizer, batch_size)]
    return sum(losses) / len(losses)
