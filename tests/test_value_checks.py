"""Numbers, regexes and messages from users' files (issues 25 and 26)."""
import math
import time

import pytest

from hf_prune import PruningConfig
from hf_prune.value_checks import check_module_regex, finite, short


@pytest.mark.parametrize("pattern", [r"^([\w.]+)+!$", r"(a+)+", r"(a|aa)*", r"(?:x\d+)*y"])
def test_regexes_that_can_backtrack_exponentially_are_refused(pattern):
    with pytest.raises(ValueError, match="repeats a group that itself repeats or alternates"):
        check_module_regex("include", pattern)
    with pytest.raises(ValueError, match="include entry"):
        PruningConfig(include=[pattern])


@pytest.mark.parametrize("pattern", [r"layer\.\d+\.output\.dense", r"(attention|intermediate)", r"(ab)+",
                                     r"^(?!.*pooler).*dense$", r"encoder\.layer\.(0|1)\."])
def test_ordinary_module_regexes_pass(pattern):
    check_module_regex("include", pattern)


def test_the_refused_regex_really_hangs_a_matcher():
    """The mutation check of the rule: the pattern refused above takes seconds on a 26-character name."""
    import re

    started = time.perf_counter()
    re.search(r"^([\w.]+)+!$", "encoder.layer.0.attention.x")
    assert time.perf_counter() - started > 0.05


@pytest.mark.parametrize("value, message", [(math.nan, "finite"), (math.inf, "finite"), (-1, ">= 0"),
                                            (True, "must be a number"), ("1", "must be a number")])
def test_finite(value, message):
    with pytest.raises(ValueError, match=message):
        finite("--x", value, minimum=0)


def test_short_bounds_a_huge_value():
    assert len(short(["x" * 10_000] * 10_000)) < 300


def test_full_width_digits_are_not_a_pattern():
    with pytest.raises(ValueError, match="must be written in ASCII"):
        PruningConfig(pattern="４x１")
