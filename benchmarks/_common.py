"""Helpers shared by the benchmarks: the bert-mini-shaped model, synthetic batches, step timing."""
from __future__ import annotations

import os
import statistics
import time

import torch
from transformers import AutoConfig, AutoModelForQuestionAnswering, BertConfig, TrainerCallback

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
BERT_MINI_CONFIG = os.path.join(SHARED, "models", "bert-mini-config")


def bert_mini_config():
    """bert-mini's config from ../shared, or the same shape built here (4 layers, 256 hidden, 4 heads, FFN 1024)."""
    if os.path.isdir(BERT_MINI_CONFIG):
        return AutoConfig.from_pretrained(BERT_MINI_CONFIG), "../shared/models/bert-mini-config"
    return BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024), "built"


def minilm_config():
    """all-MiniLM-L6-v2's config from ../shared, or the same shape (6 layers, 384 hidden, 12 heads, FFN 1536)."""
    folder = os.path.join(SHARED, "models", "all-MiniLM-L6-v2")
    if os.path.isdir(folder):
        return AutoConfig.from_pretrained(folder), "../shared/models/all-MiniLM-L6-v2"
    return BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536), "built"


def qa_model(config, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForQuestionAnswering.from_config(config)


class SyntheticQA(torch.utils.data.Dataset):
    def __init__(self, size: int, seq_len: int, vocab: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1000, vocab, (size, seq_len), generator=generator)
        self.positions = torch.randint(0, seq_len, (size, 2), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "start_positions": self.positions[i, 0], "end_positions": self.positions[i, 1]}


def synchronize() -> None:
    """Wait for the GPU's queued work, so that a wall-clock time covers the work and not only its launch."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def add_device_argument(parser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the Trainer runs (cuda: the first GPU, fp32 as the Trainer's default)")


def llama_24_config():
    """A Llama-shaped model with 24 layers (hidden 256, 8 query / 4 KV heads, FFN 704, 168 pruned Linears): the
    number of layers, not their width, is what the pruner's per-step cost used to grow with."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=256, intermediate_size=704, num_hidden_layers=24, num_attention_heads=8,
                       num_key_value_heads=4, vocab_size=8192, max_position_embeddings=256), "built"


def bert_base_config():
    """bert-base's shape (12 layers, 768 hidden, 12 heads, FFN 3072), random weights: speed does not depend on them."""
    return BertConfig(), "built"


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, from its start to its end, the GPU's queued work included."""

    def __init__(self) -> None:
        self.times, self._last = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize()
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()
        self.times.append(time.perf_counter() - self._last)

    def mean(self, skip: int = 3) -> float:
        """Mean step time after ``skip`` warm-up steps: pruning events count, unlike in a median."""
        return statistics.fmean(self.times[skip:])
