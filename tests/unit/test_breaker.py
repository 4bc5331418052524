"""The invitation breaker's and pace's rules, over the app-wide state in the in-memory table double."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.platform.errors import BREAKER_CODES, GraphRequestError, HoldError, TransientError, classify_graph_response
from shared.platform.fleet import FleetState
from shared.platform.storage_stub import MemoryTable
from shared.reset.breaker import CLOSED_CACHE_SECONDS, INVITATION_BURST, MAX_PACING_SLEEP, InvitationGate
from shared.reset.status import Status, StatusRecord, StatusStore
from tests.factories import FakeClock, settings
from tools.bench.fleet import most_in_any_window

START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class MemoryStatusStore(StatusStore):
    """Only what the pace writes: the record with its kept slot."""

    def __init__(self) -> None:
        self.records: dict[str, StatusRecord] = {}

    async def save(self, record: StatusRecord, **changes: Any) -> StatusRecord:
        saved = replace(record, **changes)
        self.records[saved.request_id] = saved
        return saved


@pytest.fixture
def table() -> MemoryTable:
    """The state table every instance of the app shares."""
    return MemoryTable("GuestResetState")


@pytest.fixture
def at_start(clock: FakeClock) -> FakeClock:
    clock.now = START.timestamp()
    return clock


def instance(
    table: MemoryTable,
    clock: FakeClock,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    **overrides: str,
) -> tuple[InvitationGate, FleetState]:
    """One instance of the app: its own FleetState over the shared table, as each process has its own client."""
    state = FleetState(table)
    gate = InvitationGate(state, settings(**overrides), clock=clock.utc, sleep=sleep or clock.sleep)
    return gate, state


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


def record(request_id: str = "r", **fields: Any) -> StatusRecord:
    return StatusRecord(request_id=request_id, status=Status.PROCESSING, **fields)


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


# --- the breaker -----------------------------------------------------------------------------


async def test_the_first_block_opens_the_breaker_and_later_ones_keep_its_opener(
    table: MemoryTable, at_start: FakeClock
) -> None:
    """trip opens once, remembers the first request, and hands back a hold that names the way out."""
    gate, _ = instance(table, at_start)
    first = await gate.trip(blocked(), "req-1")
    at_start.now += 300
    second = await gate.trip(blocked(), "req-2")
    state = await gate.state()
    assert state.open and state.opened_by == "req-1" and state.opened_at == START
    assert isinstance(first, HoldError) and first.held and first.code == "InvitationsBlocked"
    assert "guest-reset breaker close" in first.message and first.delay == settings().breaker_hold_seconds
    assert second.message == first.message, "the later block reports the first opener"


async def test_instances_tripping_at_once_agree_on_one_opener(table: MemoryTable, at_start: FakeClock) -> None:
    """Two instances meet the block in the same moment: one opener is stored and both holds name it."""
    (first, _), (second, _) = instance(table, at_start), instance(table, at_start)
    holds = await asyncio.gather(first.trip(blocked(), "req-a"), second.trip(blocked(), "req-b"))
    state = await first.state()
    assert state.open and state.opened_by in {"req-a", "req-b"}
    assert holds[0].message == holds[1].message


async def test_a_block_after_another_instance_closed_the_breaker_opens_it_again(
    table: MemoryTable, at_start: FakeClock
) -> None:
    """The opener's own memory of the entity says "open"; the operator closed it since: the next block reopens it."""
    (first, _), (operator, _) = instance(table, at_start), instance(table, at_start)
    await first.trip(blocked(), "req-1")
    await operator.close("ops")
    await first.trip(blocked(), "req-2")
    state = await operator.state()
    assert state.open and state.opened_by == "req-2"


async def test_an_open_breaker_holds_and_closing_lets_through(table: MemoryTable, at_start: FakeClock) -> None:
    """While open every check holds; closing keeps why it was opened and records who closed it."""
    gate, _ = instance(table, at_start)
    await gate.check()  # closed: nothing raised
    await gate.trip(blocked(), "req-1")
    with pytest.raises(HoldError):
        await gate.check()
    closed = await gate.close("ops@contoso.com")
    assert not closed.open and closed.closed_by == "ops@contoso.com" and closed.code == "InvitationsBlocked"
    await gate.check()
    assert (await gate.state()) == closed


async def test_a_breaker_opened_by_one_instance_is_seen_by_another(table: MemoryTable, at_start: FakeClock) -> None:
    """Another instance holds from its next look: at once if it has not looked lately, else within the cache."""
    (opener, _), (other, other_state), (fresh, _) = (instance(table, at_start) for _ in range(3))
    await other.check()  # closed, and believed for CLOSED_CACHE_SECONDS
    reads = other_state.ops.reads
    await opener.trip(blocked(), "req-1")
    with pytest.raises(HoldError) as held:
        await fresh.check()
    assert held.value.held and held.value.code == "InvitationsBlocked"
    await other.check()  # within its cache: no read, no news yet
    assert other_state.ops.reads == reads
    at_start.now += CLOSED_CACHE_SECONDS
    with pytest.raises(HoldError):
        await other.check()


