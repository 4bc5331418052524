"""Each delivery's deadline: no wait or Graph call outlives it, and a wait that does not fit holds the request.

The worker binds a ``Deadline`` per delivery (``delivery_deadline``); the Graph adapter cuts each
call's timeout to what is left (``call_timeout``), and the write budget and the retry loop ask
``check_wait`` before they sleep. Outside a delivery (tools, tests) there is no deadline.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Callable, Iterator

from shared.platform.errors import DeadlineExceededError, HoldError

# A wait longer than this is not slept in process even when the deadline allows it: the request
# is held (its message comes back after the wait) and the worker's slot goes to other work.
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


def check_wait(seconds: float, *, holdable: bool, what: str) -> None:
    """A wait that does not fit the deadline (or is too long to sleep) holds the request.

    ``holdable``: the wait is not the request's fault (Graph's Retry-After, the shared write
    budget), so holding the request costs none of its host deliveries (``HoldError``, counted
    towards the worker's cap on holds). Our own backoff after a failure is not holdable: that
    failure should count (``DeadlineExceededError``, transient).
    """
    if seconds <= MAX_IN_PROCESS_WAIT and seconds + MIN_CALL_SECONDS <= time_left():
        return
    if holdable:
        raise HoldError(
            f"waiting {seconds:.0f}s before {what} does not fit this delivery; the request is held and comes back then",
            delay=seconds,
            code="Waiting",
            held=False,
            limited=True,
        )
    raise DeadlineExceededError(f"the delivery's deadline leaves no room to wait {seconds:.1f}s before {what}")
