"""The ``hf-prune`` command: ``hf-prune report MODEL`` tells what a model's weights really hold.

The report reads the safetensors weights themselves (no model class is built, no code from the folder runs), so it
works for any model, pruned by any tool: per 2-D weight its sparsity and the pattern it satisfies
(:mod:`hf_prune.weight_patterns`), and the totals; with ``--json`` the same as JSON. ``MODEL`` is a local folder
or a Hub id (downloaded with ``huggingface_hub``, safetensors files only). Bad input is one ``error:`` line and exit
status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .value_checks import one_line, short
from .weight_patterns import LayerPattern, weight_pattern

__all__ = ["main", "report_rows", "format_table"]


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
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".safetensors"))
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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-prune", description="hf_prune's command line")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="per-layer sparsity and the pattern each weight satisfies",
                                 description=report_rows.__doc__)
    report.add_argument("model", help="a local model folder or a Hugging Face Hub id")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    options = parser.parse_args(argv)
    try:
        rows = report_rows(options.model)
    except ValueError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    if options.json:
        print(json.dumps({**_totals(rows), "weights": [row.to_dict() for row in rows]}, indent=2))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
