"""The invitation breaker's and pacer's rules, over an in-memory copy of their shared state."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.platform.errors import BREAKER_CODES, GraphRequestError, HoldError, classify_graph_response
from shared.reset.breaker import MAX_PACING_SLEEP, BreakerState, GateStore, InvitationGate
from shared.reset.status import Status, StatusRecord, StatusStore
from tests.factories import settings

START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class MemoryGateStore(GateStore):
    """The same interface with the state in two attributes (no table)."""

    def __init__(self) -> None:
        self.breaker = BreakerState()
        self.next_slot: datetime | None = None
        self.reservations = 0

    async def read_breaker(self) -> BreakerState:
        return self.breaker

    async def write_breaker(self, state: BreakerState) -> None:
        self.breaker = state

    async def reserve_slot(self, interval: timedelta, now: datetime) -> datetime:
        self.reservations += 1
        slot = max(now, self.next_slot) if self.next_slot else now
        self.next_slot = slot + interval
        return slot


class MemoryStatusStore(StatusStore):
    def __init__(self) -> None:
        self.saved: list[StatusRecord] = []

    async def save(self, record: StatusRecord, **changes: Any) -> StatusRecord:
        saved = replace(record, **changes)
        self.saved.append(saved)
        return saved


class Clock:
    def __init__(self) -> None:
        self.now = START
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


def gate(store: MemoryGateStore, clock: Clock, **overrides: str) -> InvitationGate:
    return InvitationGate(store, settings(**overrides), clock=clock, sleep=clock.sleep)


def blocked() -> GraphRequestError:
    error = classify_graph_response(
        403,
        {
            "error": {
                "code": "Forbidden",
                "message": "Invitations are blocked for this directory due to suspicious activity.",
            }
        },
        {},
    )
    assert isinstance(error, GraphRequestError)
    return error


@pytest.mark.parametrize(
    "message",
    [
        "Invitations are blocked for this directory due to suspicious activity. Please contact Microsoft support.",
        "Guest invitations not allowed for your company. Contact your company administrator for more details.",
    ],
)
def test_tenant_wide_refusals_are_the_breaker_codes(message: str) -> None:
    """The suspicious-activity block and disabled invitations open the breaker; other 403s do not."""
    error = classify_graph_response(403, {"error": {"code": "Forbidden", "message": message}}, {})
    assert error.code in BREAKER_CODES
    denied = classify_graph_response(403, {"error": {"code": "Authorization_RequestDenied", "message": "x"}}, {})
    assert denied.code not in BREAKER_CODES


async def test_the_first_block_opens_the_breaker_and_later_ones_keep_its_opener() -> None:
    """trip opens once, remembers the first request, and hands back a hold that names the way out."""
    store, clock = MemoryGateStore(), Clock()
    first = await gate(store, clock).trip(blocked(), "req-1")
    clock.now += timedelta(minutes=5)
    await gate(store, clock).trip(blocked(), "req-2")
    assert store.breaker.open and store.breaker.opened_by == "req-1" and store.breaker.opened_at == START
    assert isinstance(first, HoldError) and first.held and first.code == "InvitationsBlocked"
    assert "guest-reset breaker close" in first.message and first.delay == settings().breaker_hold_seconds


async def test_an_open_breaker_holds_and_closing_lets_through() -> None:
    store, clock = MemoryGateStore(), Clock()
    await gate(store, clock).check()  # closed: nothing raised
    await gate(store, clock).trip(blocked(), "req-1")
    with pytest.raises(HoldError):
        await gate(store, clock).check()
    closed = await gate(store, clock).close("ops@contoso.com")
    assert not closed.open and closed.closed_by == "ops@contoso.com" and closed.code == "InvitationsBlocked"
    await gate(store, clock).check()


async def test_pacing_spaces_invitations_app_wide() -> None:
    """Six per minute: consecutive invitations wait ten seconds for each other's slot."""
    store, clock, status = MemoryGateStore(), Clock(), MemoryStatusStore()
    record = StatusRecord(request_id="r", status=Status.PROCESSING)
    for _ in range(3):
        await gate(store, clock, INVITATIONS_PER_MINUTE="6").pace(record, status)
    assert clock.slept == [10.0, 10.0]


async def test_a_far_slot_is_kept_and_the_delivery_put_back_until_then() -> None:
    """A slot beyond the in-process wait is saved on the record; the delivery comes back for it."""
    store, clock, status = MemoryGateStore(), Clock(), MemoryStatusStore()
    store.next_slot = START + timedelta(minutes=10)
    record = StatusRecord(request_id="r", status=Status.PROCESSING)
    with pytest.raises(HoldError) as paced:
        await gate(store, clock).pace(record, status)
    assert not paced.value.held and paced.value.delay == 600 > MAX_PACING_SLEEP
    [saved] = status.saved
    assert saved.invite_slot == START + timedelta(minutes=10)
    clock.now = START + timedelta(minutes=10)
    await gate(store, clock).pace(saved, status)
    assert store.reservations == 1, "the kept slot is used, not a second one"


async def test_a_slot_missed_long_ago_is_not_used() -> None:
    """After a long hold, stale slots would all fire at once: a new slot is reserved instead."""
    store, clock, status = MemoryGateStore(), Clock(), MemoryStatusStore()
    record = StatusRecord(request_id="r", status=Status.PROCESSING, invite_slot=START - timedelta(hours=3))
    await gate(store, clock).pace(record, status)
    assert store.reservations == 1
