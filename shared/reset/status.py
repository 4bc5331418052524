"""The status record of each request (Azure Table), and the claim that makes delivery idempotent.

One status entity per requestId (PartitionKey = requestId, RowKey ``status``). A delivery works
on a request only while it holds the request's claim: a second entity in the same partition
(RowKey ``lease``) with an owner and an expiry, taken and renewed with ETags. The claim is short
(``CLAIM``) and a heartbeat renews it while its worker lives, so a dead worker's claim lapses
within a minute; it lives beside the status record so that renewing it never changes the
record's ETag, which the reset's own saves are guarded by. Taking a claim also bumps the status
record (attempts, history): that write is the fence that stops a delivery whose claim was taken
over from saving anything more.

What a record keeps at rest is what replay and audit need (docs/security.md): the submitter,
the request with its callback secrets masked (dropped once the request succeeded), Graph's
messages redacted, and a redeem URL only until it is handed over or expires.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from shared.platform.errors import ClaimLostError, ResetError, TransientError
from shared.platform.logs import mask_email, mask_url_secrets, redact
from shared.reset.contract import (
    IDEMPOTENCY_WINDOW,
    ResetOutcome,
    ResetRequest,
    canonical_json,
    derived_request_ids,
    stored_request,
)

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

ROW_KEY = "status"
LEASE_ROW_KEY = "lease"
# A claim lasts a minute and the heartbeat renews it every 20 s: two renewals may fail (a storage
# blip) before it lapses, and a dead worker's requests are free again a minute after it died.
CLAIM = timedelta(seconds=60)
HEARTBEAT_SECONDS = CLAIM.total_seconds() / 3
HISTORY_LIMIT = 20


class Status(StrEnum):
    ACCEPTED = "Accepted"
    PROCESSING = "Processing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DRY_RUN_PASSED = "DryRunPassed"
    # Waiting for the invitation breaker to close (shared.reset.breaker); not an outcome.
    HELD = "Held"

    @property
    def terminal(self) -> bool:
        return self in {Status.SUCCEEDED, Status.FAILED, Status.DRY_RUN_PASSED}


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_time(value: datetime | None) -> str | None:
    """How times are stored: ISO 8601 in UTC with microseconds, so strings sort and compare."""
    return value.astimezone(UTC).isoformat(timespec="microseconds") if value else None


def parse_iso_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


@dataclass(frozen=True)
class StatusRecord:
    """Everything we know about one request; the public part goes into result messages."""

    request_id: str
    status: Status
    attempts: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    user_id: str | None = None
    masked_email: str | None = None
    ticket_id: str | None = None
    requested_by: str | None = None
    on_behalf_of: str | None = None
    source: str | None = None
    submitted_by: str | None = None
    granted: str | None = None
    dry_run: bool = False
    send_invitation_message: bool | None = None
    callback_url: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    graph_request_id: str | None = None
    invitation_id: str | None = None
    verified: bool | None = None
    redeem_url: str | None = None
    phase: str | None = None
    invite_started_at: datetime | None = None
    invite_slot: datetime | None = None
    # Set when a delivery holds the request back on purpose (a hold): the sweeper leaves the
    # record alone until then instead of taking it for stalled.
    held_until: datetime | None = None
    deferrals: int = 0
    callback_status: str | None = None
    message_hash: str | None = None
    request_json: str | None = None
    replays: int = 0
    history: tuple[dict[str, Any], ...] = ()
    etag: str | None = field(default=None, compare=False)

    @classmethod
    def for_request(
        cls, request: ResetRequest, request_id: str, status: Status, *, message: str | None = None, **fields: Any
    ) -> StatusRecord:
        """A new record describing ``request`` (audit fields, masked email, the request kept for replay).

        ``message`` is the request's queue message when the caller has built it already.
        """
        now = utcnow()
        return cls(
            request_id=request_id,
            status=status,
            created_at=now,
            updated_at=now,
            user_id=request.user_id,
            masked_email=mask_email(request.new_email or request.email),
            ticket_id=request.ticket_id,
            requested_by=request.requested_by,
            on_behalf_of=request.on_behalf_of,
            source=request.source,
            dry_run=request.dry_run,
            callback_url=request.callback_url,
            send_invitation_message=request.send_invitation_message,
            request_json=stored_request(stored_form(message or canonical_json(request, requestId=request_id))),
            **fields,
        )

    def public(self) -> dict[str, Any]:
        """The outcome fields shared with callers (result message, status API). No redeem URL."""
        out: dict[str, Any] = {}
        for key in PUBLIC_FIELDS:
            value = getattr(self, key)
            out[_camel(key)] = iso_time(value) if isinstance(value, datetime) else value
        out["status"] = str(self.status)
        if self.error_message:
            out["errorMessage"] = redact(self.error_message)  # Graph's messages may name addresses
        return out

    def with_event(self, event: str, **details: Any) -> tuple[dict[str, Any], ...]:
        entry = {"at": iso_time(utcnow()), "attempt": self.attempts, "event": event}
        entry.update({k: _event_text(v) if isinstance(v, str) else v for k, v in details.items() if v is not None})
        return (*self.history, entry)[-HISTORY_LIMIT:]


def _event_text(text: str) -> str:
    """History text as it may rest: redacted, and short enough that 20 events fit one entity."""
    text = redact(text)
    return text if len(text) <= EVENT_TEXT_CHARS else text[:EVENT_TEXT_CHARS] + " (cut)"


EVENT_TEXT_CHARS = 1_000

# The outcome model decides what is public; the status API adds the redeem URL on its own.
PUBLIC_FIELDS = tuple(ResetOutcome.model_fields)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _pascal(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


_DATETIMES = {f.name for f in fields(StatusRecord) if "datetime" in str(f.type)}
# Stored fields and their entity property names, worked out once (this runs for every write).
_STORED = tuple((f.name, _pascal(f.name)) for f in fields(StatusRecord) if f.name not in {"request_id", "etag"})


def stored_form(text: str) -> str:
    """A request's JSON as it may rest in storage: its callback URL's secrets masked.

    Idempotent, so a replayed copy compares equal to the record it came from.
    """
    if '"callbackUrl"' not in text:
        return text
    try:
        data = json.loads(text)
    except ValueError:
        return redact(text)
    if not isinstance(data, dict) or not isinstance(data.get("callbackUrl"), str):
        return text
    data["callbackUrl"] = mask_url_secrets(data["callbackUrl"])
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


# A finished success is never replayed: its copy of the request (addresses included) goes.
_NO_REQUEST_COPY = frozenset({Status.SUCCEEDED, Status.DRY_RUN_PASSED})


def _to_entity(record: StatusRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": record.request_id, "RowKey": ROW_KEY}
    for name, key in _STORED:
        value = getattr(record, name)
        if name == "request_json" and value is not None:
            value = None if record.status in _NO_REQUEST_COPY else stored_form(value)
        elif name == "error_message" and value:
            value = redact(value)
        elif name in _DATETIMES:
            value = iso_time(value)
        elif name == "history":
            value = json.dumps(list(value))
        elif name == "status":
            value = str(value)
        if value is not None:
            entity[key] = value
    return entity


def _from_entity(entity: Any) -> StatusRecord:
    values: dict[str, Any] = {"request_id": entity["PartitionKey"]}
    for f in fields(StatusRecord):
        key = _pascal(f.name)
        if f.name in {"request_id", "etag"} or key not in entity:
            continue
        value = entity[key]
        if f.name in _DATETIMES:
            value = parse_iso_time(value)
        elif f.name == "history":
            value = tuple(json.loads(value or "[]"))
        elif f.name == "status":
            value = Status(value)
        values[f.name] = value
    metadata = getattr(entity, "metadata", {}) or {}
    return StatusRecord(**values, etag=metadata.get("etag"))


@dataclass
class Lease:
    """A delivery's claim on a request; ``etag`` follows each renewal, so release is the owner's alone."""

    request_id: str
    owner: str
    until: datetime
    etag: str | None
    released: bool = False

    def live(self, now: datetime | None = None) -> bool:
        return self.until > (now or utcnow())


@dataclass(frozen=True)
class Claim:
    """``claimed``: this delivery holds ``lease`` now; ``finished``: nothing to do;
    ``busy``: another delivery holds a live claim on it until ``busy_until``."""

    kind: Literal["claimed", "finished", "busy"]
    record: StatusRecord
    lease: Lease | None = None
    busy_until: datetime | None = None


def _lease_from(entity: Any) -> Lease:
    metadata: dict[str, Any] = getattr(entity, "metadata", None) or {}
    until = parse_iso_time(entity.get("Until")) or utcnow()
    return Lease(entity["PartitionKey"], str(entity.get("Owner") or ""), until, metadata.get("etag"))


# Characters a Table key cannot hold (the service answers 400), and its size limit.
_BAD_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


def valid_key(value: str) -> bool:
    return 0 < len(value) <= 512 and not _BAD_KEY.search(value)


def _storage_error(action: str, error: Exception) -> TransientError:
    return TransientError(f"status table unavailable while {action}: {type(error).__name__}", code="StorageUnavailable")


class StatusStore:
    """Reads and writes status records in one Azure Table."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def ensure(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            await self._table.create_table()

    async def get(self, request_id: str) -> StatusRecord | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        if not valid_key(request_id):
            return None  # no record can have it; asking the table would be a 400, not a "no"
        try:
            return _from_entity(await self._table.get_entity(request_id, ROW_KEY))
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise _storage_error("reading a status", error) from error

    async def create(self, record: StatusRecord) -> StatusRecord | None:
        """Insert a new record; None when one with this requestId already exists."""
        from azure.core.exceptions import AzureError, ResourceExistsError

        try:
            meta = await self._table.create_entity(_to_entity(record))
        except ResourceExistsError:
            return None
        except AzureError as error:
            raise _storage_error("creating a status", error) from error
        return replace(record, etag=meta.get("etag"))

    async def save(self, record: StatusRecord, **changes: Any) -> StatusRecord:
        """Apply ``changes`` if nobody changed the record since it was read (ETag), else raise."""
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        updated = replace(record, updated_at=utcnow(), **changes)
        try:
            meta = await self._table.update_entity(
                _to_entity(updated),
                mode=UpdateMode.REPLACE,
                etag=record.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            raise TransientError(
                f"status of {record.request_id} changed under us; will retry", code="StatusConflict"
            ) from None
        except AzureError as error:
            raise _storage_error("saving a status", error) from error
        return replace(updated, etag=meta.get("etag"))

    async def put(self, record: StatusRecord) -> StatusRecord:
        """Write unconditionally (poison handler: the last word on a request)."""
        from azure.core.exceptions import AzureError
        from azure.data.tables import UpdateMode

        record = replace(record, updated_at=utcnow())
        try:
            meta = await self._table.upsert_entity(_to_entity(record), mode=UpdateMode.REPLACE)
        except AzureError as error:
            raise _storage_error("writing a status", error) from error
        return replace(record, etag=meta.get("etag"))

    async def read_lease(self, request_id: str) -> Lease | None:
        """The claim on a request as stored (live or lapsed), or None when nobody holds one."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            entity = await self._table.get_entity(request_id, LEASE_ROW_KEY)
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise _storage_error("reading a claim", error) from error
        return _lease_from(entity)

    async def _claim_state(self, request_id: str) -> tuple[StatusRecord | None, Lease | None]:
        """The status record and the claim, in one read of the request's partition."""
        from azure.core.exceptions import AzureError

        record = lease = None
        try:
            async for entity in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": request_id}):
                if entity.get("RowKey") == ROW_KEY:
                    record = _from_entity(entity)
                elif entity.get("RowKey") == LEASE_ROW_KEY:
                    lease = _lease_from(entity)
        except AzureError as error:
            raise _storage_error("reading a status", error) from error
        return record, lease

    def _lease_entity(self, request_id: str, owner: str, until: datetime) -> dict[str, Any]:
        return {"PartitionKey": request_id, "RowKey": LEASE_ROW_KEY, "Owner": owner, "Until": iso_time(until)}

    async def _take(
        self, template: StatusRecord, current: StatusRecord | None, held: Lease | None, owner: str
    ) -> tuple[StatusRecord, Lease] | None:
        """Take the claim, then bump the record under its ETag; None on a race (the caller reads again).

        The claim entity is the lock: created, or replaced under the ETag of the lapsed (or our
        own) claim that was read. The bump (attempts + 1 under the record's ETag) is the fence: a
        delivery whose claim was taken over fails on its next save of the record. They are two
        single-entity writes, not one batch: through the SDK a two-operation transaction costs
        about twice the CPU of two plain writes (its multipart body), and nothing needs them
        atomic. A delivery that dies between them leaves a claim that lapses like any other; a
        bump that loses a race gives the claim back.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            AzureError,
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        lost = (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError)
        guarded: dict[str, Any] = {"mode": UpdateMode.REPLACE, "match_condition": MatchConditions.IfNotModified}
        now = utcnow()
        until = now + CLAIM
        lease_entity = self._lease_entity(template.request_id, owner, until)
        try:
            if held is None:
                lease_meta = await self._table.create_entity(lease_entity)
            else:
                lease_meta = await self._table.update_entity(lease_entity, etag=held.etag, **guarded)
        except lost:
            return None  # another delivery took it first
        except AzureError as error:
            raise _storage_error("claiming a request", error) from error
        lease = Lease(template.request_id, owner, until, lease_meta.get("etag"))

        if current is None:
            first = replace(template, status=Status.PROCESSING, attempts=1, created_at=now, updated_at=now)
            record = replace(first, held_until=None, history=first.with_event("claimed"))
        else:
            bumped = replace(current, attempts=current.attempts + 1)
            record = replace(
                bumped,
                status=Status.PROCESSING,
                updated_at=now,
                held_until=None,
                history=bumped.with_event("claimed"),
                message_hash=current.message_hash or template.message_hash,
            )
        try:
            if current is None:
                status_meta = await self._table.create_entity(_to_entity(record))
            else:
                status_meta = await self._table.update_entity(_to_entity(record), etag=current.etag, **guarded)
        except lost:
            await self._give_back(lease)  # the record changed since it was read: read both again
            return None
        except AzureError as error:
            await self._give_back(lease)
            raise _storage_error("claiming a request", error) from error
        return replace(record, etag=status_meta.get("etag")), lease

    async def _give_back(self, lease: Lease) -> None:
        """Release a claim that could not be completed; if storage is down it lapses by itself."""
        with contextlib.suppress(ResetError):
            await self.release(lease)

    async def renew(self, lease: Lease) -> None:
        """Extend the claim by ``CLAIM`` from now; ``ClaimLostError`` when it is no longer ours."""
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        until = utcnow() + CLAIM
        try:
            if lease.released:
                return
            meta = await self._table.update_entity(
                self._lease_entity(lease.request_id, lease.owner, until),
                mode=UpdateMode.REPLACE,
                etag=lease.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise ClaimLostError(f"the claim on {lease.request_id} lapsed and another delivery took it over") from None
        except AzureError as error:
            raise _storage_error("renewing a claim", error) from error
        lease.until, lease.etag = until, meta.get("etag")

    async def release(self, lease: Lease) -> bool:
        """Give the claim back so the next delivery can take it at once.

        Only the owner can: the delete is guarded by the ETag of the owner's last renewal. False
        when the claim is someone else's by now (it lapsed and was taken over), which is left alone.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError

        if lease.released:
            return True
        try:
            await self._table.delete_entity(
                lease.request_id, LEASE_ROW_KEY, etag=lease.etag, match_condition=MatchConditions.IfNotModified
            )
            lease.released = True
        except ResourceNotFoundError:
            return True
        except ResourceModifiedError:
            return False
        except AzureError as error:
            raise _storage_error("releasing a claim", error) from error
        return True

    async def claim(self, template: StatusRecord, *, owner: str) -> Claim:
        """Take the request for this delivery, or say why not (finished / busy elsewhere)."""
        for _ in range(5):
            current, held = await self._claim_state(template.request_id)
            if current is not None and current.status.terminal:
                return Claim("finished", current)
            if held is not None and held.owner != owner and held.live():
                return Claim("busy", current or template, busy_until=held.until)
            taken = await self._take(template, current, held, owner)
            if taken is not None:
                return Claim("claimed", taken[0], taken[1])
        raise TransientError("the status record kept changing while claiming it", code="StatusConflict")

    async def note(
        self, record: StatusRecord, event: str, *, changes: dict[str, Any] | None = None, **details: Any
    ) -> StatusRecord:
        """Add an event to the record's history (and apply ``changes``), ETag-guarded."""
        return await self.save(record, history=record.with_event(event, **details), **(changes or {}))

    async def delete(self, request_id: str) -> None:
        """Best effort: remove a record whose request never made it onto the queue."""
        from azure.core.exceptions import AzureError

        try:
            await self._table.delete_entity(request_id, ROW_KEY)
        except AzureError as error:
            log_failure = _storage_error("deleting a status", error)
            raise log_failure from error

    async def query(self, odata_filter: str, parameters: dict[str, Any], limit: int) -> list[StatusRecord]:
        """Records matching a table filter, at most ``limit`` of them."""
        from azure.core.exceptions import AzureError

        found: list[StatusRecord] = []
        try:
            async for entity in self._table.query_entities(
                odata_filter, parameters=parameters, results_per_page=min(limit, 1000)
            ):
                found.append(_from_entity(entity))
                if len(found) >= limit:
                    break
        except AzureError as error:
            raise _storage_error("querying statuses", error) from error
        return found

    async def find_by_message_hash(self, message_hash: str) -> StatusRecord | None:
        """The record of a message known only by its body (poison copies have new message ids)."""
        from azure.core.exceptions import AzureError

        try:
            async for entity in self._table.query_entities(
                "MessageHash eq @h", parameters={"h": message_hash}, results_per_page=1
            ):
                return _from_entity(entity)
        except AzureError as error:
            raise _storage_error("searching statuses", error) from error
        return None

    async def scan(self, odata_filter: str, parameters: dict[str, Any]) -> AsyncIterator[StatusRecord]:
        """Every record matching a table filter, page by page (reports of any size, flat memory)."""
        from azure.core.exceptions import AzureError

        try:
            async for entity in self._table.query_entities(odata_filter, parameters=parameters, results_per_page=1000):
                yield _from_entity(entity)
        except AzureError as error:
            raise _storage_error("querying statuses", error) from error

    async def hand_over_redeem_url(self, record: StatusRecord, *, to: str) -> str | None:
        """The record's redeem URL, erased in the same conditional write: it is handed over once.

        None when there is none, or when another reader took it first (the ETag moved).
        """
        if not record.redeem_url:
            return None
        try:
            await self.save(record, redeem_url=None, history=record.with_event("redeemUrlHandedOver", to=to))
        except TransientError as error:
            if error.code == "StatusConflict":
                return None
            raise
        return record.redeem_url

    async def erase_redeem_url(self, record: StatusRecord, reason: str) -> None:
        """Forget a redeem URL that must not be shown (no longer pending, expired); a race is harmless."""
        try:
            await self.save(record, redeem_url=None, history=record.with_event("redeemUrlErased", reason=reason))
        except TransientError as error:
            if error.code != "StatusConflict":
                raise

    async def purge(self, *, finished_before: datetime, links_before: datetime) -> tuple[int, int]:
        """Retention: delete records finished before ``finished_before``; erase redeem URLs older
        than ``links_before``. Returns (records deleted, links erased). Each write is conditional
        on the ETag read, so a record replayed meanwhile is left alone.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError

        deleted = erased = 0
        old = "RowKey eq @row and FinishedAt lt @before"
        async for record in self.scan(old, {"row": ROW_KEY, "before": iso_time(finished_before)}):
            try:
                await self._table.delete_entity(
                    record.request_id, ROW_KEY, etag=record.etag, match_condition=MatchConditions.IfNotModified
                )
                deleted += 1
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
            except AzureError as error:
                raise _storage_error("purging statuses", error) from error
        links = "RowKey eq @row and FinishedAt lt @before and RedeemUrl gt @empty"
        async for record in self.scan(links, {"row": ROW_KEY, "before": iso_time(links_before), "empty": ""}):
            await self.erase_redeem_url(record, "expired")
            erased += 1
        return deleted, erased

    # Other entities that share the table (bulk file progress) are plain property dicts,
    # stored under RowKeys other than "status" so no status query ever returns them.

    async def read_entity(self, partition_key: str, row_key: str) -> dict[str, Any] | None:
        """One non-status entity's properties, or None when it does not exist."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        if row_key in (ROW_KEY, LEASE_ROW_KEY):
            raise ValueError("status records are read with get(), claims with read_lease()")
        try:
            return dict(await self._table.get_entity(partition_key, row_key))
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise _storage_error(f"reading {partition_key}", error) from error

    async def write_entity(self, entity: dict[str, Any]) -> None:
        """Create or replace one non-status entity (it carries its PartitionKey and RowKey)."""
        from azure.core.exceptions import AzureError
        from azure.data.tables import UpdateMode

        if entity.get("RowKey") in (ROW_KEY, LEASE_ROW_KEY):
            raise ValueError("status records are written with create(), save() or put()")
        try:
            await self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        except AzureError as error:
            raise _storage_error(f"writing {entity.get('PartitionKey')}", error) from error

    async def aclose(self) -> None:
        await self._table.close()


async def derive_request_id(store: StatusStore, request: ResetRequest, *, scope: str, at: datetime) -> str:
    """The requestId of a request that came without one (``contract.derived_request_ids``).

    The previous window's id wins while a record under it is younger than the window, so a
    retry is the same request however the window boundary falls between the two.
    """
    current, previous = derived_request_ids(request, scope=scope, at=at)
    earlier = await store.get(previous)
    if earlier is not None and earlier.created_at is not None and earlier.created_at >= at - IDEMPOTENCY_WINDOW:
        return previous
    return current
