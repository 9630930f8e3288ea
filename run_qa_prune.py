#!/usr/bin/env python
"""Fine-tune a model for extractive question answering (SQuAD) while pruning it, optionally with distillation.

The same flags as transformers' ``examples/pytorch/question-answering/run_qa.py``, plus pruning
(``--do_prune``, ``--target_sparsity``, ``--pruning_pattern`` ...) and distillation
(``--teacher_model_name_or_path`` ...) flags, and ``--recipe`` for a YAML file of defaults::

    python run_qa_prune.py --model_name_or_path prajjwal1/bert-mini
    python run_qa_prune.py --model_name_or_path ../shared/models/all-MiniLM-L6-v2 \\
        --train_file ../shared/data/squad/train.json --validation_file ../shared/data/squad/validation.json \\
        --recipe recipes/all-MiniLM-L6-v2/4x1.yaml --output_dir outputs/minilm-4x1
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional

import datasets
import transformers
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    PreTrainedTokenizerFast,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from hf_prune import PruningConfig, PruningTrainerCallback, add_pruning_callback, from_pretrained, slim, sparsity_report
from hf_prune import hub_loading
from hf_prune.config_io import load_yaml
from hf_prune.distillation import DistillationConfig, saved_form
from hf_prune.export import save_pruning_artifacts, write_card_picture, write_model_card
from hf_prune.recipe import load_recipe as check_recipe
from hf_prune.run_outputs import (MarkCheckpoints, check_evaluation_output, check_output_location, prepare_output_dir,
                                  publish, save_metrics, staging_dir)
from hf_prune.slimming import load_config
from hf_prune.value_checks import check_dataclass_numbers, one_line
from hf_prune.patterns import get_pattern
from hf_prune.qa import (
    QuestionAnsweringDistillationTrainer,
    QuestionAnsweringTrainer,
    compute_squad,
    format_for_metric,
    load_qa_datasets,
    postprocess_qa_predictions,
    tokenize_splits,
    window_length,
)

logger = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "4x1.yaml"
OFFLINE_HINT = ("use a local folder for --model_name_or_path (and --teacher_model_name_or_path) and local SQuAD "
                "files for --train_file/--validation_file")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Model id on the Hub or path to a local folder."})
    config_name: Optional[str] = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Tokenizer name or path, if not the model's."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where downloads from the Hub are stored."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token for private models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})


@dataclass
class DataTrainingArguments:
    dataset_name: Optional[str] = field(default=None, metadata={
        "help": "Dataset on the Hub (default 'squad' when no local file is given)."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Dataset configuration name."})
    train_file: Optional[str] = field(default=None, metadata={"help": "SQuAD JSON (nested or flat), JSON lines or CSV."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Evaluation file, same formats."})
    test_file: Optional[str] = field(default=None, metadata={"help": "Prediction file, same formats."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the tokenized features."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for tokenization."})
    max_seq_length: int = field(default=384, metadata={"help": "Tokens per window (question + context)."})
    pad_to_max_length: bool = field(default=True, metadata={
        "help": "Pad every window to max_seq_length; False pads each batch to its longest window."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Keep only this many training examples."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Keep only this many evaluation examples."})
    max_predict_samples: Optional[int] = field(default=None, metadata={"help": "Keep only this many test examples."})
    version_2_with_negative: bool = field(default=False, metadata={"help": "SQuAD v2.0: questions may have no answer."})
    null_score_diff_threshold: float = field(default=0.0, metadata={
        "help": "v2.0: answer empty when null score - best span score exceeds this."})
    doc_stride: int = field(default=128, metadata={"help": "Overlap in tokens between windows of a long context."})
    n_best_size: int = field(default=20, metadata={"help": "Start/end candidates searched per window."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer in tokens."})


@dataclass
class PruningArguments:
    recipe: Optional[str] = field(default=None, metadata={
        "help": "YAML recipe of defaults (path, or a file name in recipes/<model>/). Flags override it. Default: "
                f"recipes/<model>/{DEFAULT_RECIPE} when it exists."})
    do_prune: bool = field(default=True, metadata={
        "help": "Prune while fine-tuning (a flag like --do_train; default: as the recipe says, else True). "
                "--do_prune False: dense fine-tuning."})
    target_sparsity: Optional[float] = field(default=None, metadata={"help": "Final sparsity in [0, 1)."})
    pruning_pattern: Optional[str] = field(default=None, metadata={"help": "'NxM' blocks (4x1, 1x1, ...) or 'N:M' (2:4)."})
    pruning_criterion: Optional[str] = field(default=None, metadata={
        "help": "snip_momentum | snip | magnitude | gradient."})
    pruning_schedule: Optional[str] = field(default=None, metadata={"help": "cubic | exp | linear | cos | oneshot."})
    pruning_start_step: Optional[int] = field(default=None, metadata={"help": "First pruning event (optimizer step)."})
    pruning_end_step: Optional[int] = field(default=None, metadata={"help": "Step at which the target is reached."})
    pruning_frequency: Optional[int] = field(default=None, metadata={"help": "Steps between pruning events."})
    pruning_scope: Optional[str] = field(default=None, metadata={"help": "global | local."})
    prune_include: Optional[List[str]] = field(default=None, metadata={"help": "Regexes of module names to prune."})
    prune_exclude: Optional[List[str]] = field(default=None, metadata={"help": "Regexes of module names to keep dense."})
    pruning_keep_multiple_of: Optional[int] = field(default=None, metadata={
        "help": "head/channel: each layer keeps a multiple of this many units (8 or 64 suit GPU kernels)."})
    slim: bool = field(default=False, metadata={
        "help": "After training, remove pruned attention heads and FFN channels for real (patterns 'head'/'channel') "
                "and save the smaller model; load it again with hf_prune.from_pretrained."})


@dataclass
class DistillationArguments:
    teacher_model_name_or_path: Optional[str] = field(default=None, metadata={
        "help": "Fine-tuned QA teacher sharing the student's tokenizer; enables distillation."})
    distill_method: Optional[str] = field(default=None, metadata={"help": "logits | reused_classifier."})
    distill_temperature: Optional[float] = field(default=None, metadata={"help": "Softmax temperature of KD."})
    distill_loss_weight: Optional[float] = field(default=None, metadata={"help": "Weight of the KD loss."})
    hard_label_weight: Optional[float] = field(default=None, metadata={"help": "Weight of the student's own loss."})
    feature_weight: Optional[float] = field(default=None, metadata={"help": "Weight of SimKD's feature loss."})
    hidden_state_weight: Optional[float] = field(default=None, metadata={
        "help": "Weight of the layer-wise hidden-state loss (0 = off; layer map from the recipe, else uniform)."})
    hidden_state_loss: Optional[str] = field(default=None, metadata={"help": "mse | cosine."})
    attention_weight: Optional[float] = field(default=None, metadata={
        "help": "Weight of attention-map KD (student and teacher then run eager attention, which returns the maps)."})


@dataclass
class OutputArguments:
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace what an earlier run left in --output_dir (its model, results and checkpoints). Without it "
                "a folder holding a finished model is refused and one holding checkpoints resumes from the last."})


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, PruningArguments, DistillationArguments, TrainingArguments,
                    OutputArguments)


class ParsedArguments(NamedTuple):
    model: ModelArguments
    data: DataTrainingArguments
    pruning: PruningArguments
    distillation: DistillationArguments
    training: TrainingArguments
    output: OutputArguments
    recipe_path: Optional[Path]
    recipe: dict
    given: frozenset  # the flags this command (or its argument file) set, by destination name
PRUNING_FLAGS = {"target_sparsity": "target_sparsity", "pruning_pattern": "pattern", "pruning_criterion": "criterion",
                 "pruning_schedule": "schedule", "pruning_start_step": "start_step", "pruning_end_step": "end_step",
                 "pruning_frequency": "frequency", "pruning_scope": "scope", "prune_include": "include",
                 "prune_exclude": "exclude", "pruning_keep_multiple_of": "keep_multiple_of"}
DISTILL_FLAGS = {"distill_method": "method", "distill_temperature": "temperature",
                 "distill_loss_weight": "distill_loss_weight", "hard_label_weight": "hard_label_weight",
                 "feature_weight": "feature_weight", "hidden_state_weight": "hidden_state_weight",
                 "hidden_state_loss": "hidden_state_loss", "attention_weight": "attention_weight"}


# ---- arguments and recipes ----------------------------------------------------------------------------------
def find_recipe(recipe: Optional[str], model_name_or_path: str) -> Optional[Path]:
    """An explicit recipe (path, or file name in the model's recipe folder), else the model's default."""
    folder = _recipe_folder(model_name_or_path)
    if recipe:
        for candidate in (Path(recipe), RECIPES_DIR / recipe, *([folder / recipe] if folder else [])):
            if candidate.is_file():
                return candidate
        available = sorted(str(p.relative_to(RECIPES_DIR.parent)) for p in RECIPES_DIR.glob("*/*.yaml"))
        raise ValueError(f"recipe {recipe!r} not found; available: {', '.join(available)}")
    default = folder / DEFAULT_RECIPE if folder else None
    return default if default is not None and default.is_file() else None


def _recipe_folder(model_name_or_path: str) -> Optional[Path]:
    name = os.path.basename(model_name_or_path.rstrip("/")).lower()
    folders = sorted((p for p in RECIPES_DIR.iterdir() if p.is_dir()), key=lambda p: -len(p.name)) \
        if RECIPES_DIR.is_dir() else []
    return next((p for p in folders if name == p.name.lower() or name.startswith(p.name.lower() + "-")), None)


def load_recipe(path: Path, parser: HfArgumentParser) -> dict:
    """The recipe with every section checked (:func:`hf_prune.recipe.load_recipe`) against this script's flags."""
    return check_recipe(str(path), parser._actions)


def given_flags(parser: HfArgumentParser, argv: List[str]) -> frozenset:
    """Destinations of the flags ``argv`` sets, in any spelling argparse accepts (``--do-eval``, ``--do_eval``,
    ``--do_eval=True``, an unambiguous prefix): parsed with every default suppressed."""
    probe = HfArgumentParser(ARGUMENT_CLASSES)
    for action in probe._actions:
        action.default, action.required = argparse.SUPPRESS, False
    namespace, _ = probe.parse_known_args(argv)
    return frozenset(vars(namespace))


def parse_arguments(argv: List[str]) -> ParsedArguments:
    """Every argument dataclass, the recipe and the flags given. The recipe's ``arguments`` become parser
    defaults, so a flag on the command line (or in a .json/.yaml argument file) wins."""
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    file_args = None
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        if argv[0].endswith((".yaml", ".yml")):
            file_args = load_yaml(argv[0])
        else:
            with open(argv[0], encoding="utf-8") as handle:
                file_args = json.load(handle)
        given = frozenset(file_args)
    else:
        given = given_flags(parser, argv)
    pre = HfArgumentParser((ModelArguments, PruningArguments)).parse_known_args(argv)[0] if file_args is None else None
    model_name = file_args.get("model_name_or_path") if file_args is not None else pre.model_name_or_path
    recipe_arg = file_args.get("recipe") if file_args is not None else pre.recipe
    if not model_name:
        raise ValueError("--model_name_or_path is required")
    recipe_path = find_recipe(recipe_arg, model_name)
    recipe = load_recipe(recipe_path, parser) if recipe_path else {}
    defaults = dict(recipe.get("arguments") or {})
    if not given & {"do_train", "do_eval", "do_predict"} and not defaults.keys() & {"do_train", "do_eval"}:
        defaults.update(do_train=True, do_eval=True)
    if "output_dir" not in given:
        suffix = recipe_path.stem if recipe_path else ("prune" if defaults.get("do_prune", True) else "dense")
        defaults["output_dir"] = os.path.join("outputs", f"{os.path.basename(model_name.rstrip('/'))}-{suffix}")
    if file_args is not None:
        parsed = parser.parse_dict({**defaults, **file_args})
    else:
        parser.set_defaults(**defaults)
        parsed = parser.parse_args_into_dataclasses(args=argv)
    return ParsedArguments(*parsed, recipe_path, recipe, given | frozenset(recipe.get("arguments") or {}))


#: ranges of the numeric flags, beyond being finite (every float flag is): (minimum, maximum, minimum excluded,
#: maximum excluded); a None bound is open. ``max_*_samples`` are checked when given.
FLAG_RANGES = {
    "max_seq_length": (1, None, False, False), "doc_stride": (0, None, False, False),
    "n_best_size": (1, None, False, False), "max_answer_length": (1, None, False, False),
    "max_train_samples": (1, None, False, False), "max_eval_samples": (1, None, False, False),
    "max_predict_samples": (1, None, False, False), "weight_decay": (0, None, False, False),
    "label_smoothing_factor": (0, 1, False, True), "learning_rate": (0, None, False, False),
    "max_grad_norm": (0, None, False, False), "adam_beta1": (0, 1, False, True), "adam_beta2": (0, 1, False, True),
    "adam_epsilon": (0, None, False, False), "warmup_steps": (0, None, False, False),
    "num_train_epochs": (0, None, True, False),
}  # distillation weights and temperature: DistillationConfig's ranges (checked before anything loads too)


def check_numeric_arguments(parsed: "ParsedArguments") -> None:
    """Every float flag finite and every flag of :data:`FLAG_RANGES` in its range, before anything is loaded:
    ``--weight_decay nan`` would otherwise turn every weight into NaN and still exit 0."""
    for arguments in parsed[:6]:
        check_dataclass_numbers(arguments, FLAG_RANGES, prefix="--")


def build_pruning_config(prune_args: PruningArguments, recipe: dict, recipe_path: Optional[Path],
                         given: frozenset = frozenset()) -> Optional[PruningConfig]:
    """The recipe's ``pruning`` section with pruning flags on top; None for dense fine-tuning. ``do_prune``
    counts when given (flag or recipe argument); otherwise pruning flags or a pruning section decide."""
    flags = {field_name: getattr(prune_args, flag) for flag, field_name in PRUNING_FLAGS.items()
             if getattr(prune_args, flag) is not None}
    do_prune = prune_args.do_prune
    if "do_prune" not in given:
        do_prune = bool(flags) or "pruning" not in recipe or recipe["pruning"] is not None
    if not do_prune:
        if flags:
            raise ValueError(f"--do_prune False conflicts with pruning flags {sorted(flags)}: drop one or the other")
        return None
    section = dict(recipe.get("pruning") or {})
    config = PruningConfig.from_dict({**section, **flags}, source=str(recipe_path or "command line"))
    patterns = sorted({group.pattern for group in config.resolved_groups()})
    if prune_args.slim and not any(get_pattern(pattern).structured for pattern in patterns):
        raise ValueError(f"--slim removes whole attention heads and FFN channels, but the pruning patterns {patterns} "
                         "zero scattered weights and leave none to remove: prune with pattern 'head' or 'channel' "
                         "(e.g. in a group), or drop --slim")
    return config


def build_distillation_settings(distill_args: DistillationArguments, recipe: dict) -> Optional[dict]:
    """Distillation config fields from the recipe's ``distillation`` section and the flags; None without teacher."""
    flags = {name: getattr(distill_args, flag) for flag, name in DISTILL_FLAGS.items()
             if getattr(distill_args, flag) is not None}
    if not distill_args.teacher_model_name_or_path:
        if flags:
            raise ValueError(f"distillation flags {sorted(flags)} need --teacher_model_name_or_path")
        return None
    return DistillationConfig.from_dict({**(recipe.get("distillation") or {}), **flags}).to_dict()


# ---- model and data -------------------------------------------------------------------------------------------
def from_hub(what: str, name: str, load):
    """:func:`hf_prune.hub_loading.from_hub_or_local`, whose offline message names this script's local flags."""
    return hub_loading.from_hub_or_local(what, name, load, OFFLINE_HINT)


def load_model_and_tokenizer(model_args: ModelArguments):
    hub = dict(cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
               trust_remote_code=model_args.trust_remote_code)
    name = model_args.model_name_or_path
    config = from_hub("model config", model_args.config_name or name,
                      lambda: load_config(model_args.config_name or name, **hub))  # slim folders too
    tokenizer = from_hub("tokenizer", model_args.tokenizer_name or name, lambda: AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or name, use_fast=True, **hub))
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ValueError(f"{name}: this script needs a fast tokenizer (offset mappings); got {type(tokenizer).__name__}")
    model = from_hub("model", name, lambda: from_pretrained(  # slim models too
        name, auto_class=AutoModelForQuestionAnswering, config=config, **hub))
    return tokenizer, model


