"""Checks on values people hand to hf_prune (flags, recipes, config files): refused by name before training.

- :func:`finite` — a number that is not NaN or infinite and lies in its range.
- :func:`check_module_regex` — a module-name regex that cannot take exponential time: no repeated group that
  itself holds a repetition or an alternation (``(a+)+``, ``([\\w.]+)*``, ``(a|aa)*``), at most
  :data:`MAX_REGEX_LENGTH` characters.
- :func:`short` — a value shortened for an error message, so a hostile file cannot make a 92 MB message;
  :func:`one_line` — a whole message on one line of at most :data:`ERROR_LINE_LIMIT` characters.
- :func:`check_dataclass_numbers` — :func:`finite` over an arguments dataclass, with a table of ranges.
"""
from __future__ import annotations

import dataclasses
import math
import re
import reprlib
from typing import Any, Dict, Optional, Tuple

try:  # Python >= 3.11
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.9/3.10
    import sre_parse  # type: ignore[no-redef]

__all__ = ["finite", "check_dataclass_numbers", "check_module_regex", "short", "one_line", "MAX_REGEX_LENGTH",
           "MESSAGE_VALUE_LIMIT", "ERROR_LINE_LIMIT"]

MAX_REGEX_LENGTH = 500
MESSAGE_VALUE_LIMIT = 200
#: the longest error line a command prints
ERROR_LINE_LIMIT = 500

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = MESSAGE_VALUE_LIMIT
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3


def short(value: Any) -> str:
    """``repr(value)``, cut to about :data:`MESSAGE_VALUE_LIMIT` characters."""
    text = _REPR.repr(value)
    return text if len(text) <= MESSAGE_VALUE_LIMIT + 10 else text[:MESSAGE_VALUE_LIMIT] + "...'"


def one_line(message: str) -> str:
    """``message`` on one line, cut to :data:`ERROR_LINE_LIMIT` characters."""
    message = " ".join(message.split())
    return message if len(message) <= ERROR_LINE_LIMIT else message[:ERROR_LINE_LIMIT - 5] + " ..."


def check_dataclass_numbers(arguments: Any, ranges: Dict[str, Tuple[Optional[float], Optional[float], bool, bool]],
                            prefix: str = "") -> None:
    """Every float field of the dataclass ``arguments`` finite, and every field named in ``ranges`` (minimum,
    maximum, minimum excluded, maximum excluded; None is open) in its range; errors name ``prefix + field``."""
    for field_info in dataclasses.fields(arguments):
        value = getattr(arguments, field_info.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) or field_info.name in ranges:
            low, high, above, below = ranges.get(field_info.name, (None, None, False, False))
            finite(prefix + field_info.name, value, low, high, above, below)


def finite(name: str, value: Any, minimum: Optional[float] = None, maximum: Optional[float] = None,
           above: bool = False, below: bool = False) -> float:
    """``value`` as a checked number: not a bool, not NaN or infinite, ``>= minimum`` (``> minimum`` with
    ``above``) and ``<= maximum`` (``< maximum`` with ``below``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {short(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if minimum is not None and (value <= minimum if above else value < minimum):
        raise ValueError(f"{name} must be {'>' if above else '>='} {minimum:g}, got {value}")
    if maximum is not None and (value >= maximum if below else value > maximum):
        raise ValueError(f"{name} must be {'<' if below else '<='} {maximum:g}, got {value}")
    return value


def check_module_regex(name: str, pattern: str) -> None:
    """Refuse a regex that compiles but could backtrack exponentially on a module name (a repetition nested in
    a repetition), or one longer than :data:`MAX_REGEX_LENGTH`: module names are matched before the first step,
    and such a pattern can hang there."""
    if len(pattern) > MAX_REGEX_LENGTH:
        raise ValueError(f"{name} entry {short(pattern)} is longer than {MAX_REGEX_LENGTH} characters")
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as err:
        raise ValueError(f"{name} entry {short(pattern)} is not a valid regular expression: {err}") from None
    if _nested_repeat(parsed):
        raise ValueError(f"{name} entry {short(pattern)} repeats a group that itself repeats or alternates (e.g. "
                         "'(a+)+', '(a|b)*'), which can take exponential time; write it without the nesting (e.g. "
                         "'[\\w.]+', '(a|b)' without the outer repetition)")


_REPEATS = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, getattr(sre_parse, "POSSESSIVE_REPEAT", None)} - {None}


def _nested_repeat(items) -> bool:
    """Whether a repetition of more than one (``+``, ``*``, ``{2,}``) holds another such repetition."""
    for op, argument in items:
        if op in _REPEATS:
            high, body = argument[1], argument[2]
            if (high is sre_parse.MAXREPEAT or high > 1) and _has_repeat(body):
                return True
            children = [body]
        elif op == sre_parse.SUBPATTERN:
            children = [argument[-1]]
        elif op == sre_parse.BRANCH:
            children = list(argument[1])
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
            children = [argument[1]]
        else:
            children = []
        if any(_nested_repeat(child) for child in children):
            return True
    return False


def _has_repeat(items) -> bool:
    """Whether ``items`` hold a repetition of more than one or an alternation (``(a|aa)*`` backtracks as badly)."""
    for op, argument in items:
        if op in _REPEATS and (argument[1] is sre_parse.MAXREPEAT or argument[1] > 1):
            return True
        if op == sre_parse.BRANCH:
            return True
        if op == sre_parse.SUBPATTERN and _has_repeat(argument[-1]):
            return True
        if op in _REPEATS and _has_repeat(argument[2]):
            return True
    return False
