"""The ``hf-prune`` command: ``hf-prune report MODEL`` tells what a model's weights really hold; ``hf-prune slim``
and ``hf-prune export`` turn a trained folder into its deployable forms.

The report reads the safetensors weights themselves (no model class is built, no code from the folder runs), so it
works for any model, pruned by any tool: per 2-D weight its sparsity and the pattern it satisfies
(:mod:`hf_prune.weight_patterns`), and the totals; with ``--json`` the same as JSON. ``MODEL`` is a local folder
or a Hub id (downloaded with ``huggingface_hub``, safetensors files only). Bad input is one ``error:`` line and exit
status 2. ``--png FILE`` also draws the per-layer picture (:mod:`hf_prune.sparsity_picture`).

``hf-prune slim MODEL OUT`` removes the heads and FFN channels whose weights are zero (:func:`hf_prune.slim`) and
saves the smaller model (a stock config when every layer keeps the same widths) with its tokenizer into ``OUT``;
``hf-prune export MODEL OUT.gguf`` writes a Llama-family folder as a GGUF file for llama.cpp
(:func:`hf_prune.gguf_export.save_gguf`). Both load with ``trust_remote_code=False`` and write only into a new or
empty ``OUT``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .value_checks import one_line, short
from .weight_patterns import LayerPattern, weight_pattern

__all__ = ["main", "report_rows", "format_table", "model_weight_files"]


def model_weight_files(folder: str) -> List[str]:
    """The safetensors files of the model saved in ``folder``: the shards its index names, or ``model.safetensors``;
    only without either, every ``.safetensors`` file (an adapter folder). Files saved beside a model (a SimKD head,
    hidden-state projections) are not the model's weights. Empty when the folder holds none."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle).get("weight_map", {}).values()))
        return [os.path.join(folder, name) for name in shards]
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        return [os.path.join(folder, "model.safetensors")]
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".safetensors"))


def _safetensors_files(model: str) -> List[str]:
    if os.path.isdir(model):
        folder = model
    elif os.path.exists(model):
        raise ValueError(f"{short(model)} is a file, not a model folder or a Hub id")
    else:
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(model, allow_patterns=["*.safetensors", "*.json"])
        except Exception as err:  # noqa: BLE001 - offline, unknown repo, invalid id: one line for the user
            raise ValueError(f"{short(model)} is not a local folder, and the Hub could not provide it: "
                             f"{type(err).__name__}") from None
    files = model_weight_files(folder)
    if not files:
        raise ValueError(f"{short(model)} holds no .safetensors weights: not a model folder")
    return files


def report_rows(model: str) -> List[LayerPattern]:
    """One row per 2-D floating-point weight of the model's safetensors files, in file order."""
    from safetensors import safe_open

    rows = []
    for path in _safetensors_files(model):
        try:
            with safe_open(path, framework="pt") as handle:
                for name in handle.keys():
                    tensor = handle.get_tensor(name)
                    if tensor.dim() == 2 and tensor.is_floating_point() and not name.startswith("lora_"):
                        rows.append(weight_pattern(name, tensor))
        except Exception as err:  # noqa: BLE001 - a truncated or foreign file: named, not a traceback
            raise ValueError(f"{path} is not a readable safetensors file: {one_line(str(err))}") from None
    if not rows:
        raise ValueError(f"{short(model)} holds no 2-D weights to report")
    return rows


def _totals(rows: List[LayerPattern]) -> dict:
    sparse = [row for row in rows if row.zeros]
    numel = sum(row.numel for row in rows)
    return {"sparsity_all_weights": round(sum(row.zeros for row in rows) / numel, 6),
            "sparsity_sparse_layers": round(sum(r.zeros for r in sparse) / max(1, sum(r.numel for r in sparse)), 6),
            "layers": len(rows), "sparse_layers": len(sparse),
            "patterns": sorted({row.pattern for row in rows})}