def load_raw_datasets(data_args: DataTrainingArguments, cache_dir: Optional[str]) -> datasets.DatasetDict:
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    if any(files.values()) and data_args.dataset_name:
        raise ValueError("give either --dataset_name or local --train_file/--validation_file/--test_file, not both")
    dataset_name = data_args.dataset_name or (None if any(files.values()) else "squad")
    if dataset_name is None:
        return load_qa_datasets(None, None, files, data_args.version_2_with_negative)
    return from_hub("dataset", dataset_name, lambda: load_qa_datasets(
        dataset_name, data_args.dataset_config_name, {}, data_args.version_2_with_negative, cache_dir))


# ---- trainer ------------------------------------------------------------------------------------------------
def build_trainer(model, tokenizer, training_args, data_args, splits, pruning_config, distillation, teacher_name,
                  model_args, make_pruning_callback: Callable[[PruningConfig], TrainerCallback] = PruningTrainerCallback,
                  prediction_dir: Optional[str] = None):
    """The QA Trainer (with distillation when a teacher is given) and the pruning callback first in line;
    predictions are written into ``prediction_dir`` (the run's staging folder)."""
    train_features, eval_examples, eval_features, _, _ = splits

    def post_process(examples, features, logits, stage="eval"):
        answers = postprocess_qa_predictions(
            examples, features, logits, version_2_with_negative=data_args.version_2_with_negative,
            n_best_size=data_args.n_best_size, max_answer_length=data_args.max_answer_length,
            null_score_diff_threshold=data_args.null_score_diff_threshold,
            output_dir=prediction_dir if training_args.should_save else None, prefix=stage)
        predictions, references = format_for_metric(answers, examples, data_args.version_2_with_negative)
        return EvalPrediction(predictions=predictions, label_ids=references)

    def compute_metrics(prediction: EvalPrediction):
        return compute_squad(prediction.predictions, prediction.label_ids, data_args.version_2_with_negative)

    collator = default_data_collator if data_args.pad_to_max_length else DataCollatorWithPadding(
        tokenizer, pad_to_multiple_of=8 if training_args.fp16 or training_args.bf16 else None)
    common = dict(model=model, args=training_args, train_dataset=train_features, eval_dataset=eval_features,
                  eval_examples=eval_examples, processing_class=tokenizer, data_collator=collator,
                  post_process_function=post_process, compute_metrics=compute_metrics)
    if distillation is None:
        trainer = QuestionAnsweringTrainer(**common)
    else:
        trust = dict(cache_dir=model_args.cache_dir, token=model_args.token,
                     trust_remote_code=model_args.trust_remote_code)  # explicit: transformers never prompts then
        teacher = from_hub("teacher model", teacher_name, lambda: from_pretrained(
            teacher_name, auto_class=AutoModelForQuestionAnswering, **trust))
        teacher_tokenizer = from_hub("teacher tokenizer", teacher_name, lambda: AutoTokenizer.from_pretrained(
            teacher_name, **trust))  # checked against the student's
        trainer = QuestionAnsweringDistillationTrainer(teacher_model=teacher, teacher_processing_class=teacher_tokenizer,
                                                       distillation_config=DistillationConfig(**distillation), **common)
    if pruning_config is not None:
        add_pruning_callback(trainer, make_pruning_callback(pruning_config))
    trainer.add_callback(MarkCheckpoints())
    return trainer


