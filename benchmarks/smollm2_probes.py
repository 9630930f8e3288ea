"""The no-training probes of ``smollm2_squad.py``: one-shot starts of the dense SFT model scored by the LM loss of
calibration batches and by the answer loss of held-out examples (``python benchmarks/smollm2_squad.py <probe>``).
Each probe's shapes and settings are named here before it runs."""
from __future__ import annotations

import dataclasses
import json

import torch

from smollm2_data import answer_batches, masked_batches, sft_dataset, trim_run_vocabulary

#: shape-probe (no training; named before it ran): the one-shot starts it scores. The full-vocabulary ones are the
#: measured runs' shapes (F1 after 100 steps: depth 17.68, width 13.67, search winner 11.51); the trimmed-vocabulary
#: ones: layers only (minitron-vocab-depth-kd, F1 24.07), FFN channels only at full and lower depths, the balanced
#: full-depth shapes candidate_shapes gives (hidden and FFN reduced alike)
PROBE_SHAPES = {
    "full": [("minitron-depth-kd", dict(num_hidden_layers=17)),
             ("minitron-width-kd", dict(hidden_size=480, num_attention_heads=6, num_key_value_heads=2,
                                        intermediate_size=1184)),
             ("minitron-search-kd", dict(num_hidden_layers=24, hidden_size=528, num_attention_heads=6,
                                         num_key_value_heads=2, intermediate_size=1312))],
    "trimmed": [("minitron-vocab-depth-kd", dict(num_hidden_layers=21)),
                *[(f"ffn-only {depth} layers", dict(ffn_only_depth=depth)) for depth in (30, 28, 26, 24, 22)],
                ("balanced full depth, every head", dict(hidden_size=432, intermediate_size=1504)),
                ("balanced full depth, 2 of 3 KV groups", dict(hidden_size=528, num_attention_heads=6,
                                                               num_key_value_heads=2, intermediate_size=1248))],
}
#: refit-probe (no training; named before it ran): the trimmed-vocabulary one-shot starts that remove FFN channels
#: or heads, each built by copying the kept units (None) and by refitting o_proj/down_proj by least squares to the
#: dense layers' outputs on the 16 calibration batches, at three ridge dampings (hf_prune.reconstruction), every
#: token weighted alike. It ran (2026-12-06): the refit lowered the LM loss on 2 of 4 shapes and raised the answer
#: loss on all (28 layers: 1.72 copied -> 2.33 / 2.49 / 3.67). refit-probe-residual: the same FFN shapes with each
#: token weighted by 1 / mean(h^2) of the residual stream it is added to (so the few massive-activation tokens do not
#: decide the fit), named before it ran
REFIT_PROBE_SHAPES = {"trimmed": [*[(f"ffn-only {depth} layers", dict(ffn_only_depth=depth)) for depth in (30, 28, 26)],
                                  ("balanced full depth, 2 of 3 KV groups", dict(
                                      hidden_size=528, num_attention_heads=6, num_key_value_heads=2,
                                      intermediate_size=1248))]}
REFIT_PROBE = (None, ("none", 0.001), ("none", 0.01), ("none", 0.1))
REFIT_PROBE_RESIDUAL_SHAPES = {"trimmed": REFIT_PROBE_SHAPES["trimmed"][:2]}
REFIT_PROBE_RESIDUAL = (None, ("residual", 0.001), ("residual", 0.01), ("residual", 0.1))
#: importance-probe (no training; named before it ran): the same two FFN shapes with their units picked by Minitron's
#: activation score and by what each unit writes to the residual stream (unit_score="output": activation x the norm
#: of its down_proj column), each with RMS ("l2") and mean-absolute ("mean") aggregation over tokens
IMPORTANCE_PROBE_SCORES = (("activation", "l2"), ("output", "l2"), ("activation", "mean"), ("output", "mean"))
#: fisher-probe (no training; named before it ran): the 28-layer FFN shape (the runs' shape) with its units picked by
#: Minitron's activation score and by the loss (unit_score="fisher": the Fisher information of each unit's mask,
#: hf_prune.fisher_importance) on the same 16 calibration batches — their LM loss on every token, and ("answers")
#: the answer tokens' loss only, the task the 100 steps train (RMS and mean over sequences). The importance-probe
#: found no better activation-type score; this asks whether the task's own loss picks better channels
FISHER_PROBE_SHAPES = {"trimmed": REFIT_PROBE_SHAPES["trimmed"][1:2]}
FISHER_PROBE_SCORES = (("activation", "l2"), ("fisher", "l2"), ("fisher", "l2", "answers"),
                       ("fisher", "mean", "answers"))
