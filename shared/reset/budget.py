"""The app-wide Graph write budget: every instance takes its write slots from one schedule in storage.

Graph allows about 3,000 identity writes per 150 s per app and tenant (20/s), however many
instances the platform runs. The budget is a GCRA token bucket (rate ``GRAPH_WRITES_PER_SECOND``,
burst ``GRAPH_WRITE_BURST``) whose one number of state, the theoretical arrival time (TAT),
lives in a ``FleetState`` entity. An instance leases a block of consecutive slots for all the
writes it has waiting, in one read and one conditional write (ETag), and each write then waits
for its own slot. So all instances together never exceed the budget, one instance alone can use
all of it, and storage is touched once per block, not once per write (docs/operations.md has the
arithmetic). A 429 anywhere is written to the same entity: every instance's next block starts
after the Retry-After, and slots already granted that fall inside the pause are given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from shared.platform import telemetry
from shared.platform.fleet import FleetState
from shared.platform.logs import app_logger
from shared.reset.deadline import check_wait

log = app_logger()

BUDGET_KEY = "graph-writes"
# Slots are granted at most this far ahead. It bounds how long an instance keeps writing on
# slots granted before another instance's 429 (the pause reaches it with its next lease), and
# keeps one instance from reserving the whole future while others wait.
HORIZON_SECONDS = 1.0
# Lease the next block this long before the slots already held run out: twice the recent lease
# round trip (storage is slower on a busy host), within these bounds; the writes arriving until
# then join that block.
LEAD_SECONDS = 0.25
MAX_LEAD_SECONDS = 1.0
# A write that wakes this late for its slot (an overloaded event loop) takes a new one rather
# than bunch up with later writes, or go out after a pause it has not heard of yet.
GRACE_SECONDS = 0.5


@dataclass(frozen=True)
class Grant:
    """Slots (epoch seconds) for some of the writes that asked, in order; when it holds fewer than
    asked, ``retry_at`` says when asking again can get more. ``paused_until``: the pause known then."""

    slots: tuple[float, ...]
    paused_until: float
    retry_at: float = 0.0


def schedule(
    tat: float,
    now: float,
    count: int,
    *,
    interval: float,
    burst: int,
    paused_until: float = 0.0,
    horizon: float = float("inf"),
) -> tuple[Grant, float]:
    """GCRA: send times for up to ``count`` writes from ``now`` on, and the new theoretical arrival time.

    A write may go at ``TAT - tau`` (``tau`` = (burst - 1) x interval: up to ``burst`` at once
    after an idle spell) and moves TAT one interval on; slots beyond ``now + horizon`` are not
    granted. A pause empties the bucket: the first write after it goes at its end, the next ones
    one interval apart.
    """
    tau = (burst - 1) * interval
    tat = max(tat, paused_until + tau)
    slots: list[float] = []
    while len(slots) < count:
        slot = max(now, tat - tau)
        if slot > now + horizon + 1e-9:  # float error must not cost a slot
            break
        slots.append(slot)
        tat = max(tat, slot) + interval
    # Come back when a worthwhile block fits (a quarter second of slots, or all that is wanted),
    # not for every single slot as it frees up.
    wanted = min(count - len(slots), max(1, round(0.25 / interval)))
    retry_at = tat - tau + (wanted - 1) * interval - horizon if wanted > 0 else 0.0
    return Grant(tuple(slots), paused_until, retry_at), tat


class Ledger(Protocol):
    """Where the schedule lives: this process (``LocalLedger``) or app-wide storage (``TableLedger``)."""

    async def reserve(self, count: int) -> Grant: ...

    async def pause(self, until: float) -> None: ...


async def reserve_for(ledger: Ledger, block: list[asyncio.Future[Any]]) -> Grant | None:
    """One slot per waiting future, asked of ``ledger`` in one operation; if asking fails, every
    waiter still waiting gets the error and None comes back."""
    try:
        with telemetry.quiet():
            return await ledger.reserve(len(block))
    except Exception as error:
        for future in block:
            if not future.done():
                future.set_exception(error)
        return None


class LocalLedger:
    """The schedule in memory: one process paces itself (tools, tests, the single-process benchmarks)."""

    def __init__(self, per_second: float, burst: int = 1, *, clock: Callable[[], float] = time.time) -> None:
        self.interval = 1.0 / per_second
        self.burst = burst
        self._clock = clock
        self._tat = 0.0
        self._paused_until = 0.0

    async def reserve(self, count: int) -> Grant:
        grant, self._tat = schedule(
            self._tat,
            self._clock(),
            count,
            interval=self.interval,
            burst=self.burst,
            paused_until=self._paused_until,
            horizon=HORIZON_SECONDS,
        )
        return grant

    async def pause(self, until: float) -> None:
        self._paused_until = max(self._paused_until, until)


class TableLedger:
    """The schedule in a ``FleetState`` entity: every instance of the app draws from the same one.

    One entity per schedule (``graph-writes`` for this budget, ``invitations`` for the invitation
    pace): ``Tat`` and ``PausedUntil`` (epoch seconds, wall clock: instances share no monotonic
    clock, and Azure hosts keep theirs NTP-synchronised), plus ``Rate`` and ``Burst`` for whoever
    reads it. ``horizon``: how far ahead slots are granted.
    """

    def __init__(
        self,
        state: FleetState,
        per_second: float,
        burst: int,
        *,
        key: str = BUDGET_KEY,
        horizon: float = HORIZON_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = 1.0 / per_second
        self.rate = per_second
        self.burst = burst
        self._state = state
        self._key = key
        self._horizon = horizon
        self._clock = clock

    async def reserve(self, count: int) -> Grant:
        def take(values: dict[str, Any]) -> tuple[dict[str, Any] | None, Grant]:
            paused_until = float(values.get("PausedUntil", 0.0))
            grant, tat = schedule(
                float(values.get("Tat", 0.0)),
                self._clock(),
                count,
                interval=self.interval,
                burst=self.burst,
                paused_until=paused_until,
                horizon=self._horizon,
            )
            if not grant.slots:
                return None, grant  # nothing granted: nothing to write
            updated = {**values, "Tat": tat, "PausedUntil": paused_until, "Rate": self.rate, "Burst": self.burst}
            return updated, grant

        return await self._state.update(self._key, take)

    async def pause(self, until: float) -> None:
        # One blind write, so the news spreads within one storage round trip even while the
        # other instances keep the entity busy with leases (theirs then conflict and re-read).
        await self._state.merge(self._key, {"PausedUntil": until})


class WriteBudget:
    """This instance's side of the budget: writes wait for slots, leased in blocks sized by demand.

    One lease runs at a time; it asks for a slot for every write waiting at that moment (at most
    ``max_block``), and the next lease waits until the slots held are about to run out, so the
    writes that arrive meanwhile share one storage round trip. Reads are not budgeted but wait
    out a pause this instance knows of.
    """

    def __init__(
        self,
        per_second: float,
        *,
        burst: int = 1,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_block: int | None = None,
    ) -> None:
        self.per_second = per_second
        self.interval = 1.0 / per_second
        self._ledger: Ledger = ledger or LocalLedger(per_second, burst, clock=clock)
        self._clock = clock
        self._sleep = sleep
        self.max_block = max_block or max(burst, int(per_second) + 1)
        self._waiting: deque[asyncio.Future[float]] = deque()
        self._leaser: asyncio.Task[None] | None = None
        self._held_until = 0.0
        self._paused_until = 0.0
        self._lead = LEAD_SECONDS
        self._background: set[asyncio.Task[None]] = set()

    async def acquire_write(self) -> None:
        """Wait for this write's slot in the app-wide schedule (a slot past the deadline holds the request)."""
        started = self._clock()
        while True:
            paused = self._paused_until - self._clock()
            if paused > 0:  # a pause Graph asked for: no slot before it ends
                check_wait(paused, holdable=True, what="the next Graph write")
            slot = await self._slot()
            delay = slot - self._clock()
            if delay > 0:
                check_wait(delay, holdable=True, what="the next Graph write")
                await self._sleep(delay)
            if self._paused_until > slot:
                continue  # a pause learnt after the slot was granted: the slot falls inside it
            if self._clock() - slot > GRACE_SECONDS:
                continue  # woke too late: sending now would bunch up with later slots
            break
        telemetry.record("guest_reset.budget.wait", self._clock() - started, rate=self.per_second)

    async def wait_if_paused(self) -> None:
        """Reads are not budgeted, but they respect a pause Graph asked for."""
        delay = self._paused_until - self._clock()
        if delay > 0:
            check_wait(delay, holdable=True, what="the next Graph read")
            await self._sleep(delay)

    def pause(self, seconds: float) -> None:
        """Hold every instance's calls for ``seconds`` (Graph's Retry-After): here at once, elsewhere
        from their next lease on (the pause is written to the shared entity in the background)."""
        until = self._clock() + seconds
        if until <= self._paused_until:
            return
        self._paused_until = until
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to tell the others from
            self._spawn(self._publish_pause(until))

    async def _publish_pause(self, until: float) -> None:
        try:
            with telemetry.quiet():
                await self._ledger.pause(until)
        except Exception as error:
            # The others then learn of it from their own 429s; this instance holds its calls anyway.
            log.warning("could not share a Graph pause with the other instances: %s", error)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # A fresh context: the lease serves every waiting write, not the request that started it.
        task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _slot(self) -> float:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if self._leaser is None or self._leaser.done():
            self._leaser = self._spawn(self._lease_for_waiters())
        return await future

    async def _lease_for_waiters(self) -> None:
        while self._waiting:
            early = self._held_until - self._lead - self._clock()
            if early > 0:
                await self._sleep(early)
            block: list[asyncio.Future[float]] = []
            while self._waiting and len(block) < self.max_block:
                future = self._waiting.popleft()
                if not future.done():
                    block.append(future)
            if not block:
                continue
            asked = self._clock()
            grant = await reserve_for(self._ledger, list(block))
            if grant is None:
                continue
            round_trip = self._clock() - asked
            self._lead = min(MAX_LEAD_SECONDS, max(LEAD_SECONDS, 0.8 * self._lead + 0.2 * 2 * round_trip))
            self._paused_until = max(self._paused_until, grant.paused_until)
            for future, slot in zip(block, grant.slots, strict=False):
                if not future.done():  # cancelled meanwhile: its slot goes unused
                    future.set_result(slot)
            if grant.slots:
                self._held_until = max(self._held_until, grant.slots[-1])
            unserved = block[len(grant.slots) :]
            if unserved:
                # The horizon is full: these writes wait for the next block, first in line.
                self._waiting.extendleft(reversed(unserved))
                self._held_until = max(self._held_until, grant.retry_at + self._lead)

    async def settled(self) -> None:
        """Wait until a pause this instance saw has been shared (tests; nothing else needs to wait)."""
        pending = [task for task in self._background if task is not self._leaser]
        if pending:
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        for task in (*self._background, *([self._leaser] if self._leaser else [])):
            task.cancel()
        for future in self._waiting:
            future.cancel()
        self._waiting.clear()
