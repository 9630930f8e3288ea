"""Shared fixtures: tiny random-init models built from configs and synthetic data, so tests run in seconds."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForQuestionAnswering

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
SHARED = os.path.normpath(SHARED)


def tiny_bert_config(**overrides) -> BertConfig:
    values = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, type_vocab_size=2)
    values.update(overrides)
    return BertConfig(**values)


def tiny_bert_qa(seed: int = 0, **overrides) -> BertForQuestionAnswering:
    torch.manual_seed(seed)
    return BertForQuestionAnswering(tiny_bert_config(**overrides))


class QADataset(torch.utils.data.Dataset):
    """Random token sequences whose answer span is marked by two special token ids, so a model can learn it."""

    def __init__(self, size: int = 64, seq_len: int = 24, vocab: int = 96, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(size):
            ids = torch.randint(5, vocab, (seq_len,), generator=generator)
            start = int(torch.randint(1, seq_len - 4, (1,), generator=generator))
            end = start + int(torch.randint(0, 3, (1,), generator=generator))
            ids[start], ids[end] = 3, 4
            self.items.append({"input_ids": ids, "attention_mask": torch.ones(seq_len, dtype=torch.long),
                               "start_positions": torch.tensor(start), "end_positions": torch.tensor(end)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


class CausalLMDataset(torch.utils.data.Dataset):
    """Random token sequences (vocabulary 64) that are their own labels: enough for a causal LM to train on."""

    def __init__(self, size: int = 32, length: int = 16) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (size, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


class ToyMLP(nn.Module):
    def __init__(self, sizes=(16, 32, 16, 4), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


@pytest.fixture
def toy_mlp() -> ToyMLP:
    return ToyMLP()


def requires_shared(*parts: str) -> str:
    """Path under ../shared, or skip the test saying what is missing."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent: this test needs the real data/checkpoints in ../shared (see its README)")
    return path


def best_at_evaluation(best: int):
    """A ``compute_metrics`` (metric ``"score"``, greater is better) whose best is the ``best``-th evaluation, so
    ``load_best_model_at_end`` must bring back that checkpoint, not the last one."""
    calls = []

    def compute_metrics(prediction):
        calls.append(1)
        return {"score": 1.0 if len(calls) == best else 0.0}
    return compute_metrics


SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "the park has a cat and a dog", "on the mat sat a dog"]


def tiny_bpe_tokenizer():
    """A byte-level BPE tokenizer (about 300 tokens) trained on a few sentences: a real fast tokenizer, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(SENTENCES * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


#: aten ops that only make views (no kernel, no data touched): left out when counting what a step launches
VIEW_OPS = frozenset({"aten::view", "aten::unflatten", "aten::permute", "aten::as_strided", "aten::t",
                      "aten::transpose", "aten::unsqueeze", "aten::slice", "aten::narrow", "aten::detach",
                      "aten::alias", "aten::reshape", "aten::_reshape_alias", "aten::expand", "aten::select",
                      "aten::lift_fresh", "aten::empty", "aten::resolve_conj", "aten::resolve_neg"})


def count_ops(function) -> int:
    """Top-level aten ops ``function()`` dispatches, views and allocations left out: on a GPU each is a kernel
    launch (or a few), so this is what a step's host cost grows with."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        function()
    return sum(1 for event in prof.events() if event.name.startswith("aten::") and event.cpu_parent is None
               and event.name not in VIEW_OPS)
