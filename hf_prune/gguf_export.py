"""Write a Llama-architecture causal LM (a compressed stock checkpoint) as a GGUF file for llama.cpp.

Uses the ``gguf`` package (``pip install "hf_prune[gguf]"``). Only what a dense Llama needs is written: the
hyperparameters (with ``attention.key_length``/``value_length``, as compressed models keep ``head_dim`` while the
hidden size shrinks), a byte-level BPE tokenizer (``tokenizer.json``'s vocabulary and merges, special tokens,
chat template), and the tensors under llama.cpp's names in float32 or float16 — quantize afterwards with
llama.cpp's own ``llama-quantize``. Query and key projections are stored with llama.cpp's rotary layout: within
each head, the two halves that rotary embedding pairs are interleaved (what transformers' GGUF reader undoes).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import torch
from torch import nn

from .activation_importance import decoder_parts
from .value_checks import short

__all__ = ["save_gguf", "GGUF_ARCHITECTURES"]

#: model types written as llama.cpp's ``llama`` architecture (same tensors; Qwen2's q/k/v biases are refused)
GGUF_ARCHITECTURES = ("llama", "mistral")
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 3, 4


def _interleave_rotary_halves(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head reordered from ``[first half, second half]`` to ``[a0, b0, a1, b1, ...]``."""
    per_head = weight.shape[0] // heads
    return weight.reshape(heads, 2, per_head // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def save_gguf(model: nn.Module, tokenizer, path: str, *, dtype: str = "f32",
              pre_tokenizer: Optional[str] = None) -> str:
    """Write ``model`` (Llama or Mistral, no attention biases) and its fast ``tokenizer`` to ``path``.

    ``pre_tokenizer`` is llama.cpp's name for the tokenizer's pre-tokenization (``tokenizer.ggml.pre``, e.g.
    ``"smollm"``, ``"llama-bpe"``); unset, ``"default"``.
    """
    try:
        import gguf
    except ImportError:
        raise ValueError("writing GGUF needs the gguf package: pip install 'hf_prune[gguf]'") from None
    config = model.config
    if config.model_type not in GGUF_ARCHITECTURES or getattr(config, "attention_bias", False) \
            or getattr(config, "mlp_bias", False):
        raise ValueError(f"GGUF export writes llama.cpp's 'llama' architecture: model_type {short(config.model_type)} "
                         f"with attention_bias={getattr(config, 'attention_bias', None)} is not supported; allowed: "
                         f"{', '.join(GGUF_ARCHITECTURES)} without biases")
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16' (quantize with llama.cpp afterwards), got {short(dtype)}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("GGUF export reads the vocabulary from a fast tokenizer (tokenizer.json)")
    tokenizer_json = json.loads(tokenizer.backend_tokenizer.to_str())
    if tokenizer_json["model"]["type"] != "BPE":
        raise ValueError(f"GGUF export writes byte-level BPE tokenizers; this one is {tokenizer_json['model']['type']}")
    parts = decoder_parts(model)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(os.path.basename(str(getattr(config, "_name_or_path", "") or "model")) or "model")
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(parts.heads)
    writer.add_head_count_kv(parts.kv_heads)
    writer.add_key_length(parts.head_dim)
    writer.add_value_length(parts.head_dim)
    writer.add_rope_dimension_count(parts.head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    rope_theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get(
        "rope_theta")
    if rope_theta is not None:
        writer.add_rope_freq_base(float(rope_theta))
    writer.add_vocab_size(int(parts.embed.weight.shape[0]))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, tokenizer, tokenizer_json, int(parts.embed.weight.shape[0]), pre_tokenizer or "default")
    numpy_dtype = np.float32 if dtype == "f32" else np.float16

    def add(name: str, tensor: torch.Tensor, rotary_heads: Optional[int] = None, keep_f32: bool = False) -> None:
        array = tensor.detach().float().cpu().numpy()
        if rotary_heads is not None:
            array = _interleave_rotary_halves(array, rotary_heads)
        writer.add_tensor(name, np.ascontiguousarray(array.astype(np.float32 if keep_f32 else numpy_dtype)))

    add("token_embd.weight", parts.embed.weight)
    for index, layer in enumerate(parts.layers):
        prefix = f"blk.{index}"
        add(f"{prefix}.attn_norm.weight", layer.input_layernorm.weight, keep_f32=True)
        add(f"{prefix}.attn_q.weight", layer.self_attn.q_proj.weight, rotary_heads=parts.heads)
        add(f"{prefix}.attn_k.weight", layer.self_attn.k_proj.weight, rotary_heads=parts.kv_heads)
        add(f"{prefix}.attn_v.weight", layer.self_attn.v_proj.weight)
        add(f"{prefix}.attn_output.weight", layer.self_attn.o_proj.weight)
        add(f"{prefix}.ffn_norm.weight", layer.post_attention_layernorm.weight, keep_f32=True)
        add(f"{prefix}.ffn_gate.weight", layer.mlp.gate_proj.weight)
        add(f"{prefix}.ffn_up.weight", layer.mlp.up_proj.weight)
        add(f"{prefix}.ffn_down.weight", layer.mlp.down_proj.weight)
    add("output_norm.weight", parts.norm.weight, keep_f32=True)
    if parts.lm_head.weight is not parts.embed.weight:
        add("output.weight", parts.lm_head.weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, tokenizer, tokenizer_json: dict, vocab_size: int, pre_tokenizer: str) -> None:
    vocabulary = dict(tokenizer_json["model"]["vocab"])
    added = {token["id"]: token for token in tokenizer_json.get("added_tokens", [])}
    for token_id, token in added.items():
        vocabulary[token["content"]] = token_id
    by_id = {token_id: token for token, token_id in vocabulary.items()}
    tokens, types = [], []
    for token_id in range(vocab_size):
        if token_id in by_id:
            tokens.append(by_id[token_id])
            special = added.get(token_id, {}).get("special")
            types.append(_TOKEN_CONTROL if special else _TOKEN_USER_DEFINED if token_id in added else _TOKEN_NORMAL)
        else:  # embedding rows beyond the vocabulary (padding to a multiple)
            tokens.append(f"[PAD{token_id}]")
            types.append(_TOKEN_USER_DEFINED)
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in tokenizer_json["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            add(value)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