#: probe name -> what it builds (shape_probe's keyword arguments)
PROBES = {
    "shape-probe": dict(shapes=PROBE_SHAPES),
    "refit-probe": dict(shapes=REFIT_PROBE_SHAPES, refits=REFIT_PROBE),
    "refit-probe-residual": dict(shapes=REFIT_PROBE_RESIDUAL_SHAPES, refits=REFIT_PROBE_RESIDUAL),
    "importance-probe": dict(shapes=REFIT_PROBE_RESIDUAL_SHAPES, scores=IMPORTANCE_PROBE_SCORES),
    "fisher-probe": dict(shapes=FISHER_PROBE_SHAPES, scores=FISHER_PROBE_SCORES),
}


def shape_probe(tokenizer, dense_dir: str, steps: int, batch: int, max_tokens: int, *, shapes: dict, target: float,
                settings: dict, refits: tuple = (None,), scores: tuple = (("activation", "l2"),)) -> dict:
    """No training: one-shot starts scored two ways — the search's LM loss (every token of 4 calibration batches)
    and the answer loss of 64 held-out training examples — for the ``shapes`` (e.g. PROBE_SHAPES) at most ``target``
    parameters, calibrated as the runs' compression ``settings``. In PROBE_SHAPES the full-vocabulary shapes are
    those of runs already measured after 100 steps of KD, so the table shows which score ranks the recovered F1; the
    trimmed-vocabulary shapes are the depth/FFN mixes at <= 90M. Each shape is built
    once per entry of ``refits``: None copies the kept units, ``(weighting, damping)`` refits o_proj/down_proj by
    least squares on the calibration batches, tokens weighted so, with that ridge damping
    (hf_prune.reconstruction); and once per ``(unit_score, aggregation[, "answers"])`` of ``scores`` (the importance
    that picks the kept units; "answers": measured on the calibration examples with answer-only labels)."""
    from transformers import AutoModelForCausalLM

    from hf_prune.activation_importance import language_model_loss, measure_importance
    from hf_prune.llm_compression import shrink_to_shape
    from hf_prune.model_shape import ModelShape, count_parameters, ffn_only_shape
    from hf_prune.reconstruction import input_grams

    rows = []
    for vocabulary, vocabulary_shapes in shapes.items():
        model = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32)
        probe_tokenizer = tokenizer
        if vocabulary == "trimmed":
            probe_tokenizer, _, _ = trim_run_vocabulary(model, None, tokenizer, [])
        examples = sft_dataset(probe_tokenizer, steps * batch + 64, max_tokens)
        train = examples.select(range(steps * batch))
        held_out = answer_batches(examples.select(range(steps * batch, len(examples))), probe_tokenizer, batch)
        batches = masked_batches(train, probe_tokenizer, batch, settings["max_batches"]
                                 + settings["score_batches"])
        calibration = batches[:settings["max_batches"]]
        scoring = batches[settings["max_batches"]:]
        answers = answer_batches(train.select(range(settings["max_batches"] * batch)), probe_tokenizer, batch)
        importances = {score: measure_importance(model, answers if score[2:] == ("answers",) else calibration,
                                                 aggregation=score[1], unit_score=score[0],
                                                 layer_method=settings["layer_method"])
                       for score in scores}
        grams = {weighting: input_grams(model, calibration, weighting=weighting)
                 for weighting in {refit[0] for refit in refits if refit is not None}}
        original = ModelShape.of(model.config)
        rows.append({"vocabulary": vocabulary, "shape": "dense " + original.describe(),
                     "parameters": count_parameters(model.config), "lm_loss": language_model_loss(model, scoring),
                     "answer_loss": language_model_loss(model, held_out)})
        for label, spec in vocabulary_shapes:
            if "ffn_only_depth" in spec:
                shape = ffn_only_shape(model.config, target, depth=spec["ffn_only_depth"])
            else:
                shape = dataclasses.replace(original, **spec)
            for (unit_score, aggregation, *labels), importance in importances.items():
                for refit in refits:
                    weighting, damping = refit or (None, None)
                    small = shrink_to_shape(model, importance, shape, grams.get(weighting), damping or 0.0)
                    rows.append({"vocabulary": vocabulary, "label": label, "shape": shape.describe(),
                                 "unit_score": unit_score, "aggregation": aggregation,
                                 "calibration_labels": labels[0] if labels else "every token",
                                 "refit_weighting": weighting,
                                 "refit_damping": damping, "parameters": sum(p.numel() for p in small.parameters()),
                                 "lm_loss": language_model_loss(small, scoring),
                                 "answer_loss": language_model_loss(small, held_out)})
                    print(json.dumps(rows[-1]), flush=True)
                    del small
        del model
    return {"probe": rows}
