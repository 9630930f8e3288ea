"""Vocabulary trimming: keep the tokens a model's text needs and remove the embedding and ``lm_head`` rows of the rest.

A small LLM spends much of its size and of its per-token work on the vocabulary: SmolLM2-135M's tied 576 x 49,152
embedding is 28M of its 134.5M parameters, and at batch 1 the ``lm_head`` costs as much as 8 of its 30 layers. A
task in one language and domain uses a fraction of those tokens. :func:`trim_vocabulary` keeps

- every added/special token, every token the config or generation config names (bos, eos, pad, ...),
- the 256 byte tokens of the byte-level alphabet (so *any* text still tokenizes),
- every token that tokenizing ``texts`` produces (the task's calibration text, e.g. the training split),
- optionally the tokens of the tokenizer's first ``first_merges`` merges (its most frequent, domain-free tokens),
- and, recursively, both halves of every merge that builds a kept token,

renumbers the kept tokens in their original order, and rewrites the tokenizer (vocabulary and merges) and the model
(embedding rows, untied ``lm_head`` rows and bias, ``vocab_size`` and the special token ids of the config and the
generation config). The result is a stock model and tokenizer: ``save_pretrained`` writes them and
``AutoModelForCausalLM`` / ``AutoTokenizer`` load them without hf_prune.

**What trimming preserves.** (1) Every text in ``texts`` tokenizes to the same tokens, renumbered: BPE applies the
lowest-ranked merge among the pairs present; every merge the original applied builds a kept token (or a piece of
one), so it is kept, in the same relative rank, and a removed merge was never the lowest available one. (2) The
trimmed model's logits at the kept tokens are the original's, exactly (same rows of the same matrix). The softmax is
over the kept tokens only, so greedy decoding is unchanged wherever the original's best token is kept. (3) Text
outside ``texts`` still tokenizes (every byte is kept) and decodes back to itself, but a word whose token was
removed becomes several pieces, which the model saw less often in that combination.

Byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM2) are supported; others are refused by name.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence

import torch
from torch import nn

from .value_checks import short

__all__ = ["VocabularyTrim", "choose_vocabulary", "trim_tokenizer", "trim_model_vocabulary", "trim_vocabulary"]

#: config and generation-config attributes that hold token ids
SPECIAL_ID_ATTRIBUTES = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id",
                         "cls_token_id", "mask_token_id", "decoder_start_token_id")
_TOKENIZE_CHUNK = 256


@dataclass
class VocabularyTrim:
    """The trimmed model and tokenizer, and the original ids of the kept tokens (new id ``i`` was ``kept_ids[i]``)."""

    model: nn.Module
    tokenizer: object
    kept_ids: List[int]
    vocab_size_before: int

    @property
    def vocab_size(self) -> int:
        return len(self.kept_ids)


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"vocabulary trimming needs a fast (tokenizers-backed) tokenizer, got "
                         f"{type(tokenizer).__name__}")
    data = json.loads(backend.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not _has_byte_level(data.get("pre_tokenizer")):
        pre = (data.get("pre_tokenizer") or {}).get("type")
        raise ValueError(f"vocabulary trimming supports byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM2); "
                         f"this one is model {short(model.get('type'))} with pre-tokenizer {short(pre)}")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("dropout"):
        raise ValueError("vocabulary trimming supports BPE without continuing_subword_prefix, end_of_word_suffix "
                         "or dropout; this tokenizer sets one of them")
    return data


def _has_byte_level(pre_tokenizer) -> bool:
    if not isinstance(pre_tokenizer, dict):
        return False
    if pre_tokenizer.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(part) for part in pre_tokenizer.get("pretokenizers") or [])


def _merge_pairs(model: dict) -> List[tuple]:
    return [tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]


def _special_id_fields(model: nn.Module) -> List[tuple]:
    """(config, attribute, ids) for every token id the config and generation config name (bos, eos, pad, ...)."""
    fields = []
    for config in (model.config, getattr(model, "generation_config", None)):
        for attribute in SPECIAL_ID_ATTRIBUTES if config is not None else ():
            value = getattr(config, attribute, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            ids = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
            if ids:
                fields.append((config, attribute, ids))
    return fields


def _config_special_ids(model: nn.Module) -> List[int]:
    """The token ids the config and generation config name: always kept."""
    return [token_id for _, _, ids in _special_id_fields(model) for token_id in ids]


def choose_vocabulary(tokenizer, texts: Iterable[str], *, first_merges: int = 0,
                      keep_ids: Sequence[int] = ()) -> List[int]:
    """The sorted original ids to keep (module docstring): specials, byte tokens, ``keep_ids``, the tokens of
    ``texts`` and of the first ``first_merges`` merges, closed under the merges that build them."""
    if isinstance(first_merges, bool) or not isinstance(first_merges, int) or first_merges < 0:
        raise ValueError(f"first_merges must be a non-negative integer, got {short(first_merges)}")
    from tokenizers import pre_tokenizers

    data = _tokenizer_json(tokenizer)
    vocab: Dict[str, int] = data["model"]["vocab"]
    merges = _merge_pairs(data["model"])
    size = len(tokenizer)
    kept = {token["id"] for token in data.get("added_tokens", [])}
    kept |= {vocab[char] for char in pre_tokenizers.ByteLevel.alphabet() if char in vocab}
    for token_id in keep_ids:
        if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < size:
            raise ValueError(f"keep_ids holds {short(token_id)}: token ids must be integers in [0, {size})")
        kept.add(token_id)
    kept |= {vocab[left + right] for left, right in merges[:first_merges] if left + right in vocab}
    texts = list(texts)
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        for ids in tokenizer(texts[start:start + _TOKENIZE_CHUNK], add_special_tokens=False)["input_ids"]:
            kept.update(ids)
    builders: Dict[str, List[tuple]] = {}
    for left, right in merges:
        builders.setdefault(left + right, []).append((left, right))
    token_of = {token_id: token for token, token_id in vocab.items()}
    pending = list(kept)
    while pending:
        for pair in builders.get(token_of.get(pending.pop()), ()):
            for piece in pair:
                if vocab[piece] not in kept:
                    kept.add(vocab[piece])
                    pending.append(vocab[piece])
    return sorted(kept)


def _check_kept(kept_ids: Sequence[int], size: int, what: str) -> Dict[int, int]:
    kept = list(kept_ids)
    if not kept or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < size for i in kept):
        raise ValueError(f"kept_ids must be a non-empty list of token ids in [0, {size}) ({what}), got "
                         f"{short(kept)}")
    if kept != sorted(set(kept)):
        raise ValueError("kept_ids must be sorted and without repeats (choose_vocabulary returns them so): the "
                         "kept tokens keep their original order")
    return {old: new for new, old in enumerate(kept)}


def trim_tokenizer(tokenizer, kept_ids: Sequence[int]):
    """A new tokenizer of ``tokenizer``'s class holding only ``kept_ids`` (renumbered in order) and the merges
    among them; everything else (chat template, special tokens, normalizer) as it was."""
    data = _tokenizer_json(tokenizer)
    new_id = _check_kept(kept_ids, len(tokenizer), "the tokenizer's ids")
    missing = [token["content"] for token in data.get("added_tokens", []) if token["id"] not in new_id]
    if missing:
        raise ValueError(f"kept_ids leaves out the added tokens {short(missing)}: special tokens are always kept")
    vocab = {token: new_id[token_id] for token, token_id in data["model"]["vocab"].items() if token_id in new_id}
    merges = [[left, right] for left, right in _merge_pairs(data["model"])
              if left in vocab and right in vocab and left + right in vocab]
    data["model"].update(vocab=vocab, merges=merges)
    for token in data.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    data["post_processor"] = _renumber_processor(data.get("post_processor"), new_id)
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False)
        config_path = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as handle:
                config = json.load(handle)
            if isinstance(config.get("added_tokens_decoder"), dict):
                config["added_tokens_decoder"] = {str(new_id[int(key)]): value for key, value in
                                                  config["added_tokens_decoder"].items() if int(key) in new_id}
            with open(config_path, "w", encoding="utf-8") as handle:
                json.dump(config, handle, ensure_ascii=False, indent=2)
        trimmed = AutoTokenizer.from_pretrained(folder)
    if len(trimmed) != len(new_id):
        raise RuntimeError(f"the trimmed tokenizer has {len(trimmed)} tokens, expected {len(new_id)}")
    return trimmed


def _renumber_processor(processor, new_id: Dict[int, int]):
    """Token ids inside a post-processor, renumbered (template, RoBERTa/BERT and sequences of them)."""
    if not isinstance(processor, dict):
        return processor
    kind = processor.get("type")
    if kind == "Sequence":
        processor["processors"] = [_renumber_processor(part, new_id) for part in processor.get("processors", [])]
    elif kind == "TemplateProcessing":
        for special in processor.get("special_tokens", {}).values():
            special["ids"] = [_renumbered(token_id, new_id) for token_id in special["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            processor[key] = [processor[key][0], _renumbered(processor[key][1], new_id)]
    elif kind != "ByteLevel":
        raise ValueError(f"vocabulary trimming cannot renumber a {short(kind)} post-processor (supported: "
                         "TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence)")
    return processor


def _renumbered(token_id: int, new_id: Dict[int, int]) -> int:
    if token_id not in new_id:
        raise ValueError(f"the post-processor adds token id {token_id}, which kept_ids leaves out")
    return new_id[token_id]


@torch.no_grad()
def trim_model_vocabulary(model: nn.Module, kept_ids: Sequence[int]) -> nn.Module:
    """``model`` (changed in place and returned) with only the embedding and ``lm_head`` rows of ``kept_ids``; a
    tied ``lm_head`` stays tied; ``vocab_size`` and the special token ids of the config and generation config are
    renumbered."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise ValueError(f"vocabulary trimming needs an nn.Embedding input embedding, got "
                         f"{type(embedding).__name__}")
    size = embedding.num_embeddings
    if getattr(model.config, "vocab_size", None) != size:
        raise ValueError(f"config.vocab_size={short(getattr(model.config, 'vocab_size', None))} differs from the "
                         f"embedding's {size} rows: vocabulary trimming supports models whose config describes "
                         "their embedding (text-only causal LMs)")
    new_id = _check_kept(kept_ids, size, "the embedding's rows")
    output = model.get_output_embeddings()
    if output is not None and not isinstance(output, nn.Linear):
        raise ValueError(f"vocabulary trimming needs an nn.Linear lm_head, got {type(output).__name__}")
    fields = _special_id_fields(model)
    for config, attribute, ids in fields:  # every refusal before anything changes
        lost = [token_id for token_id in ids if token_id not in new_id]
        if lost:
            raise ValueError(f"{type(config).__name__}.{attribute}={short(getattr(config, attribute))}: token "
                             f"{lost[0]} is not among the kept ids (choose_vocabulary keeps the ids the config names)")
    rows = torch.tensor(list(kept_ids), device=embedding.weight.device)
    tied = output is not None and output.weight is embedding.weight
    new_embedding = nn.Embedding(len(rows), embedding.embedding_dim, padding_idx=new_id.get(embedding.padding_idx),
                                 device=embedding.weight.device, dtype=embedding.weight.dtype)
    new_embedding.weight.copy_(embedding.weight[rows])
    new_embedding.weight.requires_grad_(embedding.weight.requires_grad)
    for config, attribute, ids in fields:
        value = getattr(config, attribute)
        renumbered = [new_id[token_id] for token_id in ids]
        setattr(config, attribute, renumbered if isinstance(value, (list, tuple)) else renumbered[0])
    model.set_input_embeddings(new_embedding)
    if output is not None:
        head = nn.Linear(output.in_features, len(rows), bias=output.bias is not None,
                         device=output.weight.device, dtype=output.weight.dtype)
        if tied:
            head.weight = new_embedding.weight
        else:
            head.weight.copy_(output.weight[rows.to(output.weight.device)])
            head.weight.requires_grad_(output.weight.requires_grad)
        if output.bias is not None:
            head.bias.copy_(output.bias[rows.to(output.bias.device)])
        model.set_output_embeddings(head)
    model.config.vocab_size = len(rows)
    return model


def trim_vocabulary(model: nn.Module, tokenizer, texts: Iterable[str], *, first_merges: int = 0) -> VocabularyTrim:
    """Trim ``model`` (in place) and ``tokenizer`` (a new one) to the vocabulary that ``texts`` need (module
    docstring); give the same ``kept_ids`` to :func:`trim_model_vocabulary` for a teacher that must match."""
    before = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > before:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {before} rows: "
                         "they do not belong together")
    kept = choose_vocabulary(tokenizer, texts, first_merges=first_merges, keep_ids=_config_special_ids(model))
    trimmed_tokenizer = trim_tokenizer(tokenizer, kept)
    trim_model_vocabulary(model, kept)
    return VocabularyTrim(model, trimmed_tokenizer, kept, before)
