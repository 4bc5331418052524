"""The app-wide write budget on real storage (Azurite): instances with their own clients share one schedule."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from shared.platform.fleet import FleetState
from shared.platform.settings import StorageConnection
from shared.platform.storage import table_client
from shared.reset.budget import TableLedger, WriteBudget
from tools.azurite import AzuriteEndpoints
from tools.bench.fleet import most_in_any_window

Instance = Callable[[float, int], tuple[WriteBudget, FleetState]]


@pytest.fixture
async def instance(azurite: AzuriteEndpoints) -> AsyncIterator[Instance]:
    """A factory of budget instances, each with its own table client (as separate processes have), on one table."""
    name = f"State{uuid.uuid4().hex[:10]}"
    storage = StorageConnection(connection_string=azurite.connection_string)
    made: list[tuple[WriteBudget, FleetState]] = []

    def make(rate: float, burst: int) -> tuple[WriteBudget, FleetState]:
        state = FleetState(table_client(storage, name))
        made.append((WriteBudget(rate, burst=burst, ledger=TableLedger(state, rate, burst)), state))
        return made[-1]

    setup = FleetState(table_client(storage, name))
    await setup.ensure()
    await setup.aclose()
    yield make
    for budget, state in made:
        await budget.aclose()
        await state.aclose()


async def test_concurrent_updates_from_several_clients_lose_nothing(instance: Instance) -> None:
    """Read-modify-write under contention: every increment lands once; conflicts are retried, not lost."""
    (_, first), (_, second) = instance(1, 1), instance(1, 1)

    def increment(values: dict[str, object]) -> tuple[dict[str, object], None]:
        return {"Count": int(str(values.get("Count", 0))) + 1}, None

    await asyncio.gather(*(state.update("counter", increment) for state in (first, second) for _ in range(10)))
    assert (await first.read("counter"))["Count"] == 20
    assert first.ops.conflicts + second.ops.conflicts > 0


async def test_three_instances_together_stay_within_the_budget(instance: Instance) -> None:
    """Three instances writing as fast as they can send no more than burst + rate in any second, together."""
    made = [instance(20, 4) for _ in range(3)]
    budgets, states = [b for b, _ in made], [s for _, s in made]
    sent: list[float] = []

    async def write(budget: WriteBudget) -> None:
        await budget.acquire_write()
        sent.append(time.time())

    await asyncio.gather(*(write(b) for b in budgets for _ in range(20)))
    spent = sum(state.ops.total for state in states)
    print(
        f"\n3 instances, 60 writes: at most {most_in_any_window(sent, 1.0)} in any second (burst 4 + rate 20), "
        f"spread over {max(sent) - min(sent):.2f} s, {spent} storage operations"
    )
    assert len(sent) == 60
    assert most_in_any_window(sent, 1.0) <= 4 + 20
    assert max(sent) - min(sent) >= (60 - 4) / 20 - 0.05  # paced, not merely counted
    assert spent / 60 < 1.0, f"{spent} storage operations for 60 writes"


async def test_a_429_on_one_instance_pauses_the_others(instance: Instance) -> None:
    """One instance's Retry-After reaches another through storage: its next write waits for the pause's end."""
    (seen_429, _), (other, _) = instance(20, 4), instance(20, 4)
    await other.acquire_write()
    seen_429.pause(1.5)
    until = time.time() + 1.5
    await seen_429.settled()
    await other.acquire_write()
    print(f"\nthe other instance wrote {time.time() - until:+.3f} s after the pause's end")
    assert time.time() >= until - 0.01