async def test_closing_is_seen_at_once_by_every_instance(table: MemoryTable, at_start: FakeClock) -> None:
    """An open breaker is never cached: the moment an operator closes it, every instance lets invitations through."""
    (opener, _), (other, _) = instance(table, at_start), instance(table, at_start)
    await opener.trip(blocked(), "req-1")
    with pytest.raises(HoldError):
        await other.check()
    await instance(table, at_start)[0].close("ops")  # the CLI: an instance of its own
    await other.check()
    await opener.check()


async def test_storage_down_fails_the_check_and_the_pace_transiently(table: MemoryTable, at_start: FakeClock) -> None:
    """The state table unreachable: neither the breaker nor the pace lets an invitation through unchecked."""
    gate, _ = instance(table, at_start)
    table.fail("get_entity", times=None)
    with pytest.raises(TransientError) as checked:
        await gate.check()
    with pytest.raises(TransientError) as paced:
        await gate.pace(record(), MemoryStatusStore())
    assert checked.value.code == paced.value.code == "StorageUnavailable"


# --- the pace --------------------------------------------------------------------------------


async def test_pacing_spaces_invitations_app_wide(table: MemoryTable, at_start: FakeClock) -> None:
    """Six per minute: a burst of three goes at once, then each invitation waits ten seconds for its slot."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await at_start.sleep(seconds)

    gate, _ = instance(table, at_start, sleep=sleep, INVITATIONS_PER_MINUTE="6")
    for index in range(INVITATION_BURST + 2):
        await gate.pace(record(f"r{index}"), MemoryStatusStore())
    assert slept == [10.0, 10.0]


async def test_a_far_slot_is_kept_and_the_delivery_put_back_until_then(table: MemoryTable, at_start: FakeClock) -> None:
    """A slot beyond the in-process wait is saved on the record; the delivery comes back for it."""
    gate, state = instance(table, at_start, INVITATIONS_PER_MINUTE="0.1")  # one every ten minutes
    status = MemoryStatusStore()
    for index in range(INVITATION_BURST):
        await gate.pace(record(f"burst{index}"), status)
    with pytest.raises(HoldError) as paced:
        await gate.pace(record("r"), status)
    assert not paced.value.held and paced.value.code == "InvitationPaced"
    assert paced.value.delay == 600 > MAX_PACING_SLEEP
    saved = status.records["r"]
    assert saved.invite_slot == START + timedelta(minutes=10) and saved.phase == "WaitingForSlot"
    writes = state.ops.writes
    at_start.now += 600
    await gate.pace(saved, status)
    assert state.ops.writes == writes, "the kept slot is used, not a second one"


async def test_a_slot_missed_long_ago_is_not_used(table: MemoryTable, at_start: FakeClock) -> None:
    """After a long hold, stale slots would all fire at once: a new slot is reserved instead."""
    gate, state = instance(table, at_start)
    await gate.pace(record(invite_slot=START - timedelta(hours=3)), MemoryStatusStore())
    assert state.ops.writes == 1


@pytest.mark.parametrize(
    ("per_minute", "window"),
    [("6", 60.0), ("600", 1.0)],
    ids=["slots far ahead: deliveries held", "slots near: deliveries sleep"],
)
async def test_instances_pacing_together_never_exceed_the_pace(
    table: MemoryTable, at_start: FakeClock, per_minute: str, window: float
) -> None:
    """Three instances inviting at once stay within burst + pace in any window, at a fraction of an operation each."""
    instances = [instance(table, at_start, INVITATIONS_PER_MINUTE=per_minute) for _ in range(3)]
    status = MemoryStatusStore()
    sent: list[float] = []

    async def invite(gate: InvitationGate, request_id: str) -> None:
        current = record(request_id)
        while True:
            try:
                await gate.pace(current, status)
            except HoldError as held:  # what the worker does: the message comes back after the delay
                await at_start.sleep(held.delay)
                current = status.records[request_id]
                continue
            sent.append(at_start.now)
            return

    each = 10
    await asyncio.gather(*(invite(gate, f"i{n}-{k}") for n, (gate, _) in enumerate(instances) for k in range(each)))
    rate = float(per_minute) / 60
    assert len(sent) == 3 * each
    assert most_in_any_window(sent, window) <= INVITATION_BURST + window * rate
    assert max(sent) - min(sent) >= (len(sent) - INVITATION_BURST) / rate - 1e-3  # slots kept to the microsecond
    operations = sum(state.ops.total for _, state in instances)
    assert operations / len(sent) <= 0.5, f"{operations} storage operations for {len(sent)} invitations"


async def test_a_lone_instance_spends_at_most_one_operation_per_invitation(
    table: MemoryTable, at_start: FakeClock
) -> None:
    """One invitation at a time: each lease is one conditional write (the entity as last written spares the read)."""
    gate, state = instance(table, at_start, INVITATIONS_PER_MINUTE="6")
    for index in range(10):
        await gate.pace(record(f"r{index}"), MemoryStatusStore())
        at_start.now += 60
    assert (state.ops.reads, state.ops.writes) == (1, 10)


async def test_invitations_waiting_together_share_one_lease(table: MemoryTable, at_start: FakeClock) -> None:
    """A batch of deliveries reaching the pace at once costs one read and one write, not one round trip each."""
    gate, state = instance(table, at_start)
    status = MemoryStatusStore()
    await asyncio.gather(*(gate.pace(record(f"r{index}"), status) for index in range(16)))
    assert (state.ops.reads, state.ops.writes) == (1, 1)
