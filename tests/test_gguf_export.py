"""GGUF export of a compressed stock Llama: read back by transformers' GGUF loader (and by llama.cpp where a prebuilt
one is given), the same logits and tokens."""
import os
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hf_prune.gguf_export import save_gguf
from hf_prune.llm_compression import compress
from hf_prune.model_shape import count_parameters
from tests.conftest import SENTENCES, tiny_bpe_tokenizer

pytest.importorskip("gguf", reason="gguf is an optional extra (pip install 'hf_prune[gguf]')")

TEXT = SENTENCES


def _tokenizer():
    return tiny_bpe_tokenizer()


def test_a_compressed_llama_round_trips_through_gguf(tmp_path):
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                                         num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3,
                                         max_position_embeddings=64, tie_word_embeddings=True)).eval()
    batches = [{"input_ids": torch.tensor([tokenizer(t)["input_ids"][:5] for t in TEXT])} for _ in range(3)]
    small = compress(model, batches, target_params=0.7 * count_parameters(model.config), search=False,
                     max_batches=2).model.eval()
    small.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    save_gguf(small, tokenizer, str(tmp_path / "gguf" / "model.gguf"))
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gguf"), gguf_file="model.gguf",
                                                dtype=torch.float32).eval()
    back_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "gguf"), gguf_file="model.gguf")
    assert back.config.hidden_size == small.config.hidden_size and back.config.head_dim == small.config.head_dim
    for text in TEXT:
        assert back_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = torch.tensor([tokenizer(TEXT[2])["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, small(ids).logits, atol=1e-5, rtol=1e-5)


def test_what_llama_cpp_llama_cannot_hold_is_refused(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match=r"model_type 'qwen2' .* is not supported"):
        save_gguf(qwen, _tokenizer(), str(tmp_path / "q.gguf"))
    with pytest.raises(ValueError, match=r"dtype must be 'f32' or 'f16'"):
        save_gguf(LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=1, num_attention_heads=2)), _tokenizer(),
                  str(tmp_path / "l.gguf"), dtype="q4")


LLAMA_CPP_MODULE = os.environ.get("HF_PRUNE_LLAMA_CPP_MODULE", "")


@pytest.mark.skipif(not os.path.isfile(LLAMA_CPP_MODULE), reason=(
    "llama.cpp is benchmark-only (no binary wheel of llama-cpp-python): set HF_PRUNE_LLAMA_CPP_MODULE to the "
    "prebuilt cffi module that benchmarks/llama_cpp_api.py describes"))
def test_llama_cpp_runs_the_exported_gguf_with_the_same_logits_and_greedy_tokens(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from llama_cpp_api import LlamaCpp

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128, tie_word_embeddings=True)).eval()
    batches = [{"input_ids": torch.tensor([tokenizer(t)["input_ids"][:5] for t in TEXT])} for _ in range(3)]
    small = compress(model, batches, target_params=0.7 * count_parameters(model.config), search=False,
                     max_batches=2).model.eval()   # uniform narrower widths: what llama.cpp must read from the GGUF
    path = save_gguf(small, tokenizer, str(tmp_path / "model.gguf"))
    llama = LlamaCpp(LLAMA_CPP_MODULE, path, n_ctx=128, threads=1)
    try:
        for text in TEXT:
            ids = tokenizer(text)["input_ids"]
            with torch.no_grad():
                expected = small(torch.tensor([ids])).logits[0, -1].numpy()
                greedy = small.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        max_new_tokens=8, do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
            assert abs(llama.logits(ids) - expected).max() < 1e-3
            produced, _, _ = llama.greedy(ids, max_new_tokens=8)
            assert produced == greedy
    finally:
        llama.close()