def format_table(rows: List[LayerPattern]) -> str:
    width = max(len(row.name) for row in rows)
    lines = [f"{'weight':<{width}}  {'shape':>13}  {'sparsity':>8}  pattern"]
    for row in rows:
        shape = "x".join(map(str, row.shape))
        lines.append(f"{row.name:<{width}}  {shape:>13}  {row.sparsity:>8.4f}  {row.pattern}")
    totals = _totals(rows)
    lines.append(f"total: {totals['sparsity_all_weights']:.4f} of all 2-D weights, "
                 f"{totals['sparsity_sparse_layers']:.4f} of the {totals['sparse_layers']} layers holding zeros")
    return "\n".join(lines)


def _report(options: argparse.Namespace) -> None:
    rows = report_rows(options.model)
    if options.png:
        from .sparsity_picture import write_sparsity_picture

        write_sparsity_picture(rows, options.png, title=f"{options.model}: sparsity per weight")
    if options.json:
        print(json.dumps({**_totals(rows), "weights": [row.to_dict() for row in rows]}, indent=2))
    else:
        print(format_table(rows))


def _new_output(path: str) -> None:
    """``path`` may be a new folder or an empty one: the command never overwrites what it did not write."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"{short(path)} already exists and is not an empty folder: give a new output folder")


def _load(model: str):
    """The model and tokenizer of a local folder or Hub id (the class it was saved as; no code from it runs)."""
    from transformers import AutoTokenizer

    from .slimming import from_pretrained

    try:
        loaded = from_pretrained(model)
    except (OSError, ValueError) as err:
        raise ValueError(f"{short(model)} could not be loaded as a model: {one_line(str(err))}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    except (OSError, ValueError):
        tokenizer = None
    return loaded, tokenizer


def _slim(options: argparse.Namespace) -> None:
    """Remove the heads and FFN channels whose weights are zero and save the smaller model and its tokenizer."""
    from .slimming import slim

    _new_output(options.output)
    model, tokenizer = _load(options.model)
    summary = slim(model)
    model.save_pretrained(options.output)
    if tokenizer is not None:
        tokenizer.save_pretrained(options.output)
    print(f"{options.model} -> {options.output}: {summary}"
          + ("" if tokenizer is not None else f" (no tokenizer: {options.model} holds none, none saved)"))


def _export(options: argparse.Namespace) -> None:
    """Write a Llama-family model (Llama, Mistral) and its tokenizer as one GGUF file for llama.cpp."""
    from .gguf_export import save_gguf

    if os.path.exists(options.output):
        raise ValueError(f"{short(options.output)} already exists: give a new file name")
    if not options.output.endswith(".gguf"):
        raise ValueError(f"the output file name must end with .gguf, got {short(options.output)}")
    model, tokenizer = _load(options.model)
    if tokenizer is None:
        raise ValueError(f"{short(options.model)} holds no tokenizer: GGUF files carry the vocabulary")
    save_gguf(model, tokenizer, options.output, dtype=options.dtype, pre_tokenizer=options.pre_tokenizer)
    print(f"{options.model} -> {options.output} ({options.dtype})")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-prune", description="hf_prune's command line")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="per-layer sparsity and the pattern each weight satisfies",
                                 description=report_rows.__doc__)
    report.add_argument("model", help="a local model folder or a Hugging Face Hub id")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.add_argument("--png", metavar="FILE", help="also draw the per-layer picture into this PNG file")
    report.set_defaults(run=_report)
    slim_command = commands.add_parser("slim", help="remove zero heads and FFN channels, save the smaller model",
                                       description=_slim.__doc__)
    slim_command.add_argument("model", help="a local model folder or a Hugging Face Hub id")
    slim_command.add_argument("output", help="a new (or empty) folder for the slim model")
    slim_command.set_defaults(run=_slim)
    export = commands.add_parser("export", help="write a Llama-family model as a GGUF file for llama.cpp",
                                 description=_export.__doc__)
    export.add_argument("model", help="a local model folder or a Hugging Face Hub id")
    export.add_argument("output", help="the new .gguf file")
    export.add_argument("--dtype", choices=["f32", "f16"], default="f16", help="tensor type (default f16)")
    export.add_argument("--pre-tokenizer", default=None,
                        help="llama.cpp's pre-tokenizer name (tokenizer.ggml.pre, e.g. smollm, llama-bpe)")
    export.set_defaults(run=_export)
    options = parser.parse_args(argv)
    try:
        options.run(options)
    except ValueError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
