"""PruningConfig.from_inc: INC WeightPruningConfig arguments as INC's users wrote them (written out here, not
imported from INC), mapped key by key; what hf_prune does not do is refused by name. Where INC is installed, the
same config prunes a tiny model to the same target and pattern in both tools."""
import os
import sys

import pytest
from transformers import Trainer

from hf_prune import PruningConfig, PruningTrainerCallback, sparsity_report
from hf_prune.config import DEFAULT_EXCLUDE
from tests.conftest import QADataset, tiny_bert_qa
from tests.test_callback import _args

# INC's SQuAD pruning example (bert-mini, 4x1 at 0.8, snip-momentum, global ranking, heads and embeddings excluded)
INC_SQUAD_4X1 = dict(target_sparsity=0.8, pruning_type="snip_momentum", pattern="4x1", start_step=0 + 1,
                     end_step=9000, pruning_frequency=1000, pruning_scope="global",
                     excluded_op_names=["qa_outputs", "pooler", ".*embeddings*"], sparsity_decay_type="exp")
# INC's 2:4 example: the same with an N:M pattern at its maximum
INC_SQUAD_2_4 = dict(INC_SQUAD_4X1, target_sparsity=0.5, pattern="2:4")
# INC's README example of per-op configs (a list of dicts, global keys as defaults); its first entry uses channelx1
INC_README_LOCAL = [
    {"pruning_scope": "local", "target_sparsity": 0.6, "op_names": ["query", "key", "value"], "pattern": "4x1"},
    {"pruning_type": "snip", "target_sparsity": 0.5, "op_names": ["attention.output.dense"]},
]


def test_squad_example_maps_key_by_key():
    config = PruningConfig.from_inc(**INC_SQUAD_4X1)
    assert (config.target_sparsity, config.pattern, config.criterion, config.scope, config.schedule) == (
        0.8, "4x1", "snip_momentum", "global", "exp")
    assert (config.start_step, config.end_step, config.frequency) == (1, 9000, 1000)
    assert config.exclude == DEFAULT_EXCLUDE + ["qa_outputs", "pooler", ".*embeddings*"]
    assert PruningConfig.from_inc(**INC_SQUAD_2_4).pattern == "2:4"


def test_inc_defaults_apply_where_a_key_is_absent():
    config = PruningConfig.from_inc(start_step=1, end_step=10)
    assert (config.target_sparsity, config.schedule, config.pattern, config.criterion) == (0.9, "exp", "4x1",
                                                                                            "snip_momentum")
    unset = PruningConfig.from_inc()        # INC's 0/0 steps are left for hf_prune to size from max_steps
    assert (unset.start_step, unset.end_step) == (None, None)
    assert PruningConfig.from_inc(sparsity_decay_type="cube", start_step=1, end_step=9).schedule == "cubic"


def test_per_op_configs_become_groups_and_nothing_else_is_pruned(tmp_path):
    config = PruningConfig.from_inc(INC_README_LOCAL, target_sparsity=0.8, start_step=1, end_step=4,
                                    pruning_frequency=1)
    groups = config.resolved_groups()
    assert [(g.name, g.include, g.scope, g.target_sparsity, g.criterion) for g in groups[:2]] == [
        ("inc_0", ["query", "key", "value"], "local", 0.6, "snip_momentum"),
        ("inc_1", ["attention.output.dense"], "global", 0.5, "snip")]
    model = tiny_bert_qa(seed=1)
    callback = PruningTrainerCallback(config)
    Trainer(model=model, args=_args(tmp_path, max_steps=5), train_dataset=QADataset(40), callbacks=[callback]).train()
    pruned = {row.name for row in sparsity_report(model).layers if row.zeros}
    assert pruned and all(any(op in name for op in ("query", "key", "value", "attention.output.dense"))
                          for name in pruned)                                  # the FFN stays dense, as in INC
    assert "bert.encoder.layer.0.intermediate.dense" not in callback.pruner.masks


