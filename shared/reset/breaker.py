"""The invitation circuit breaker and the app-wide invitation pace, kept in the app's shared state.

Microsoft publishes no rate for ``POST /invitations``; its staff name high volume in a short
period and repeated failed invitations as triggers of a tenant-wide block that only a support
ticket lifts (docs/graph.md). So invitations keep a pace of their own (``INVITATIONS_PER_MINUTE``),
and the first ``InvitationsBlocked`` or ``InvitationsDisabled`` opens a breaker: every later
delivery is held (``HoldError``: the worker puts it back on the queue with a delay, status Held)
instead of posting into the block, until an operator closes it. Both live in ``FleetState``
beside the write budget: the pace is a second ``TableLedger`` (entity ``invitations``), the
breaker the entity ``invitation-breaker`` (docs/deploy.md, "One shared state").
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.platform import telemetry
from shared.platform.errors import HoldError, ResetError
from shared.platform.fleet import FleetState
from shared.platform.logs import app_logger
from shared.platform.settings import Settings
from shared.reset.budget import Ledger, TableLedger, reserve_for
from shared.reset.queues import MAX_HOLD_SECONDS
from shared.reset.status import Status, StatusRecord, StatusStore, iso_time, parse_iso_time, utcnow

if TYPE_CHECKING:
    from shared.reset.runtime import Runtime

log = app_logger()

BREAKER_KEY = "invitation-breaker"
PACE_KEY = "invitations"
# Invitations that may go at once after a quiet spell: a ticket that resets a few guests together
# does not wait minutes for the pace, and never more than this go out together.
INVITATION_BURST = 3
# A delivery sleeps for its invitation slot up to this long; a later slot puts it back on the
# queue until then instead of holding one of the host's concurrent invocations.
MAX_PACING_SLEEP = 30.0
# A reserved slot missed by more than this (the delivery came back late) is not used: a burst of
# stale slots after a long hold is exactly the volume that trips the block.
SLOT_GRACE = timedelta(seconds=60)
# A closed breaker is believed this long per process, sparing a storage read per reset in a bulk
# run; an open one is read every time, so that closing it is seen at once.
CLOSED_CACHE_SECONDS = 2.0

# What a lease answers each waiting invitation: its slot (epoch seconds; None when none is free
# within the pace's horizon) and when asking again can get one.
Slot = tuple[float | None, float]


@dataclass(frozen=True)
class BreakerState:
    """Whether invitations may be posted; when open, what opened it and when."""

    open: bool = False
    code: str | None = None
    message: str | None = None
    opened_at: datetime | None = None
    opened_by: str | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None

    @classmethod
    def from_entity(cls, values: dict[str, Any]) -> BreakerState:
        return cls(
            open=values.get("State") == "open",
            code=values.get("Code"),
            message=values.get("Message"),
            opened_at=parse_iso_time(values.get("OpenedAt")),
            opened_by=values.get("OpenedBy"),
            closed_at=parse_iso_time(values.get("ClosedAt")),
            closed_by=values.get("ClosedBy"),
        )

    def to_entity(self) -> dict[str, Any]:
        values = {
            "State": "open" if self.open else "closed",
            "Code": self.code,
            "Message": self.message,
            "OpenedAt": iso_time(self.opened_at),
            "OpenedBy": self.opened_by,
            "ClosedAt": iso_time(self.closed_at),
            "ClosedBy": self.closed_by,
        }
        return {k: v for k, v in values.items() if v}

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": "open" if self.open else "closed",
            "code": self.code,
            "message": self.message,
            "openedAt": iso_time(self.opened_at),
            "openedBy": self.opened_by,
            "closedAt": iso_time(self.closed_at),
            "closedBy": self.closed_by,
        }


def _observe(state: BreakerState) -> BreakerState:
    telemetry.gauge("guest_reset.breaker.open", 1 if state.open else 0)
    return state


class InvitationPace:
    """This instance's side of the invitation pace: the invitations waiting for a slot at the same
    moment share one lease (one storage round trip), as writes do in the write budget.

    One lease runs at a time; the invitations that arrive while it is out go in the next one, so
    a batch of deliveries reaching the pace together costs one round trip, not one each.
    """

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._waiting: list[asyncio.Future[Slot]] = []
        self._leaser: asyncio.Task[None] | None = None

    async def next_slot(self) -> Slot:
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if self._leaser is None or self._leaser.done():
            # A fresh context: the lease serves every waiting invitation, not the request that started it.
            self._leaser = asyncio.get_running_loop().create_task(self._lease(), context=contextvars.Context())
        return await future

    async def _lease(self) -> None:
        while self._waiting:
            block = [future for future in self._waiting if not future.done()]
            self._waiting.clear()
            if not block:
                continue
            grant = await reserve_for(self._ledger, list(block))
            if grant is None:
                continue
            for index, future in enumerate(block):
                if not future.done():  # cancelled meanwhile: its slot goes unused
                    slot = grant.slots[index] if index < len(grant.slots) else None
                    future.set_result((slot, grant.retry_at))

    async def aclose(self) -> None:
        if self._leaser is not None:
            self._leaser.cancel()
        for future in self._waiting:
            future.cancel()
        self._waiting.clear()


class InvitationGate:
    """The rules: may an invitation be posted now, and when is its turn (state in ``FleetState``)."""

    def __init__(
        self,
        state: FleetState,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._state = state
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._closed_until = 0.0
        # Slots far ahead are granted (up to a queue message's longest delay): a delivery whose turn
        # is far off keeps its slot and comes back for it, instead of asking again with the crowd.
        ledger = TableLedger(
            state,
            settings.invitations_per_minute / 60,
            INVITATION_BURST,
            key=PACE_KEY,
            horizon=MAX_HOLD_SECONDS,
            clock=self._now,
        )
        self._leases = InvitationPace(ledger)

    def _now(self) -> float:
        return self._clock().timestamp()

    def _held(self, state: BreakerState) -> HoldError:
        since = iso_time(state.opened_at) or "now"
        return HoldError(
            f"held: the invitation breaker is open since {since} ({state.code}: {state.message}); nothing is "
            "sent while it is open. Once Microsoft lifts the block, close it with `guest-reset breaker close` "
            "or POST /api/breaker/close (admin key) and held requests resume",
            code=state.code or "InvitationsBlocked",
            delay=self._settings.breaker_hold_seconds,
        )

    async def state(self) -> BreakerState:
        """The breaker as stored now (no cache: the CLI, GET /api/breaker, the backlog timer)."""
        return _observe(BreakerState.from_entity(await self._state.read(BREAKER_KEY)))

    async def check(self) -> None:
        """Raise HoldError while the breaker is open."""
        now = self._now()
        if now < self._closed_until <= now + CLOSED_CACHE_SECONDS:  # a clock set back ends the cache too
            return
        state = await self.state()
        if state.open:
            raise self._held(state)
        self._closed_until = self._now() + CLOSED_CACHE_SECONDS

    async def trip(self, error: ResetError, request_id: str) -> HoldError:
        """Open the breaker for a tenant-wide refusal (first opener kept); the HoldError to raise."""
        self._closed_until = 0.0
        opened = BreakerState(
            open=True, code=error.code, message=error.message, opened_at=self._clock(), opened_by=request_id
        )

        def open_unless_open(values: dict[str, Any]) -> tuple[dict[str, Any] | None, BreakerState]:
            current = BreakerState.from_entity(values)
            return (None, current) if current.open else (opened.to_entity(), opened)

        state = _observe(await self._state.update(BREAKER_KEY, open_unless_open))
        if state is opened:
            log.error("invitation breaker opened by %s: %s", error.code, error.message)
        return self._held(state)

    async def close(self, by: str | None) -> BreakerState:
        """Close the breaker (operator action); already closed stays closed, with who closed it last."""
        closed_at = self._clock()

        def closing(values: dict[str, Any]) -> tuple[dict[str, Any], tuple[bool, BreakerState]]:
            current = BreakerState.from_entity(values)
            closed = replace(current, open=False, closed_at=closed_at, closed_by=by)
            return closed.to_entity(), (current.open, closed)

        was_open, closed = await self._state.update(BREAKER_KEY, closing)
        if was_open:
            log.warning("invitation breaker closed by %s", by or "an operator")
        return _observe(closed)

    async def pace(self, record: StatusRecord, status: StatusStore) -> StatusRecord:
        """Wait for this request's invitation slot, or put the delivery back until then (HoldError)."""
        now = self._clock()
        slot = record.invite_slot
        if slot is None or not (now - SLOT_GRACE <= slot <= now + timedelta(seconds=MAX_HOLD_SECONDS)):
            taken, retry_at = await self._leases.next_slot()
            now = self._clock()
            if taken is None:  # a week of slots already taken: ask again when one frees up
                raise HoldError(
                    f"no invitation slot free for a week (INVITATIONS_PER_MINUTE="
                    f"{self._settings.invitations_per_minute:g})",
                    code="InvitationPaced",
                    delay=retry_at - now.timestamp(),
                    held=False,
                )
            slot = datetime.fromtimestamp(taken, UTC)
        wait = (slot - now).total_seconds()
        if wait > MAX_PACING_SLEEP:
            record = await status.save(record, invite_slot=slot, phase="WaitingForSlot")
            raise HoldError(
                f"waiting for its invitation slot at {iso_time(slot)} (INVITATIONS_PER_MINUTE="
                f"{self._settings.invitations_per_minute:g})",
                code="InvitationPaced",
                delay=wait,
                held=False,
            )
        if wait > 0:
            await self._sleep(wait)
        return record

    async def aclose(self) -> None:
        await self._leases.aclose()


async def resume_held(runtime: Runtime, *, limit: int = 100_000) -> list[str]:
    """Send every Held request back to the queue now (after the breaker closes); their ids.

    A held delivery also wakes by itself every BREAKER_HOLD_SECONDS; a second copy of a request
    is harmless, the status claim lets one of them work and drops the other.
    """
    resumed: list[str] = []
    async for record in runtime.status.scan("Status eq @held", {"held": str(Status.HELD)}):
        if record.request_json is None:
            continue  # too large to keep: its own delayed copy resumes it
        await runtime.publisher.send_request(record.request_json)
        resumed.append(record.request_id)
        if len(resumed) >= limit:
            break
    return resumed
