"""GGUF export of a compressed stock Llama: read back by transformers' GGUF loader, the same logits and tokens."""
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
