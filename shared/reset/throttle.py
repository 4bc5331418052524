"""Pacing of Graph calls: one write budget per worker process, the retry schedule, and deadlines.

All concurrent resets in a worker share one ``WriteBudget`` so that together they stay under
the configured writes per second; a 429 pauses everyone for the Retry-After Graph asked for.
Each delivery runs under a ``Deadline`` (bound with ``delivery_deadline``): no wait or Graph
call outlives it, and a wait Graph asks for that does not fit defers the request instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from shared.platform.errors import DeadlineExceededError, DeliveryDeferred, ResetError, TransientError
from shared.platform.logs import app_logger

log = app_logger()
T = TypeVar("T")

# A wait longer than this is not slept in process even when the deadline allows it: the request
# is deferred (its message comes back after the wait) and the worker's slot goes to other work.
MAX_IN_PROCESS_WAIT = 60.0
# No Graph call starts with less time than this left on the delivery's deadline.
MIN_CALL_SECONDS = 2.0


class Deadline:
    """The end of one delivery on the monotonic clock."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.ends = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self.ends - self._clock())


_deadline: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("delivery_deadline", default=None)


@contextlib.contextmanager
def delivery_deadline(seconds: float) -> Iterator[Deadline]:
    """Bind a deadline for the block: every wait and Graph call inside it respects it."""
    deadline = Deadline(seconds)
    token = _deadline.set(deadline)
    try:
        yield deadline
    finally:
        _deadline.reset(token)


def time_left() -> float:
    """Seconds the running delivery has left (infinite outside a delivery: tools, tests)."""
    deadline = _deadline.get()
    return math.inf if deadline is None else deadline.remaining()


def call_timeout(default: float) -> float:
    """The timeout for the next Graph call: ``default``, cut to what the deadline leaves.

    Raises ``DeadlineExceededError`` (nothing is sent) when too little is left to start one.
    """
    left = time_left()
    if left < MIN_CALL_SECONDS:
        raise DeadlineExceededError(f"the delivery's deadline leaves {left:.1f}s, too little for a Graph call")
    return min(default, left)


def _check_wait(seconds: float, *, deferrable: bool, what: str) -> None:
    """A wait that does not fit the deadline (or is too long to sleep) defers the request.

    ``deferrable``: the wait is not the request's fault (Graph's Retry-After, the shared write
    budget), so holding the request costs none of its host deliveries. Our own backoff after a
    failure is not deferrable: that failure should count.
    """
    if seconds <= MAX_IN_PROCESS_WAIT and seconds + MIN_CALL_SECONDS <= time_left():
        return
    if deferrable:
        raise DeliveryDeferred(
            f"waiting {seconds:.0f}s before {what} does not fit this delivery; the request is held and comes back then",
            delay=seconds,
        )
    raise DeadlineExceededError(f"the delivery's deadline leaves no room to wait {seconds:.1f}s before {what}")


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
        """Wait for this worker's next write slot (a slot past the deadline defers the request)."""
        delay = self._reserve(write=True)
        if delay > 0:
            _check_wait(delay, deferrable=True, what="the next Graph write")
            await self._sleep(delay)

    async def wait_if_paused(self) -> None:
        """Reads are not budgeted, but they respect a pause Graph asked for."""
        delay = self._reserve(write=False)
        if delay > 0:
            _check_wait(delay, deferrable=True, what="the next Graph read")
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
    retry_if: Callable[[ResetError], bool] | None = None,
) -> T:
    """Run ``operation``, retrying transient failures per ``policy`` within the delivery's deadline.

    ``retry_if`` decides per error whether a retry is allowed at all: a write whose outcome is
    unknown must not be sent again (the caller resolves it by evidence). A wait Graph asked for
    that does not fit the deadline raises ``DeliveryDeferred``.
    """
    attempt = 1
    while True:
        try:
            return await operation()
        except DeliveryDeferred:
            raise
        except TransientError as error:
            if error.code == "GraphThrottled" and error.retry_after:
                budget.pause(error.retry_after)
            if retry_if is not None and not retry_if(error):
                raise
            wait = policy.delay(attempt, error)
            if attempt >= policy.max_attempts:
                error.message = f"{error.message} (gave up {what} after {attempt} attempt(s))"
                raise
            _check_wait(wait, deferrable=error.retry_after is not None, what=what)
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
