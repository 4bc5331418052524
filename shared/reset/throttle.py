"""Retries of Graph calls: the schedule, and the pause a 429 puts on the app-wide write budget.

The budget itself (``WriteBudget``, shared by every instance through storage) lives in
``shared.reset.budget``; a 429 pauses every instance for the Retry-After Graph asked for.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from shared.platform.errors import AmbiguousOutcomeError, ResetError, TransientError
from shared.platform.logs import app_logger
from shared.reset.budget import WriteBudget

__all__ = ["MAX_IN_PROCESS_WAIT", "RetryPolicy", "WriteBudget", "call_with_retries"]

log = app_logger()
T = TypeVar("T")

# Graph may ask for waits longer than a queue invocation should sleep; past this the message
# is released and the host redelivers it later instead.
MAX_IN_PROCESS_WAIT = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential schedule with jitter; Graph's Retry-After, when given, wins."""

    delays: tuple[float, ...]
    max_attempts: int

    def delay(self, attempt: int, error: ResetError) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if error.retry_after is not None:
            return error.retry_after
        base = self.delays[min(attempt - 1, len(self.delays) - 1)]
        # "Equal jitter": keeps at least half the delay, spreads the rest so workers de-sync.
        return base / 2 + random.uniform(0, base / 2)


async def call_with_retries(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    budget: WriteBudget,
    what: str,
    before_retry: Callable[[ResetError], Awaitable[T | None]] | None = None,
) -> T:
    """Run ``operation``, retrying transient failures per ``policy``.

    ``before_retry`` resolves ambiguous outcomes: when a write may already have happened it is
    asked first, and a non-None answer is taken as the result instead of sending again.
    """
    attempt = 1
    while True:
        try:
            return await operation()
        except TransientError as error:
            if error.code == "GraphThrottled" and error.retry_after:
                budget.pause(error.retry_after)
            wait = policy.delay(attempt, error)
            if attempt >= policy.max_attempts or wait > MAX_IN_PROCESS_WAIT:
                error.message = f"{error.message} (gave up {what} after {attempt} attempt(s))"
                raise
            log.warning(
                "retrying %s after %s (attempt %d of %d, waiting %.2fs)",
                what,
                error.code,
                attempt,
                policy.max_attempts,
                wait,
            )
            await asyncio.sleep(wait)
            if before_retry is not None and isinstance(error, AmbiguousOutcomeError):
                resolved = await before_retry(error)
                if resolved is not None:
                    return resolved
            attempt += 1