def test_pattern_lock_is_the_lock_pattern():
    assert PruningConfig.from_inc(pruning_type="pattern_lock").pattern == "lock"


@pytest.mark.parametrize("keys, message", [
    (dict(pruning_type="snip_momentum_progressive", start_step=1, end_step=9), "progressive masks"),
    (dict(pruning_type="retrain_free"), "pruning_type 'retrain_free' is not supported"),
    (dict(pattern="channelx1", start_step=1, end_step=9), "'channelx1' .* has no hf_prune equivalent"),
    (dict(pattern="1xchannel", start_step=1, end_step=9), "'1xchannel' .* output rows"),
    (dict(sparsity_decay_type="cosine"), "sparsity_decay_type 'cosine' is not supported"),
    (dict(low_memory_usage=True), "low_memory_usage=True is not supported"),
    (dict(resume_from_pruned_checkpoint=True), "use pattern 'lock'"),
    (dict(reg_type="group_lasso"), "reg_type='group_lasso'"),
    (dict(pruning_op_types=["Conv"]), "must include 'Linear'"),
    (dict(start_step=0, end_step=0), "would prune at step 0"),
    (dict(taget_sparsity=0.8), r"INC key\(s\) \['taget_sparsity'\]"),
])
def test_what_hf_prune_does_not_do_is_refused_by_name(keys, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig.from_inc(**keys)


def test_refusal_inside_a_per_op_dict_names_it():
    with pytest.raises(ValueError, match=r"pruning_configs\[0\]: INC pattern 'channelx1'"):
        PruningConfig.from_inc([{"pattern": "channelx1", "op_names": ["query"]}], start_step=1, end_step=9)


def test_same_config_same_target_and_pattern_as_inc(tmp_path):
    pytest.importorskip("neural_compressor.training", reason="neural-compressor is not installed (benchmark-only; "
                        "see benchmarks/RESULTS.md for its separate environment)")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from inc_pruning import INCPruningCallback
    from neural_compressor.training import WeightPruningConfig

    keys = dict(target_sparsity=0.5, pattern="4x1", pruning_type="snip_momentum", start_step=1, end_step=4,
                pruning_frequency=1, excluded_op_names=["qa_outputs"])
    results = {}
    for tool, callback in (("hf_prune", PruningTrainerCallback(PruningConfig.from_inc(**keys))),
                           ("inc", INCPruningCallback(WeightPruningConfig(**keys)))):
        model = tiny_bert_qa(seed=2)
        Trainer(model=model, args=_args(tmp_path / tool, max_steps=6), train_dataset=QADataset(48),
                callbacks=[callback]).train()
        results[tool] = sparsity_report(model)
    for tool, report in results.items():
        encoder = [row for row in report.layers if "encoder" in row.name]
        assert sum(r.zeros for r in encoder) / sum(r.numel for r in encoder) == pytest.approx(0.5, abs=0.02), tool
    assert results["hf_prune"].linear_sparsity == pytest.approx(results["inc"].linear_sparsity, abs=0.02)


@pytest.mark.parametrize("call, message", [
    (lambda: PruningConfig.from_inc(op_names="layer"), r"op_names must be a list of strings, got 'layer' \(a single string"),
    (lambda: PruningConfig.from_inc(excluded_op_names=[3]), "excluded_op_names must be a list of strings"),
    (lambda: PruningConfig.from_inc([5]), r"pruning_configs\[0\] must be a dict of INC keys, got 5 \(int\)"),
    (lambda: PruningConfig.from_inc("layer"), "pruning_configs must be a list of dicts"),
    (lambda: PruningConfig.from_inc(pruning_type=None), r"pruning_type must be a string, got None"),
    (lambda: PruningConfig.from_inc(pattern=4), r"pattern must be a string, got 4 \(int\)"),
    (lambda: PruningConfig.from_inc([{"op_names": "layer"}]), r"pruning_configs\[0\]: op_names must be a list"),
])
def test_wrong_types_are_refused_naming_the_key(call, message):
    with pytest.raises(ValueError, match=message):
        call()
