"""Inference latency of dense vs masked (4x1 @ 0.8, 2:4) vs slimmed models, in one run on the same inputs.

"Slimmed" prunes 50 % of the attention heads and 60 % of the FFN channels of every layer (local scope) and
removes them with ``hf_prune.slim``. Masked models keep their shapes: their zeros go through the same dense
kernels. Models: all-MiniLM-L6-v2 and a bert-base-shaped model (random weights; speed does not depend on them),
``--trained-slim PATH`` adds a slim model trained by ``benchmarks/squad_accuracy.py hf-slim-kd``.
Prints the median latency of each case and its speed-up over dense; GPU cases (fp16, 2:4 semi-structured) run
only where CUDA exists and are printed as "not measured" otherwise.

    python benchmarks/inference_speed.py [--batches 1 32] [--seqs 128 384] [--compile] [--gpu-only]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForQuestionAnswering, BertConfig

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_prune import Pruner, PruningConfig, from_pretrained, slim, to_semi_structured  # noqa: E402

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
MINILM = os.path.join(SHARED, "models", "all-MiniLM-L6-v2")
FFN = r"(intermediate\.dense|layer\.\d+\.output\.dense)"
#: the same slimming with every layer keeping a multiple of 64 FFN channels (fp16 GPU kernels want aligned widths)
SLIM_ROUNDED = "slim, FFN kept x64"


def base_configs() -> Dict[str, BertConfig]:
    configs = {}
    if os.path.isdir(MINILM):
        configs["all-MiniLM-L6-v2"] = AutoConfig.from_pretrained(MINILM)
    else:
        configs["all-MiniLM-L6-v2 (shape)"] = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                                         intermediate_size=1536)
    configs["bert-base (shape)"] = BertConfig()
    return configs


def build(config, variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_config(copy.deepcopy(config)).eval()  # slim rewrites model.config
    pruning = {
        "dense": None,
        "masked 4x1 @ 0.8": PruningConfig(target_sparsity=0.8, pattern="4x1", criterion="magnitude"),
        "masked 2:4": PruningConfig(target_sparsity=0.5, pattern="2:4", criterion="magnitude"),
        "slim (-50 % heads, -60 % FFN)": PruningConfig(
            target_sparsity=0.5, pattern="head", criterion="magnitude", scope="local",
            groups=[{"include": [FFN], "pattern": "channel", "target_sparsity": 0.6}]),
        SLIM_ROUNDED: PruningConfig(
            target_sparsity=0.5, pattern="head", criterion="magnitude", scope="local",
            groups=[{"include": [FFN], "pattern": "channel", "target_sparsity": 0.6, "keep_multiple_of": 64}]),
    }[variant]
    if pruning is not None:
        Pruner(model, dataclasses.replace(pruning, start_step=0, end_step=0)).step(0)
        if variant.startswith("slim"):
            slim(model)
    return model


def median_ms(model: torch.nn.Module, inputs: Dict[str, torch.Tensor], repeats: int,
              synchronize: Callable[[], None] = lambda: None) -> float:
    with torch.inference_mode():
        model(**inputs)  # warm-up (and compilation)
        synchronize()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            synchronize()
            times.append(time.perf_counter() - start)
            if times[0] > 5.0 and len(times) >= 3:  # long cases: three timings are enough for a median
                break
    return 1000 * statistics.median(times)


def make_inputs(vocab: int, batch: int, seq: int, device: str = "cpu") -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (batch, seq), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def cpu_table(models: Dict[str, Dict[str, torch.nn.Module]], batches: List[int], seqs: List[int], repeats: int,
              compile_models: bool) -> None:
    modes = ["eager"] + (["torch.compile"] if compile_models else [])
    print("| model | batch | seq | mode | variant | median ms | speed-up vs dense |")
    print("|---|---|---|---|---|---|---|")
    for model_name, variants in models.items():
        vocab = next(iter(variants.values())).config.vocab_size
        for mode in modes:
            runnable = {}
            for name, model in variants.items():
                if mode == "eager":
                    runnable[name] = model
                else:
                    try:
                        runnable[name] = torch.compile(model)
                    except Exception as err:  # pragma: no cover - depends on the toolchain
                        print(f"| {model_name} | | | {mode} | {name} | not measured: {type(err).__name__} | |")
            for batch in batches:
                for seq in seqs:
                    inputs = make_inputs(vocab, batch, seq)
                    dense_ms = None
                    for name, model in runnable.items():
                        try:
                            ms = median_ms(model, inputs, repeats)
                        except Exception as err:  # torch.compile failures surface at the first call
                            print(f"| {model_name} | {batch} | {seq} | {mode} | {name} | not measured: "
                                  f"{type(err).__name__}: {str(err).splitlines()[0][:80]} | |")
                            continue
                        dense_ms = ms if name == "dense" else dense_ms
                        ratio = f"{dense_ms / ms:.2f}x" if dense_ms else "—"
                        print(f"| {model_name} | {batch} | {seq} | {mode} | {name} | {ms:.1f} | {ratio} |", flush=True)


def gpu_table(configs: Dict[str, BertConfig], batches: List[int], seqs: List[int], repeats: int) -> None:
    if not torch.cuda.is_available():
        print("GPU (fp16 dense vs 2:4 semi-structured): not measured - no CUDA device on this machine")
        return
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| model | batch | seq | variant | median ms | speed-up vs dense |")
    print("|---|---|---|---|---|---|")
    for model_name, config in configs.items():
        variants = {name: build(config, name).half().cuda() for name in
                    ("dense", "masked 2:4", "slim (-50 % heads, -60 % FFN)", SLIM_ROUNDED)}
        plan = to_semi_structured(variants["masked 2:4"])
        variants["2:4 semi-structured"] = variants.pop("masked 2:4")
        print(f"{model_name}: {len(plan.convertible)} Linear layers semi-structured, {len(plan.dense)} dense")
        for batch in batches:
            for seq in seqs:
                inputs = make_inputs(config.vocab_size, batch, seq, "cuda")
                dense_ms = None
                for name, model in variants.items():
                    ms = median_ms(model, inputs, repeats, torch.cuda.synchronize)
                    dense_ms = ms if name == "dense" else dense_ms
                    print(f"| {model_name} | {batch} | {seq} | {name} | {ms:.2f} | {dense_ms / ms:.2f}x |", flush=True)


def gpu_layer_table(repeats: int, tokens=(4096, 49152)) -> None:
    """One fp16 Linear at a time: dense vs 2:4 through each of torch's semi-structured backends, and FFN widths a
    slimmed layer may have (1229 = 40 % of 3072, not a multiple of 8) vs rounded ones (1232 = 8 x 154, 1216 and
    1280 = 64 x 19 and 20)."""
    if not torch.cuda.is_available():
        return
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    print("| in x out | tokens | dense ms | 2:4 cuSPARSELt ms (vs dense) | 2:4 CUTLASS ms (vs dense) |")
    print("|---|---|---|---|---|")
    shapes = [(768, 3072), (3072, 768), (768, 1229), (768, 1232), (768, 1216), (768, 1280), (1229, 768),
              (1232, 768), (1216, 768), (1280, 768)]
    for count in tokens:
        for in_features, out_features in shapes:
            torch.manual_seed(0)
            layer = nn.Linear(in_features, out_features).half().cuda().eval()
            inputs = {"input": torch.randn(count, in_features, dtype=torch.float16, device="cuda")}
            dense_ms = median_ms(layer, inputs, repeats, torch.cuda.synchronize)
            cells = []
            for force_cutlass in (False, True):
                if in_features % 64 or out_features % 64:
                    cells.append("—")
                    continue
                SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
                sparse = nn.Linear(in_features, out_features).half().cuda().eval()
                with torch.no_grad():
                    sparse.weight.copy_(layer.weight * torch.tensor([0, 0, 1, 1], device="cuda").half().repeat(
                        out_features, in_features // 4))
                    sparse.weight = nn.Parameter(to_sparse_semi_structured(sparse.weight), requires_grad=False)
                try:
                    ms = median_ms(sparse, inputs, repeats, torch.cuda.synchronize)
                    cells.append(f"{ms:.3f} ({dense_ms / ms:.2f}x)")
                except RuntimeError as err:  # CUTLASS's kernels exist for compute capability 8.x only
                    cells.append(f"not run: {str(err).splitlines()[0][:60]}")
            SparseSemiStructuredTensor._FORCE_CUTLASS = False
            print(f"| {in_features} x {out_features} | {count} | {dense_ms:.3f} | {cells[0]} | {cells[1]} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seqs", type=int, nargs="+", default=[128, 384])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--trained-slim", default=None, help="a slim model folder saved by run_qa_prune --slim")
    parser.add_argument("--models", nargs="+", default=None, help="subset of the model names to run")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU table (on a GPU machine)")
    options = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    configs = {name: config for name, config in base_configs().items()
               if options.models is None or any(name.startswith(m) for m in options.models)}
    models = {}
    for name, config in ({} if options.gpu_only else configs).items():
        variants = {variant: build(config, variant) for variant in
                    ("dense", "masked 4x1 @ 0.8", "masked 2:4", "slim (-50 % heads, -60 % FFN)")}
        if options.trained_slim and name.startswith("all-MiniLM"):
            variants[f"trained slim ({os.path.basename(options.trained_slim.rstrip('/'))})"] = \
                from_pretrained(options.trained_slim).eval()
        parameters = {variant: sum(p.numel() for p in model.parameters()) for variant, model in variants.items()}
        print(f"{name}: parameters " + ", ".join(f"{v}: {n / 1e6:.1f}M" for v, n in parameters.items()))
        models[name] = variants
    if models:
        cpu_table(models, options.batches, options.seqs, options.repeats, options.compile)
    gpu_table(configs, options.batches, options.seqs, options.repeats)
    gpu_layer_table(options.repeats)


if __name__ == "__main__":
    main()
