"""A tiny validating registry: one place that maps user-facing names to implementations.

Patterns, criteria and schedules register themselves here, so adding one is one class plus one
``register`` call, and every lookup of an unknown name fails with the list of allowed names.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Generic, Iterator, TypeVar

T = TypeVar("T")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """Maps lower-case names to objects of one kind (``what`` names the kind in error messages)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: Dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"invalid {self.what} name {name!r}: use lower-case letters, digits and '_'")
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated class or function."""
        return lambda entry: self.register(name, entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.what} {name!r}; allowed: {', '.join(sorted(self._entries))}") from None

    def names(self) -> list:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
