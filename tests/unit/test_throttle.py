"""The shared write budget and the retry policy, on a fake clock."""

from __future__ import annotations

import itertools

import pytest

from shared.platform.errors import AmbiguousOutcomeError, DeadlineExceededError, HoldError, TransientError
from shared.reset.deadline import MAX_IN_PROCESS_WAIT, MIN_CALL_SECONDS, call_timeout, delivery_deadline
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


async def test_a_write_whose_outcome_is_unknown_is_not_sent_again() -> None:
    """With retry_if refusing ambiguous errors, a 504 ends the call after one send."""
    sent = []

    async def post() -> str:
        sent.append(1)
        raise AmbiguousOutcomeError("504", retry_after=0.0)

    with pytest.raises(AmbiguousOutcomeError):
        await call_with_retries(
            post,
            policy=RetryPolicy((0.0,), 5),
            budget=WriteBudget(100),
            what="x",
            retry_if=lambda error: not isinstance(error, AmbiguousOutcomeError),
        )
    assert len(sent) == 1


async def test_a_retry_after_longer_than_the_deadline_defers() -> None:
    """Graph asks for 30 s but the delivery has 10 s left: HoldError with that delay, no sleep."""
    calls = []

    async def throttled() -> str:
        calls.append(1)
        raise TransientError("429", code="GraphThrottled", retry_after=30.0)

    with delivery_deadline(10), pytest.raises(HoldError) as held:
        await call_with_retries(throttled, policy=RetryPolicy((0.0,), 5), budget=WriteBudget(100), what="x")
    assert held.value.delay == 30.0 and len(calls) == 1


async def test_a_wait_past_the_in_process_limit_defers_even_with_time_left() -> None:
    """A Retry-After beyond MAX_IN_PROCESS_WAIT is not slept in process, whatever the deadline."""

    async def throttled() -> str:
        raise TransientError("429", code="GraphThrottled", retry_after=MAX_IN_PROCESS_WAIT + 1)

    with pytest.raises(HoldError):
        await call_with_retries(throttled, policy=RetryPolicy((0.0,), 5), budget=WriteBudget(100), what="x")


async def test_our_own_backoff_past_the_deadline_fails_the_delivery_instead() -> None:
    """Without a Retry-After the wait is ours: it counts as a failed delivery (transient), not a hold."""

    async def down() -> str:
        raise TransientError("503", code="GraphUnavailable")

    with delivery_deadline(3), pytest.raises(DeadlineExceededError):
        await call_with_retries(down, policy=RetryPolicy((8.0,), 5), budget=WriteBudget(100), what="x")


async def test_a_budget_pause_longer_than_the_deadline_defers_other_deliveries() -> None:
    """After a long 429 pause, another delivery's next write is held rather than slept through."""
    budget = WriteBudget(100)
    budget.pause(45)
    with delivery_deadline(20), pytest.raises(HoldError) as held:
        await budget.acquire_write()
    assert 44 < held.value.delay <= 45


def test_no_graph_call_starts_without_time_for_it() -> None:
    """The per-call timeout is cut to what the deadline leaves, and refused below the minimum."""
    assert call_timeout(30) == 30
    with delivery_deadline(10):
        assert 9 < call_timeout(30) <= 10
    with delivery_deadline(MIN_CALL_SECONDS / 2), pytest.raises(DeadlineExceededError):
        call_timeout(30)
