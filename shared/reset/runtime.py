"""The live clients a worker uses, created lazily on first use and kept per event loop.

Async storage and HTTP clients belong to the loop that created them; the Functions worker
has one loop, while tests and tools may run several, so the cache is keyed by loop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.platform import telemetry
from shared.platform.fleet import FleetState
from shared.platform.logs import configure_logging
from shared.platform.settings import Settings, get_settings
from shared.reset.breaker import InvitationGate
from shared.reset.budget import TableLedger, WriteBudget
from shared.reset.graph import GraphGateway
from shared.reset.queues import Publisher
from shared.reset.status import StatusStore
from shared.reset.throttle import RetryPolicy

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient
    from azure.storage.queue.aio import QueueClient


@dataclass
class Runtime:
    settings: Settings
    graph: GraphGateway
    status: StatusStore
    publisher: Publisher
    # App-wide state every instance shares: the write budget's schedule and pause, the invitation
    # pace and breaker (``gate``).
    fleet: FleetState
    gate: InvitationGate
    budget: WriteBudget | None = None

    async def aclose(self) -> None:
        if self.budget is not None:
            await self.budget.aclose()
        await self.gate.aclose()
        await self.graph.aclose()
        await self.status.aclose()
        await self.publisher.aclose()
        await self.fleet.aclose()


def write_budget(settings: Settings, fleet: FleetState) -> WriteBudget:
    """The app-wide write budget, as seen from this instance (one per runtime, state in storage)."""
    ledger = TableLedger(fleet, settings.graph_writes_per_second, settings.graph_write_burst)
    return WriteBudget(settings.graph_writes_per_second, burst=settings.graph_write_burst, ledger=ledger)


async def build_runtime(settings: Settings) -> Runtime:
    from shared.platform.storage import queue_client, table_client
    from shared.reset.graph_sdk import SdkGraphGateway

    policy = RetryPolicy(settings.graph_retry_delays, settings.graph_max_attempts)
    fleet = FleetState(table_client(settings.storage, settings.state_table))
    budget = write_budget(settings, fleet)
    runtime = Runtime(
        settings=settings,
        graph=SdkGraphGateway(settings, budget=budget, policy=policy),
        status=StatusStore(table_client(settings.storage, settings.status_table)),
        publisher=Publisher(
            results=queue_client(settings.storage, settings.result_queue),
            poison=queue_client(settings.storage, settings.poison_queue),
            requests=queue_client(settings.storage, settings.request_queue),
            callbacks=queue_client(settings.storage, settings.callback_queue),
        ),
        fleet=fleet,
        gate=InvitationGate(fleet, settings),
        budget=budget,
    )
    await runtime.status.ensure()
    await runtime.publisher.ensure()
    await fleet.ensure()
    return runtime


def stub_runtime(
    settings: Settings,
    *,
    graph: GraphGateway | None = None,
    table: TableClient | None = None,
    results: QueueClient | None = None,
    poison: QueueClient | None = None,
    requests: QueueClient | None = None,
    callbacks: QueueClient | None = None,
) -> Runtime:
    """A whole runtime in memory: the Graph stub and storage doubles, or the ones given (tests, tools).

    Pass the doubles in to keep a handle on them (script failures, read what was sent). The
    app-wide state (the invitation pace and breaker) is a table of its own; Graph writes are not
    budgeted.
    """
    from shared.platform.storage_stub import MemoryQueue, MemoryTable
    from shared.reset.graph_stub import StubGraphGateway

    table = table or MemoryTable(settings.status_table)
    fleet = FleetState(MemoryTable(settings.state_table))
    return Runtime(
        settings=settings,
        graph=graph or StubGraphGateway(role_check=settings.role_check),
        status=StatusStore(table),
        publisher=Publisher(
            results=results or MemoryQueue(settings.result_queue),
            poison=poison or MemoryQueue(settings.poison_queue),
            requests=requests or MemoryQueue(settings.request_queue),
            callbacks=callbacks or MemoryQueue(settings.callback_queue),
        ),
        fleet=fleet,
        gate=InvitationGate(fleet, settings),
    )


RuntimeFactory = Callable[[Settings], Awaitable[Runtime]]
_factory: RuntimeFactory = build_runtime
_runtimes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Runtime] = weakref.WeakKeyDictionary()


_building: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def get_runtime() -> Runtime:
    """The runtime of the running event loop, built once on first use.

    A cold worker starts a whole batch of invocations at once; the lock makes them share one
    set of clients instead of each building (and leaking) its own.
    """
    loop = asyncio.get_running_loop()
    runtime = _runtimes.get(loop)
    if runtime is not None:
        return runtime
    lock = _building.setdefault(loop, asyncio.Lock())
    async with lock:
        runtime = _runtimes.get(loop)
        if runtime is None:
            telemetry.configure()
            configure_logging()
            runtime = await _factory(get_settings())
            _runtimes[loop] = runtime
    return runtime


def set_runtime_factory(factory: RuntimeFactory | None) -> None:
    """Tests and tools swap in their own clients; None restores the default."""
    global _factory
    _factory = factory or build_runtime
    _runtimes.clear()


async def close_runtime() -> None:
    """Close the running loop's clients (tools and tests call this before the loop ends)."""
    runtime = _runtimes.pop(asyncio.get_running_loop(), None)
    if runtime is not None:
        await runtime.aclose()


def reset_runtime() -> None:
    """Forget every cached runtime (tests)."""
    _runtimes.clear()
