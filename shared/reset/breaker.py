"""The invitation circuit breaker and the app-wide invitation pacing, shared by every instance.

Microsoft publishes no rate for ``POST /invitations``; its staff name high volume in a short
period and repeated failed invitations as triggers of a tenant-wide block that only a support
ticket lifts (docs/graph.md). So the first ``InvitationsBlocked`` or ``InvitationsDisabled``
opens a breaker held in the status table: every later delivery is held (put back on the queue
with a delay, status Held) instead of posting into the block, until an operator closes it.
Invitations are also paced app-wide (``INVITATIONS_PER_MINUTE``), apart from the directory
write budget: each invitation reserves the next free slot in a shared entity.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.platform.errors import HoldError, ResetError, TransientError
from shared.platform.logs import app_logger
from shared.platform.settings import Settings
from shared.reset.contract import ResetRequest, canonical_json
from shared.reset.status import Status, StatusRecord, StatusStore, iso_time, parse_iso_time, utcnow

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

    from shared.reset.runtime import Runtime

log = app_logger()

# Both entities live in the status table under RowKeys no status record uses ("status").
PARTITION = "_invitations"
BREAKER_ROW = "breaker"
PACER_ROW = "pacer"
# A delivery sleeps for its invitation slot up to this long; a later slot puts it back on the
# queue until then instead of holding one of the host's concurrent invocations.
MAX_PACING_SLEEP = 30.0
# A reserved slot missed by more than this (the delivery came back late) is not used: a burst of
# stale slots after a long hold is exactly the volume that trips the block.
SLOT_GRACE = timedelta(seconds=60)
# Queue messages cannot stay invisible longer than 7 days.
MAX_DELAY = 7 * 24 * 3600 - 60.0
# Optimistic updates of the one pacing entity: enough attempts, with growing jitter, for a whole
# scaled-out fleet reserving at once.
RESERVE_ATTEMPTS = 50
# A closed breaker is believed this long per process, sparing a table read per reset in a bulk
# run; an open one is read every time, so that closing it is seen at once.
CLOSED_CACHE_SECONDS = 2.0


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


def _storage_error(action: str, error: Exception) -> TransientError:
    return TransientError(f"status table unavailable while {action}: {type(error).__name__}", code="StorageUnavailable")


class GateStore:
    """Every read and write of the breaker's and the pacer's shared state, and nothing else.

    Kept to this one class so the state can move (a fleet-wide budget store) without touching
    the rules in ``InvitationGate``.
    """

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def _get(self, row: str) -> tuple[dict[str, Any] | None, str | None]:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            entity = await self._table.get_entity(PARTITION, row)
        except ResourceNotFoundError:
            return None, None
        except AzureError as error:
            raise _storage_error(f"reading the invitation {row}", error) from error
        return dict(entity), (getattr(entity, "metadata", {}) or {}).get("etag")

    async def read_breaker(self) -> BreakerState:
        entity, _ = await self._get(BREAKER_ROW)
        if entity is None:
            return BreakerState()
        return BreakerState(
            open=entity.get("State") == "open",
            code=entity.get("Code"),
            message=entity.get("Message"),
            opened_at=parse_iso_time(entity.get("OpenedAt")),
            opened_by=entity.get("OpenedBy"),
            closed_at=parse_iso_time(entity.get("ClosedAt")),
            closed_by=entity.get("ClosedBy"),
        )

    async def write_breaker(self, state: BreakerState) -> None:
        from azure.core.exceptions import AzureError
        from azure.data.tables import UpdateMode

        values = {
            "State": "open" if state.open else "closed",
            "Code": state.code,
            "Message": state.message,
            "OpenedAt": iso_time(state.opened_at),
            "OpenedBy": state.opened_by,
            "ClosedAt": iso_time(state.closed_at),
            "ClosedBy": state.closed_by,
        }
        entity = {"PartitionKey": PARTITION, "RowKey": BREAKER_ROW, **{k: v for k, v in values.items() if v}}
        try:
            await self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        except AzureError as error:
            raise _storage_error("writing the invitation breaker", error) from error

    async def reserve_slot(self, interval: timedelta, now: datetime) -> datetime:
        """The next free invitation slot, taken for the caller (optimistic concurrency on one entity)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        for attempt in range(RESERVE_ATTEMPTS):
            entity, etag = await self._get(PACER_ROW)
            free = parse_iso_time(entity.get("NextSlot")) if entity else None
            slot = max(now, free) if free else now
            taken = {"PartitionKey": PARTITION, "RowKey": PACER_ROW, "NextSlot": iso_time(slot + interval)}
            try:
                if entity is None:
                    await self._table.create_entity(taken)
                else:
                    await self._table.update_entity(
                        taken, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
            except (ResourceExistsError, ResourceModifiedError):
                # Another instance took a slot first; read again. The jitter de-syncs a crowd.
                await asyncio.sleep(random.uniform(0, 0.01 * (attempt + 1)))
                continue
            except AzureError as error:
                raise _storage_error("reserving an invitation slot", error) from error
            return slot
        raise TransientError("the invitation pacing entity kept changing; will retry", code="PacingConflict")

    async def aclose(self) -> None:
        await self._table.close()


class InvitationGate:
    """The rules: may an invitation be posted now, and when is its turn."""

    def __init__(
        self,
        store: GateStore,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._closed_until = 0.0

    def _held(self, state: BreakerState) -> HoldError:
        since = iso_time(state.opened_at) or "now"
        return HoldError(
            f"held: the invitation breaker is open since {since} ({state.code}: {state.message}); nothing is "
            "sent while it is open. Once Microsoft lifts the block, close it with `guest-reset breaker close` "
            "or POST /api/breaker/close (admin key) and held requests resume",
            code=state.code or "InvitationsBlocked",
            delay=self._settings.breaker_hold_seconds,
        )

    async def check(self) -> None:
        """Raise HoldError while the breaker is open."""
        if time.monotonic() < self._closed_until:
            return
        state = await self.store.read_breaker()
        if state.open:
            raise self._held(state)
        self._closed_until = time.monotonic() + CLOSED_CACHE_SECONDS

    async def trip(self, error: ResetError, request_id: str) -> HoldError:
        """Open the breaker for a tenant-wide refusal (first opener kept); the HoldError to raise."""
        state = await self.store.read_breaker()
        self._closed_until = 0.0
        if not state.open:
            state = BreakerState(
                open=True, code=error.code, message=error.message, opened_at=self._clock(), opened_by=request_id
            )
            await self.store.write_breaker(state)
            log.error("invitation breaker opened by %s: %s", error.code, error.message)
        return self._held(state)

    async def close(self, by: str | None) -> BreakerState:
        """Close the breaker (operator action); already closed stays closed."""
        state = await self.store.read_breaker()
        closed = replace(state, open=False, closed_at=self._clock(), closed_by=by)
        await self.store.write_breaker(closed)
        if state.open:
            log.warning("invitation breaker closed by %s", by or "an operator")
        return closed

    async def pace(self, record: StatusRecord, status: StatusStore) -> StatusRecord:
        """Wait for this request's invitation slot, or put the delivery back until then (HoldError)."""
        now = self._clock()
        slot = record.invite_slot
        if slot is None or not (now - SLOT_GRACE <= slot <= now + timedelta(seconds=MAX_DELAY)):
            interval = timedelta(minutes=1) / self._settings.invitations_per_minute
            slot = await self.store.reserve_slot(interval, now)
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


async def hold_delivery(runtime: Runtime, request: ResetRequest, request_id: str, error: HoldError) -> None:
    """Put this delivery back on the queue after ``error.delay``: not failed, not retried into a block.

    The one place that defers a delivery: a new message with the request (and its requestId)
    becomes visible after the delay, so no dequeue of the host's count is spent; this delivery
    then ends normally.
    """
    latest = await runtime.status.get(request_id)
    body = (latest.request_json if latest else None) or canonical_json(request, requestId=request_id)
    if latest is not None:
        changes: dict[str, Any] = {"lease_owner": None, "lease_until": None}
        if error.held:
            changes.update(status=Status.HELD, phase="Held", error_code=error.code, error_message=error.message)
        await runtime.status.save(
            latest, history=latest.with_event("held" if error.held else "paced", code=error.code), **changes
        )
    delay = min(max(error.delay, 1.0), MAX_DELAY)
    await runtime.publisher.send_request(body, delay=delay)
    log.warning("delivery put back on the queue for %.0fs: %s", delay, error.message)


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