def pruning_callback(trainer) -> Optional[PruningTrainerCallback]:
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, PruningTrainerCallback)), None)


# ---- main ----------------------------------------------------------------------------------------------------
#: the script publishes the final folder's files itself (staged together), so the callback writes only checkpoints'
SCRIPT_CALLBACK = partial(PruningTrainerCallback, save_artifacts=False)


def main(argv: Optional[List[str]] = None,
         make_pruning_callback: Callable[[PruningConfig], TrainerCallback] = SCRIPT_CALLBACK) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``), train, evaluate, save; returns the metrics. Benchmarks pass
    another ``make_pruning_callback`` (e.g. a wrapper of another library's pruner) to compare pruners in
    otherwise identical runs. Every user error is a ``ValueError`` raised before training starts."""
    argv = sys.argv[1:] if argv is None else argv
    parsed = parse_arguments(argv)
    model_args, data_args, prune_args, distill_args, training_args = parsed[:5]
    check_numeric_arguments(parsed)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    for module_logger in (logger, logging.getLogger("hf_prune"), datasets.utils.logging, transformers.utils.logging):
        (module_logger.setLevel if hasattr(module_logger, "setLevel") else module_logger.set_verbosity)(log_level)
    pruning_config = build_pruning_config(prune_args, parsed.recipe, parsed.recipe_path, parsed.given)
    if not training_args.do_train and not prune_args.slim:
        pruning_config = None  # an evaluation applies no pruning: nothing of the recipe's describes this model
    distillation = build_distillation_settings(distill_args, parsed.recipe) if training_args.do_train else None
    if training_args.push_to_hub and not os.environ.get("HF_HUB_OFFLINE") and not hub_loading.hub_reachable():
        raise SystemExit("error: --push_to_hub needs the Hugging Face Hub, which is unreachable from here; drop "
                         "--push_to_hub and upload the output folder later.")
    logger.info("recipe: %s; pruning: %s; distillation: %s", parsed.recipe_path, pruning_config, distillation)
    resume = training_args.resume_from_checkpoint
    if training_args.should_save:
        check_output_location(training_args.output_dir, {
            "model": model_args.model_name_or_path, "teacher": distill_args.teacher_model_name_or_path,
            "config": model_args.config_name, "tokenizer": model_args.tokenizer_name})
    if training_args.do_train and training_args.should_save:
        resume = prepare_output_dir(training_args.output_dir, parsed.output.overwrite_output_dir, resume)
    elif training_args.should_save:
        check_evaluation_output(training_args.output_dir, model_args.model_name_or_path,
                                parsed.output.overwrite_output_dir)
    set_seed(training_args.seed)

    raw = load_raw_datasets(data_args, model_args.cache_dir)
    tokenizer, model = load_model_and_tokenizer(model_args)
    max_len = window_length(data_args.max_seq_length, data_args.doc_stride, tokenizer, model)
    splits = tokenize_splits(raw, tokenizer, data_args, training_args, max_len)
    staging = staging_dir(training_args.output_dir) if training_args.should_save else None
    trainer = build_trainer(model, tokenizer, training_args, data_args, splits, pruning_config, distillation,
                            distill_args.teacher_model_name_or_path, model_args, make_pruning_callback, staging)

    metrics, results = {}, {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=resume)
        results["train"] = dict(result.metrics, train_samples=len(splits[0]))
    callback = pruning_callback(trainer)
    if callback is not None and callback.pruner is not None:
        pruning_config = callback.pruner.config  # as applied: steps resolved, or the resumed checkpoint's
    with saved_form(trainer.model):  # report and count the model as it is saved (SimKD head folded, projections out)
        report = sparsity_report(trainer.model, callback.pruner.patterns() if callback and callback.pruner else None)
        report.target_not_reached = callback.pruner.target_not_reached if callback and callback.pruner else None
        summary = slim(trainer.model) if prune_args.slim else None  # after the report: it removes the zeros counted
    sparsity = {"sparsity_pruned_layers": report.pruned_sparsity, "sparsity_all_linear": report.linear_sparsity,
                "pruning_pattern": "+".join(pruning_config.pattern_names()) if pruning_config else "dense"}
    if pruning_config and len(pruning_config.resolved_groups()) > 1:
        sparsity["pruning_groups"] = pruning_config.describe()
    if summary is not None:
        sparsity.update(parameters_before_slim=summary.parameters_before, parameters_after_slim=summary.parameters_after,
                        attention_heads_kept=summary.heads_after, ffn_channels_kept=summary.channels_after)
    if training_args.do_eval:
        results["eval"] = dict(trainer.evaluate(), eval_samples=len(splits[1]), **sparsity)
    if training_args.do_predict:
        results["predict"] = trainer.predict(splits[4], splits[3]).metrics
    for split, values in results.items():
        trainer.log_metrics(split, values)
        metrics.update(values)
    saves_model = training_args.do_train or prune_args.slim

    def card(folder: str) -> None:
        picture = write_card_picture(folder)
        write_model_card(folder, model_name=os.path.basename(training_args.output_dir.rstrip("/")),
                         base_model=model_args.model_name_or_path, report=report, config=pruning_config,
                         metrics=metrics, dataset=data_args.dataset_name or "squad",
                         dataset_name="SQuAD v2.0" if data_args.version_2_with_negative else "SQuAD v1.1",
                         teacher=distill_args.teacher_model_name_or_path,
                         recipe=str(parsed.recipe_path) if parsed.recipe_path else None, picture=picture)

    if staging is not None:  # every final file of this run, written together, then moved into place
        for split, values in results.items():
            save_metrics(staging, split, values, metrics)
        if saves_model:
            trainer.save_model(staging)
            trainer.state.save_to_json(os.path.join(staging, "trainer_state.json"))
            save_pruning_artifacts(staging, report, pruning_config)
            card(staging)
        publish(staging, training_args.output_dir, replace_run=saves_model)
    trainer.model_card_writer = lambda: card(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_tags="squad", tags=["pruning", "sparse"])
    return metrics


def run(argv: Optional[List[str]] = None) -> int:
    """The command line: a user error is one ``error: ...`` line and exit status 2; a bug keeps its traceback."""
    try:
        main(argv)
    except ValueError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
