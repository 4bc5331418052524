"""The write budget's schedule (GCRA) and how an instance leases slots from it, on a fake clock."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from shared.platform.errors import TransientError
from shared.platform.fleet import FleetState
from shared.platform.storage_stub import MemoryTable
from shared.reset.budget import Grant, LocalLedger, TableLedger, WriteBudget, schedule
from tests.factories import FakeClock
from tools.bench.fleet import most_in_any_window


class CountingLedger(LocalLedger):
    """A local ledger that remembers every block it was asked for (one block = one storage round trip)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.blocks: list[int] = []

    async def reserve(self, count: int) -> Grant:
        self.blocks.append(count)
        return await super().reserve(count)


def test_a_burst_goes_at_once_then_writes_are_spaced_by_the_rate() -> None:
    """After an idle spell `burst` writes may go at once; the rest follow one interval apart."""
    slots = schedule(0.0, 100.0, 8, interval=0.1, burst=3)[0].slots
    assert slots[:3] == (100.0, 100.0, 100.0)
    assert [round(b - a, 9) for a, b in itertools.pairwise(slots[2:])] == [0.1] * 5


def test_a_pause_empties_the_bucket() -> None:
    """The first write after a pause goes at its end, the next one interval later: no burst into Graph."""
    slots = schedule(0.0, 100.0, 3, interval=0.5, burst=10, paused_until=104.0)[0].slots
    assert slots == (104.0, 104.5, 105.0)


def test_no_slot_is_granted_beyond_the_horizon() -> None:
    """A full horizon grants what fits and says when to come back for a worthwhile block."""
    grant, tat = schedule(0.0, 100.0, 30, interval=0.05, burst=1, horizon=1.0)
    assert len(grant.slots) == 21 and grant.slots[-1] == pytest.approx(101.0)
    later, _ = schedule(tat, grant.retry_at, 9, interval=0.05, burst=1, horizon=1.0)
    assert len(later.slots) == 5  # a quarter second's worth, not one slot at a time


def test_slots_from_any_arrival_pattern_conform_to_the_bucket() -> None:
    """Whatever the order and size of the blocks asked for, no 1-second window holds more than burst + rate."""
    rng = random.Random(7)
    tat, now = 0.0, 0.0
    sent: list[float] = []
    for _ in range(300):
        now += rng.choice([0.0, 0.01, 0.2, 1.5])
        grant, tat = schedule(tat, now, rng.randint(1, 12), interval=1 / 18, burst=15, horizon=1.0)
        sent.extend(grant.slots)
        assert all(now <= slot <= now + 1.0 for slot in grant.slots)
    assert most_in_any_window(sent, 1.0) <= 15 + 18


async def test_writes_waiting_together_share_one_lease(clock: FakeClock) -> None:
    """Sixteen writes that wait at once cost one block, not sixteen storage round trips."""
    ledger = CountingLedger(20, 5, clock=clock)
    budget = WriteBudget(20, burst=5, ledger=ledger, clock=clock, sleep=clock.sleep)
    await asyncio.gather(*(budget.acquire_write() for _ in range(16)))
    assert ledger.blocks == [16]


async def test_instances_drawing_from_one_schedule_stay_within_it_together(clock: FakeClock) -> None:
    """Three instances sharing a ledger send, all together, no more than the budget allows."""
    ledger = LocalLedger(10, 4, clock=clock)
    instances = [WriteBudget(10, burst=4, ledger=ledger, clock=clock, sleep=clock.sleep) for _ in range(3)]
    sent: list[float] = []

    async def write(budget: WriteBudget) -> None:
        await budget.acquire_write()
        sent.append(clock.now)

    await asyncio.gather(*(write(b) for b in instances for _ in range(20)))
    assert len(sent) == 60
    assert most_in_any_window(sent, 1.0) <= 4 + 10
    assert max(sent) - min(sent) == pytest.approx((60 - 4) / 10)


