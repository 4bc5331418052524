"""The shared write budget and the retry policy, on a fake clock."""

from __future__ import annotations

import itertools

import pytest

from shared.platform.errors import AmbiguousOutcomeError, TransientError
from shared.reset.throttle import RetryPolicy, WriteBudget, call_with_retries


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_writes_are_spaced_by_the_budget() -> None:
    """At 20 writes/s, 20 writes take one second of (fake) time, evenly spaced."""
    clock = FakeClock()
    budget = WriteBudget(20, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(20):
        await budget.acquire_write()
        times.append(clock.now)
    assert times[-1] == pytest.approx(0.95)
    assert all(b - a == pytest.approx(0.05) for a, b in itertools.pairwise(times))


async def test_a_pause_holds_reads_and_writes() -> None:
    """After a 429 with Retry-After, nothing in the worker calls Graph until it passes."""
    clock = FakeClock()
    budget = WriteBudget(100, clock=clock, sleep=clock.sleep)
    budget.pause(2.5)
    await budget.wait_if_paused()
    assert clock.now == pytest.approx(2.5)
    await budget.acquire_write()
    assert clock.now == pytest.approx(2.5)


def test_retry_after_wins_over_the_schedule() -> None:
    policy = RetryPolicy((1.0, 2.0, 4.0), 5)
    assert policy.delay(1, TransientError("x", retry_after=2.128)) == pytest.approx(2.128)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0), (7, 4.0)):
        assert base / 2 <= policy.delay(attempt, TransientError("x")) <= base


async def test_transient_failures_recover_within_max_attempts() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("down", code="GraphUnavailable", retry_after=0.0)
        return "ok"

    result = await call_with_retries(flaky, policy=RetryPolicy((0.0,), 5), budget=WriteBudget(100), what="test")
    assert result == "ok" and len(calls) == 3


async def test_gives_up_after_max_attempts() -> None:
    async def down() -> str:
        raise TransientError("down", retry_after=0.0)

    with pytest.raises(TransientError, match="after 3 attempt"):
        await call_with_retries(down, policy=RetryPolicy((0.0,), 3), budget=WriteBudget(100), what="x")


async def test_ambiguous_write_is_checked_before_resending() -> None:
    """When a write may have happened, the read-back answer is taken instead of a re-send."""
    sent = []

    async def post() -> str:
        sent.append(1)
        raise AmbiguousOutcomeError("504", retry_after=0.0)

    async def check(_: object) -> str:
        return "confirmed"

    result = await call_with_retries(
        post, policy=RetryPolicy((0.0,), 5), budget=WriteBudget(100), what="x", before_retry=check
    )
    assert result == "confirmed" and len(sent) == 1
