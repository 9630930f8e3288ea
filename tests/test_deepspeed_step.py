"""Scoring inside DeepSpeed's step (the wrapper's contract, on a stand-in engine; the real ZeRO-3 runs are in
test_fsdp.py): scores first, at boundaries only, with the step's unscaling; installed once per engine."""
from types import SimpleNamespace

import pytest
from torch import nn

from hf_prune.deepspeed_step import gradient_scale, score_inside_step


class RecordingPruner:
    def __init__(self, calls):
        self.calls = calls

    def update_scores(self, gradient_scale=1.0):
        self.calls.append(("scores", self, gradient_scale))


def _engine(calls, boundary=True, loss_scale=4.0, managed=True):
    engine = SimpleNamespace(optimizer=SimpleNamespace(loss_scale=loss_scale), module=nn.Linear(2, 2),
                             gradient_clipping=lambda: 0.0, is_gradient_accumulation_boundary=lambda: boundary,
                             managed_gradient_accumulation=lambda: managed)
    engine.step = lambda: calls.append(("step",))
    return engine


def test_the_step_scores_first_with_the_loss_scale_undone():
    calls = []
    engine = _engine(calls)
    pruner = RecordingPruner(calls)
    score_inside_step(engine, pruner)
    engine.step()
    assert calls == [("scores", pruner, 0.25), ("step",)]


def test_a_step_off_the_accumulation_boundary_does_not_score():
    calls = []
    engine = _engine(calls, boundary=False)
    score_inside_step(engine, RecordingPruner(calls))
    engine.step()
    assert calls == [("step",)]


def test_a_second_install_replaces_the_pruner_without_wrapping_twice():
    calls = []
    engine = _engine(calls)
    score_inside_step(engine, RecordingPruner(calls))
    newer = RecordingPruner(calls)
    score_inside_step(engine, newer)
    engine.step()
    assert calls == [("scores", newer, 0.25), ("step",)]


def test_unmanaged_gradient_accumulation_is_refused():
    with pytest.raises(ValueError, match="managed_gradient_accumulation=false"):
        score_inside_step(_engine([], managed=False), RecordingPruner([]))


def test_without_clipping_the_scale_is_the_inverse_loss_scale():
    assert gradient_scale(_engine([], loss_scale=1.0)) == 1.0
    assert gradient_scale(_engine([], loss_scale=8.0)) == 0.125
