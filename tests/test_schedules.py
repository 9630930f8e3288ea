import math

import pytest

from hf_prune.schedules import SCHEDULES, PruningSchedule


def test_registered_names():
    assert SCHEDULES.names() == ["cos", "cubic", "exp", "linear", "oneshot"]


def test_event_steps_include_end_even_off_grid():
    schedule = PruningSchedule("cubic", 10, 35, 10, 0.8)
    assert schedule.event_steps() == [10, 20, 30, 35]
    assert [s for s in range(0, 50) if schedule.is_event(s)] == [10, 20, 30, 35]


@pytest.mark.parametrize("kind,middle", [
    ("cubic", 0.8 * (1 - 0.5 ** 3)),
    ("exp", 1 - 0.2 ** 0.5),
    ("linear", 0.4),
    ("cos", 0.8 * (1 - math.cos(math.pi / 2)) / 2),
])
def test_values_at_start_middle_end(kind, middle):
    # start 0, end 30, frequency 10: events 0, 10, 20, 30 with progress 1/4, 2/4, 3/4, 1
    schedule = PruningSchedule(kind, 0, 30, 10, 0.8)
    assert schedule.progress(10) == pytest.approx(0.5)
    assert schedule.sparsity_at(10) == pytest.approx(middle)
    assert schedule.sparsity_at(0) > 0.0  # the first event already prunes
    assert schedule.sparsity_at(30) == 0.8  # exactly the target at the end
    assert schedule.sparsity_at(99) == 0.8
    values = [schedule.sparsity_at(s) for s in schedule.event_steps()]
    assert values == sorted(values)


def test_cubic_first_event_value():
    schedule = PruningSchedule("cubic", 0, 30, 10, 0.8)
    assert schedule.sparsity_at(0) == pytest.approx(0.8 * (1 - 0.75 ** 3))


def test_before_start_is_dense():
    assert PruningSchedule("cubic", 5, 30, 5, 0.8).sparsity_at(4) == 0.0


@pytest.mark.parametrize("kind", ["oneshot", "cubic"])
def test_oneshot(kind):
    schedule = PruningSchedule(kind, 7, 7, 100, 0.5)
    assert schedule.is_oneshot and schedule.event_steps() == [7]
    assert [s for s in range(20) if schedule.is_event(s)] == [7]
    assert schedule.sparsity_at(7) == 0.5


def test_bad_schedules():
    with pytest.raises(ValueError, match="unknown pruning schedule 'step'"):
        PruningSchedule("step", 0, 10, 1, 0.5)
    with pytest.raises(ValueError, match=r"start_step \(10\) must be <= end_step \(5\)"):
        PruningSchedule("cubic", 10, 5, 1, 0.5)
    with pytest.raises(ValueError, match="frequency must be a positive"):
        PruningSchedule("cubic", 0, 10, 0, 0.5)
