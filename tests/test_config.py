import json

import pytest

from hf_prune.config import CONFIG_NAME, PruningConfig


def test_defaults_are_valid_and_documented_values():
    config = PruningConfig()
    assert (config.target_sparsity, config.pattern, config.criterion, config.schedule, config.scope) == (
        0.8, "4x1", "snip_momentum", "cubic", "global")
    assert (config.min_sparsity_per_layer, config.max_sparsity_per_layer, config.momentum) == (0.0, 0.98, 0.9)


def test_round_trip_dict_and_files(tmp_path):
    config = PruningConfig(target_sparsity=0.5, pattern="2:4", end_step=100, frequency=10, scope="local",
                           include=["intermediate"], groups=[{"include": ["attention"], "pattern": "4x1"}])
    assert PruningConfig.from_dict(config.to_dict()) == config
    config.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert list(saved) == sorted(saved)
    assert PruningConfig.from_pretrained(str(tmp_path)) == config


def test_from_pretrained_refuses_unknown_keys(tmp_path):
    """Issue 25 (8): a typo in a saved config is refused by name, not loaded as the default with a warning."""
    data = PruningConfig(end_step=5).to_dict()
    data["targt_sparsity"] = data.pop("target_sparsity")
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"pruning_config.json: unknown pruning config key\(s\) \['targt_sparsity'\]"):
        PruningConfig.from_pretrained(str(tmp_path))


def test_a_newer_format_drops_its_new_keys_with_a_warning(tmp_path, caplog):
    path = PruningConfig(end_step=5).save_pretrained(str(tmp_path))
    data = json.loads(open(path).read())
    assert data["hf_prune_format"] == 1
    data.update(hf_prune_format=2, future_option=1)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    assert PruningConfig.from_pretrained(str(tmp_path)).end_step == 5
    assert "future_option" in caplog.text
    data.update(hf_prune_format=1)  # the same key in a file of this format is a typo: refused
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"unknown pruning config key\(s\) \['future_option'\]"):
        PruningConfig.from_pretrained(str(tmp_path))


def test_from_dict_is_strict():
    with pytest.raises(ValueError, match=r"unknown pruning config key\(s\) \['sparsity'\]"):
        PruningConfig.from_dict({"sparsity": 0.5})


