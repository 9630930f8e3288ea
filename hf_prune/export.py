"""What a pruned run leaves behind: pruning config, sparsity report, and a model card with Hub metadata."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from typing import Dict, Optional

import yaml

from .config import PruningConfig
from .report import SparsityReport

__all__ = ["save_pruning_artifacts", "write_model_card", "write_card_picture", "SPARSITY_REPORT_NAME",
           "SPARSITY_PICTURE_NAME"]

SPARSITY_REPORT_NAME = "sparsity_report.json"
SPARSITY_PICTURE_NAME = "sparsity.png"

logger = logging.getLogger(__name__)


def write_card_picture(output_dir: str) -> Optional[str]:
    """Draw :data:`SPARSITY_PICTURE_NAME` from the weights saved in ``output_dir`` (what ``hf-prune report`` reads)
    and return its name for the card; None when no model weights were saved there, or, said in the log, when
    Pillow (the ``vision`` extra) is missing."""
    from .cli import model_weight_files, report_rows

    if not model_weight_files(output_dir):
        return None
    if importlib.util.find_spec("PIL") is None:
        logger.info("no sparsity picture in the model card: drawing it needs Pillow (pip install 'hf-prune[vision]')")
        return None
    from .sparsity_picture import write_sparsity_picture

    write_sparsity_picture(report_rows(output_dir), os.path.join(output_dir, SPARSITY_PICTURE_NAME))
    return SPARSITY_PICTURE_NAME


def save_pruning_artifacts(output_dir: str, report: SparsityReport, config: Optional[PruningConfig]) -> None:
    """Write ``pruning_config.json`` (when pruned), ``sparsity_report.json`` and ``sparsity_report.md``."""
    os.makedirs(output_dir, exist_ok=True)
    if config is not None:
        config.save_pretrained(output_dir)
    with open(os.path.join(output_dir, SPARSITY_REPORT_NAME), "w", encoding="utf-8") as handle:
        json.dump(report.to_dict(), handle, indent=2)
        handle.write("\n")
    with open(os.path.join(output_dir, "sparsity_report.md"), "w", encoding="utf-8") as handle:
        handle.write(report.to_markdown() + "\n")


def write_model_card(output_dir: str, *, model_name: str, base_model: str, report: SparsityReport,
                     config: Optional[PruningConfig], metrics: Dict[str, float], dataset: str = "squad",
                     dataset_name: str = "SQuAD v1.1", teacher: Optional[str] = None,
                     recipe: Optional[str] = None, picture: Optional[str] = None) -> str:
    """``README.md`` with Hub metadata (library, tags, dataset, base model, teacher, model-index with EM/F1)
    and a table of pattern, sparsity and scores; ``picture``: the file name (inside ``output_dir``) of the
    per-layer sparsity picture to show (:func:`write_sparsity_picture`)."""
    patterns = [] if config is None else config.pattern_names()
    pattern = "+".join(patterns) or "dense"
    if config is None:
        target = "0.00"
    elif len(config.resolved_groups()) > 1:
        target = config.describe()
    else:   # pattern "lock" without a stated target keeps what was loaded: the measured column says how much
        target = "loaded zeros" if config.target_sparsity is None else f"{config.target_sparsity:.2f}"
    exact, f1 = metrics.get("eval_exact_match", metrics.get("eval_exact")), metrics.get("eval_f1")
    results = [{"type": key, "value": round(float(value), 2), "name": label}
               for key, value, label in (("exact_match", exact, "Exact Match"), ("f1", f1, "F1")) if value is not None]
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "question-answering",
        "tags": ["question-answering", "pruning", "sparse", "hf_prune"] + patterns,
        "datasets": [dataset],
        "base_model": base_model,
        "model-index": [{"name": model_name, "results": [{
            "task": {"type": "question-answering", "name": "Question Answering"},
            "dataset": {"name": dataset_name, "type": dataset},
            "metrics": results,
        }]}],
    }
    if teacher:
        metadata["teacher_model"] = teacher
    lines = [
        "---", yaml.safe_dump(metadata, sort_keys=False).rstrip(), "---", "",
        f"# {model_name}", "",
        f"`{base_model}` fine-tuned on {dataset_name} and pruned with hf_prune"
        + (f", distilled from `{teacher}`" if teacher else "") + ".", "",
        "| pattern | target sparsity | sparsity (pruned layers) | sparsity (all Linear) | EM | F1 |",
        "|---|---|---|---|---|---|",
        f"| {pattern} | {target} | {report.pruned_sparsity:.4f} | {report.linear_sparsity:.4f} | "
        f"{_fmt(exact)} | {_fmt(f1)} |", "",
    ]
    if config is not None and config.pattern == "lock":
        lines += ["Fine-tuned with pattern `lock`: the zeros of the loaded model kept, nothing else pruned.", ""]
    elif config is not None:
        lines += ["Pruning: criterion `{}`, schedule `{}`, scope `{}`, steps {}-{} every {}.".format(
            config.criterion, config.schedule, config.scope, config.start_step, config.end_step, config.frequency), ""]
    if recipe:
        lines += [f"Recipe: `{recipe}`.", ""]
    lines += ["The weights are stored dense (zeros included); `AutoModelForQuestionAnswering.from_pretrained` loads "
              "them as they are. `pruning_config.json` and `sparsity_report.json` describe the sparsity.", "",
              *([f"![Sparsity of each weight, measured from the saved weights]({picture})", ""] if picture else []),
              "<details><summary>Per-layer sparsity</summary>", "", report.to_markdown(), "", "</details>", ""]
    path = os.path.join(output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    return path


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"
