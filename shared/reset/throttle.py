"""Retries of Graph calls: the schedule, and the pause a 429 puts on the app-wide write budget.

The budget itself (``WriteBudget``, shared by every instance through storage) lives in
``shared.reset.budget``; a 429 pauses every instance for the Retry-After Graph asked for. Every
wait respects the delivery's deadline (``shared.reset.deadline``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from shared.platform.errors import ResetError, TransientError
from shared.platform.logs import app_logger
from shared.reset.budget import WriteBudget
from shared.reset.deadline import MAX_IN_PROCESS_WAIT, check_wait

__all__ = ["MAX_IN_PROCESS_WAIT", "RetryPolicy", "WriteBudget", "call_with_retries"]

log = app_logger()
T = TypeVar("T")


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
    retry_if: Callable[[ResetError], bool] | None = None,
) -> T:
    """Run ``operation``, retrying transient failures per ``policy`` within the delivery's deadline.

    ``retry_if`` decides per error whether a retry is allowed at all: a write whose outcome is
    unknown must not be sent again (the caller resolves it by evidence). A wait Graph asked for
    that does not fit the deadline raises ``HoldError``.
    """
    attempt = 1
    while True:
        try:
            return await operation()
        except TransientError as error:
            if error.code == "GraphThrottled" and error.retry_after:
                budget.pause(error.retry_after)
            if retry_if is not None and not retry_if(error):
                raise
            wait = policy.delay(attempt, error)
            if attempt >= policy.max_attempts:
                error.message = f"{error.message} (gave up {what} after {attempt} attempt(s))"
                raise
            check_wait(wait, holdable=error.retry_after is not None, what=what)
            log.warning(
                "retrying %s after %s (attempt %d of %d, waiting %.2fs)",
                what,
                error.code,
                attempt,
                policy.max_attempts,
                wait,
            )
            await asyncio.sleep(wait)
            attempt += 1