def test_yaml_recipe_section_and_unknown_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pruning:\n  target_sparsity: 0.5\n  pattern: '2:4'\ntraining:\n  learning_rate: 1.0e-4\n")
    assert PruningConfig.from_yaml(str(recipe)).pattern == "2:4"
    bad = tmp_path / "bad.yaml"
    bad.write_text("target_sparsity: 0.5\npatern: 4x1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown pruning config key\(s\) \['patern'\]"):
        PruningConfig.from_yaml(str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        PruningConfig.from_yaml(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("kwargs,message", [
    (dict(target_sparsity=1.0), r"target_sparsity must be in \[0, 1\), got 1.0"),
    (dict(target_sparsity=-0.1), r"target_sparsity must be in \[0, 1\), got -0.1"),
    (dict(target_sparsity="0.5"), "target_sparsity must be a number"),
    (dict(pattern="4y1"), "unknown pruning pattern '4y1'"),
    (dict(criterion="taylor"), "unknown pruning criterion 'taylor'"),
    (dict(schedule="poly"), "unknown pruning schedule 'poly'"),
    (dict(pattern="2:4", target_sparsity=0.6), r"above what pattern '2:4' allows \(at most 1 - N/M = 0.5\)"),
    (dict(start_step=10, end_step=5), r"start_step \(10\) must be <= end_step \(5\)"),
    (dict(frequency=0), "frequency must be a positive number of steps, got 0"),
    (dict(min_sparsity_per_layer=0.5, max_sparsity_per_layer=0.4), "min_sparsity_per_layer <= max_sparsity_per_layer"),
    (dict(target_sparsity=0.9, max_sparsity_per_layer=0.8), "must lie between"),
    (dict(scope="layer"), "scope must be one of"),
    (dict(block_reduce="max"), "block_reduce must be one of"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(start_step=0), "start_step must be >= 1"),
    (dict(schedule="oneshot", start_step=5, end_step=9), "end_step must equal it"),
    (dict(include=["("]), "not a valid regular expression"),
    (dict(exclude="pooler"), "exclude must be a list"),
    (dict(groups=[{"pattern": "2:4"}]), r"groups\[0\] needs an 'include'"),
    (dict(groups=[{"include": ["x"], "patern": "2:4"}]), r"groups\[0\] has unknown keys \['patern'\]"),
    (dict(groups=[{"include": ["x"], "pattern": "2:4", "target_sparsity": 0.8}]), "above what pattern '2:4'"),
])
def test_bad_input_is_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig(**kwargs)


def test_magnitude_may_start_at_step_zero():
    assert PruningConfig(criterion="magnitude", start_step=0, end_step=0).start_step == 0


def test_groups_inherit_top_level_fields():
    config = PruningConfig(target_sparsity=0.7, frequency=5, end_step=50,
                           groups=[{"include": ["ffn"], "pattern": "2:4", "target_sparsity": 0.5, "name": "ffn"}])
    ffn, default = config.resolved_groups()
    assert (ffn.name, ffn.pattern, ffn.target_sparsity, ffn.frequency, ffn.end_step) == ("ffn", "2:4", 0.5, 5, 50)
    assert (default.name, default.pattern, default.target_sparsity) == ("default", "4x1", 0.7)


def test_resolve_steps_keeps_explicit_values():
    assert PruningConfig(end_step=7, start_step=1).resolve_steps(100).end_step == 7
    assert PruningConfig(schedule="oneshot", start_step=3).resolve_steps(100).end_step == 3
    resolved = PruningConfig(frequency=4).resolve_steps(20)
    assert (resolved.start_step, resolved.end_step, resolved.frequency) == (2, 15, 4)


@pytest.mark.parametrize("max_steps", [30, 100, 300, 527, 5000])
def test_default_schedule_is_gradual_whatever_max_steps(max_steps):
    """Issue 13.7: scores accumulate before the first event, at least 8 events, none above ~30 % of the target."""
    from hf_prune.schedules import PruningSchedule

    config = PruningConfig(target_sparsity=0.8, pattern="4x1").resolve_steps(max_steps)
    schedule = PruningSchedule(config.schedule, config.start_step, config.end_step, config.frequency, 0.8)
    events = schedule.event_steps()
    assert events[0] > 1 and len(events) >= 8 and events[-1] <= max_steps
    levels = [0.0] + [schedule.sparsity_at(step) for step in events]
    assert max(b - a for a, b in zip(levels, levels[1:])) <= 0.3 * 0.8
    assert levels[-1] == 0.8


def test_conflicts_with_names_fields_that_change_masks():
    saved = PruningConfig(target_sparsity=0.6).resolve_steps(100)
    assert PruningConfig(target_sparsity=0.6).conflicts_with(saved) == []  # unset steps take the saved ones
    assert PruningConfig(target_sparsity=0.9).conflicts_with(saved) == ["target_sparsity"]
    assert PruningConfig(target_sparsity=0.6, pattern="1x1", end_step=50, start_step=1).conflicts_with(saved) == [
        "pattern", "start_step", "end_step"]
    assert PruningConfig(target_sparsity=0.6, name="other").conflicts_with(saved) == []


@pytest.mark.parametrize("field, value", [("momentum", "x"), ("min_sparsity_per_layer", "0.1"), ("start_step", 1.5),
                                          ("target_sparsity", [0.5]), ("pattern", 4)])
def test_wrong_types_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        PruningConfig(**{field: value})


def test_describe_names_every_group():
    assert PruningConfig(target_sparsity=0.8).describe() == "4x1 0.80"
    assert PruningConfig(target_sparsity=0.8).pattern_names() == ["4x1"]
    config = PruningConfig(target_sparsity=0.5, pattern="head",
                           groups=[{"include": ["ffn"], "pattern": "channel", "target_sparsity": 0.6, "name": "ffn"}])
    assert config.describe() == "channel 0.60 (ffn) + head 0.50 (default)"
    assert config.pattern_names() == ["channel", "head"]
    same_pattern = PruningConfig(groups=[{"include": ["ffn"], "target_sparsity": 0.5}])
    assert same_pattern.pattern_names() == ["4x1"]
