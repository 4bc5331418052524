"""Scripted failures for the in-memory doubles: "the next N calls of this method fail with that error".

Shared by the Graph stub and the storage stubs, so every double is broken on purpose the same way.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
ErrorSource = BaseException | Callable[[], BaseException]


@dataclass
class ScriptedFailure:
    """One rule: raise ``error`` on the next ``times`` calls (None: on every call from now on).

    ``applied`` means the call does its work before the error is raised: a write that landed
    although its caller saw a failure (a timeout or 5xx after the service processed it).
    """

    error: ErrorSource
    times: int | None
    applied: bool

    def make(self) -> BaseException:
        if isinstance(self.error, BaseException):
            # A fresh copy per raise: callers annotate errors (``message``) and tracebacks pile up.
            return copy.copy(self.error)
        return self.error()


class FailureScript:
    """Failure rules per method name, taken in the order they were added."""

    def __init__(self, methods: Iterable[str], *, writes: Iterable[str] = ()) -> None:
        self.methods = frozenset(methods)
        self.writes = frozenset(writes)
        self._rules: dict[str, deque[ScriptedFailure]] = {}

    def add(self, method: str, error: ErrorSource, *, times: int | None = 1, applied: bool = False) -> None:
        if method not in self.methods:
            raise ValueError(f"no method {method!r} to fail; known: {', '.join(sorted(self.methods))}")
        if applied and method not in self.writes:
            raise ValueError(f"applied=True means a write landed before the error; {method} writes nothing")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for every call)")
        self._rules.setdefault(method, deque()).append(ScriptedFailure(error, times, applied))

    def take(self, method: str) -> ScriptedFailure | None:
        """The rule that applies to this call of ``method``, counting the call against it."""
        rules = self._rules.get(method)
        if not rules:
            return None
        rule = rules[0]
        if rule.times is not None:
            rule.times -= 1
            if rule.times == 0:
                rules.popleft()
        return rule

    def apply(self, method: str, action: Callable[[], T]) -> T:
        """Run one call of ``method``: fail before ``action``, after it (applied), or not at all."""
        rule = self.take(method)
        if rule is not None and not rule.applied:
            raise rule.make()
        result = action()
        if rule is not None:
            raise rule.make()
        return result

    def pending(self, method: str) -> int | None:
        """How many scripted failures ``method`` still has (None: it fails forever)."""
        total = 0
        for rule in self._rules.get(method, ()):
            if rule.times is None:
                return None
            total += rule.times
        return total

    def clear(self) -> None:
        self._rules.clear()
