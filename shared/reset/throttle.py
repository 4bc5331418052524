"""Pacing of Graph calls: one write budget per worker process, and the retry schedule.

All concurrent resets in a worker share one ``WriteBudget`` so that together they stay under
the configured writes per second; a 429 pauses everyone for the Retry-After Graph asked for.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from shared.platform.errors import AmbiguousOutcomeError, ResetError, TransientError
from shared.platform.logs import app_logger

log = app_logger()
T = TypeVar("T")

# Graph may ask for waits longer than a queue invocation should sleep; past this the message
# is released and the host redelivers it later instead.
MAX_IN_PROCESS_WAIT = 120.0


class WriteBudget:
    """Evenly spaced write slots (a token bucket with a burst of one) plus a shared pause.

    Loop-agnostic on purpose: it only does arithmetic on a monotonic clock and sleeps, so the
    same instance serves every event loop and thread of the worker.
    """

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._next_slot = 0.0
        self._paused_until = 0.0

    def _reserve(self, *, write: bool) -> float:
        now = self._clock()
        start = max(now, self._paused_until)
        if write:
            start = max(start, self._next_slot)
            self._next_slot = start + self.interval
        return start - now

    async def acquire_write(self) -> None:
        """Wait for this worker's next write slot."""
        delay = self._reserve(write=True)
        if delay > 0:
            await self._sleep(delay)

    async def wait_if_paused(self) -> None:
        """Reads are not budgeted, but they respect a pause Graph asked for."""
        delay = self._reserve(write=False)
        if delay > 0:
            await self._sleep(delay)

    def pause(self, seconds: float) -> None:
        """Hold every call of this worker for ``seconds`` (Graph's Retry-After)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)


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