async def test_one_instance_alone_uses_the_whole_budget(clock: FakeClock) -> None:
    """No share per instance: a lone instance writes at the full rate."""
    budget = WriteBudget(18, burst=1, ledger=LocalLedger(18, 1, clock=clock), clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(37):
        await budget.acquire_write()
    assert clock.now - start == pytest.approx(36 / 18)


async def test_a_pause_learnt_after_the_grant_gives_the_slot_back(clock: FakeClock) -> None:
    """A slot granted before a 429 that falls inside its pause is not used: the write goes after the pause."""
    ledger = LocalLedger(1, 1, clock=clock)
    budget = WriteBudget(1, burst=1, ledger=ledger, clock=clock, sleep=clock.sleep)
    await budget.acquire_write()  # slot now; the next one is a second away
    start = clock.now

    async def late_429() -> None:
        await asyncio.sleep(0)
        budget.pause(5.0)

    await asyncio.gather(budget.acquire_write(), late_429())
    assert clock.now >= start + 5.0


async def test_reads_wait_out_a_pause(clock: FakeClock) -> None:
    """After a 429 with Retry-After, nothing in the instance calls Graph until it passes."""
    budget = WriteBudget(100, clock=clock, sleep=clock.sleep)
    start = clock.now
    budget.pause(2.5)
    await budget.wait_if_paused()
    assert clock.now == pytest.approx(start + 2.5)


async def test_a_failed_lease_fails_the_writes_waiting_for_it() -> None:
    """Storage down: the waiting writes get the transient error (the delivery is retried), none hangs."""

    class DownLedger(LocalLedger):
        async def reserve(self, count: int) -> Grant:
            raise TransientError("state table unavailable", code="StorageUnavailable")

    budget = WriteBudget(10, ledger=DownLedger(10))
    results = await asyncio.gather(*(budget.acquire_write() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, TransientError) and r.code == "StorageUnavailable" for r in results)


# --- the shared schedule in a table (the in-memory table double: ETags, one loop yield per call) ----


def fleet_of(table: MemoryTable, rate: float, burst: int, clock: FakeClock) -> tuple[WriteBudget, FleetState]:
    """One instance: its own FleetState over the shared table, as each process has its own client."""
    state = FleetState(table)
    ledger = TableLedger(state, rate, burst, clock=clock)
    return WriteBudget(rate, burst=burst, ledger=ledger, clock=clock, sleep=clock.sleep), state


async def test_concurrent_changes_to_one_entity_lose_nothing() -> None:
    """Read-modify-write races between instances: each change lands exactly once; conflicts are retried."""
    table = MemoryTable("GuestResetState")
    first, second = FleetState(table), FleetState(table)

    def increment(values: dict[str, object]) -> tuple[dict[str, object], None]:
        return {"Count": int(str(values.get("Count", 0))) + 1}, None

    await asyncio.gather(*(state.update("counter", increment) for state in (first, second) for _ in range(8)))
    assert (await first.read("counter"))["Count"] == 16
    assert first.ops.conflicts + second.ops.conflicts > 0


async def test_instances_sharing_the_table_stay_within_the_budget(clock: FakeClock) -> None:
    """Three instances, one entity: together within burst + rate per second, at a fraction of an operation per write."""
    table = MemoryTable("GuestResetState")
    instances = [fleet_of(table, 18, 15, clock) for _ in range(3)]
    sent: list[float] = []

    async def write(budget: WriteBudget) -> None:
        await budget.acquire_write()
        sent.append(clock.now)

    await asyncio.gather(*(write(budget) for budget, _ in instances for _ in range(40)))
    assert len(sent) == 120
    assert most_in_any_window(sent, 1.0) <= 15 + 18
    assert max(sent) - min(sent) >= (120 - 15) / 18 - 1e-6
    operations = sum(state.ops.total for _, state in instances)
    assert operations / len(sent) < 0.5, f"{operations} storage operations for {len(sent)} writes"


async def test_a_pause_reaches_the_other_instances_through_the_table(clock: FakeClock) -> None:
    """A 429 on one instance: another instance's next write waits until the Retry-After has passed."""
    table = MemoryTable("GuestResetState")
    (seen_429, _), (other, _) = fleet_of(table, 18, 15, clock), fleet_of(table, 18, 15, clock)
    await other.acquire_write()
    seen_429.pause(3.0)
    until = clock.now + 3.0
    await seen_429.settled()
    await other.acquire_write()
    assert clock.now >= until


async def test_storage_down_fails_the_waiting_writes_transiently() -> None:
    """The state table unreachable: the writes waiting get StorageUnavailable (the delivery is retried)."""
    table = MemoryTable("GuestResetState")
    table.fail("get_entity", times=None)
    budget = WriteBudget(10, ledger=TableLedger(FleetState(table), 10, 1))
    results = await asyncio.gather(*(budget.acquire_write() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, TransientError) and r.code == "StorageUnavailable" for r in results)


async def test_a_lone_instance_changes_the_entity_in_one_operation() -> None:
    """While nobody else writes it, a change starts from the entity as last written: no read, one write."""
    table = MemoryTable("GuestResetState")
    state = FleetState(table)

    def increment(values: dict[str, object]) -> tuple[dict[str, object], None]:
        return {"Count": int(str(values.get("Count", 0))) + 1}, None

    for _ in range(5):
        await state.update("counter", increment)
    assert (state.ops.reads, state.ops.writes) == (1, 5)
    other = FleetState(table)  # another instance writes in between: the next change reads again
    await other.update("counter", increment)
    await state.update("counter", increment)
    assert (await state.read("counter"))["Count"] == 7 and state.ops.conflicts == 1
