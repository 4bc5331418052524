"""Intake: validate every request of a submission, record it Accepted, enqueue it. No Graph here.

All or nothing, from the caller's view: one invalid item refuses the whole submission and
nothing is enqueued; when storage fails part-way, the answer is a 503 and a retry of the same
submission enqueues exactly the items still missing and answers with every id. That works
because every item's requestId is known before anything is written: its own ``requestId``, the
``Idempotency-Key`` header (``<key>.<index>`` in a batch), or, without either, one derived from
the caller, the item's content and the hour (``contract.derived_request_ids``), so a client's
retry of the same POST (Logic Apps retries on timeouts and 5xx) is the same request.
Each record belongs to its submitter and carries the grant the worker will honour for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from shared.api.principal import Access
from shared.platform import telemetry
from shared.platform.errors import IntakeError, InvalidRequestError, ResetError, TransientError
from shared.platform.logs import app_logger
from shared.reset import capabilities
from shared.reset.callbacks import callback_allowed
from shared.reset.contract import (
    MAX_MESSAGE_BYTES,
    ResetRequest,
    canonical_json,
    describe_validation_error,
    parse_json,
    repeat_key,
    user_column,
)
from shared.reset.policy import request_refusals
from shared.reset.runtime import Runtime
from shared.reset.status import Status, StatusRecord, derive_request_id, utcnow

log = app_logger()

MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH = 1000
CONCURRENCY = 32
# An Accepted record this old whose message may have been lost is enqueued again on resubmission
# (the worker's claim makes a second message harmless).
STALE_ACCEPTED = timedelta(minutes=2)
# The header becomes the requestId (``<key>.<index>`` in a batch of up to 1,000): a Table key.
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,119}$")


@dataclass(frozen=True)
class Item:
    """One validated request of a submission; ``request_id`` None until derived at acceptance."""

    request: ResetRequest
    request_id: str | None
    scope: str


@dataclass(frozen=True)
class Receipt:
    request_id: str
    status: str
    duplicate: bool


def _items(body: bytes) -> tuple[list[Any], bool]:
    if len(body) > MAX_BODY_BYTES:
        raise IntakeError(413, "Payload too large", f"the body is {len(body)} bytes; the limit is 1 MB")
    try:
        data = parse_json(body.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise IntakeError(400, "Invalid JSON", "the body is not valid UTF-8 JSON") from None
    except InvalidRequestError as error:
        raise IntakeError(400, "Invalid JSON", f"the body is not acceptable JSON: {error.message}") from None
    if isinstance(data, dict) and "requests" in data:
        if set(data) != {"requests"}:
            extra = ", ".join(sorted(set(data) - {"requests"}))
            raise IntakeError(400, "Invalid request", f"a batch holds only 'requests'; remove {extra}")
        items = data["requests"]
        if not isinstance(items, list) or not items:
            raise IntakeError(400, "Invalid request", "'requests' must be a non-empty list")
        if len(items) > MAX_BATCH:
            raise IntakeError(413, "Batch too large", f"{len(items)} requests; at most {MAX_BATCH} per batch")
        return items, True
    if not isinstance(data, dict):
        raise IntakeError(400, "Invalid request", "the body must be a JSON object")
    return [data], False


def _check_key(key: str | None) -> None:
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        message = "must be 1-120 letters, digits or . _ : @ - (it becomes the requestId, a storage key)"
        raise IntakeError(
            400,
            "Invalid Idempotency-Key",
            f"the Idempotency-Key header {message}",
            [{"field": "Idempotency-Key", "message": message}],
        )


def validate_submission(body: bytes, *, runtime: Runtime, idempotency_key: str | None, access: Access) -> list[Item]:
    """Every item validated (all problems listed by index and field), with its requestId if known.

    A capability the caller lacks refuses the submission with 403 naming it; other problems 400.
    """
    _check_key(idempotency_key)
    # Derived ids are scoped by the submitter's immutable owner key (two callers never share one).
    scope = f"http:{access.owner}"
    items, batch = _items(body)
    problems: list[dict[str, Any]] = []
    lacking: list[dict[str, Any]] = []
    needed: set[str] = set()
    accepted: list[Item] = []
    seen: set[str] = set()
    users: dict[str, int] = {}
    for index, item in enumerate(items):
        prefix = f"requests[{index}]." if batch else ""
        where: dict[str, Any] = {"index": index} if batch else {}
        if not isinstance(item, dict):
            problems.append({**where, "field": prefix.rstrip(".") or "(body)", "message": "must be a JSON object"})
            continue
        if len(json.dumps(item)) > MAX_MESSAGE_BYTES:
            problems.append({**where, "field": prefix.rstrip(".") or "(body)", "message": "larger than 64 KB"})
            continue
        try:
            request = ResetRequest.model_validate(item, by_alias=True, by_name=False)
        except ValidationError as error:
            for p in describe_validation_error(error):
                problems.append({**where, "field": prefix + p["field"], "message": p["message"]})
            continue
        if request.callback_url and not callback_allowed(request.callback_url, runtime.settings):
            problems.append(
                {
                    **where,
                    "field": prefix + "callbackUrl",
                    "message": "host is not on the callback allowlist (CALLBACK_ALLOWED_HOSTS)",
                }
            )
        for refusal in request_refusals(request, runtime.settings):
            problems.append({**where, "field": prefix + refusal.field, "message": refusal.message})
        for need in capabilities.missing(request, access.capabilities, runtime.settings):
            field = prefix + need.field if need.field != "(request)" else prefix.rstrip(".") or "(body)"
            lacking.append({**where, "field": field, "message": capabilities.describe(need, "this caller")})
            needed.add(need.capability.value)
        request_id = request.request_id or (
            (f"{idempotency_key}.{index}" if batch else idempotency_key) if idempotency_key else None
        )
        if request_id is not None and request_id in seen:
            problems.append({**where, "field": prefix + "requestId", "message": "appears twice in this batch"})
        if request_id is not None:
            seen.add(request_id)
        # One reset per guest per batch, as in a bulk file (shared.bulk.repeats says why).
        first = users.setdefault(repeat_key(request), index)
        if first != index:
            message = f"the same user as requests[{first}]: a batch may reset each guest once"
            problems.append({**where, "field": prefix + user_column(request)[0], "message": message})
        if access.caller is not None:
            # The audit trail names who really asked; what the caller wrote is kept beside it.
            request = request.model_copy(
                update={
                    "requested_by": access.caller.audit_id,
                    "on_behalf_of": request.on_behalf_of or request.requested_by,
                }
            )
        accepted.append(Item(request, request_id, scope))
    if lacking:
        raise IntakeError(
            403, "Capability missing", f"this caller lacks {', '.join(sorted(needed))}; nothing was enqueued", lacking
        )
    if problems:
        count = len({p.get("index", 0) for p in problems})
        raise IntakeError(
            400, "Invalid reset request", f"{count} request(s) are invalid; nothing was enqueued", problems
        )
    return accepted


async def _accept_one(runtime: Runtime, request: ResetRequest, request_id: str, access: Access) -> Receipt:
    # The message carries this trace, so the worker's span joins it (one trace per request).
    text = canonical_json(request, requestId=request_id, traceparent=telemetry.current_traceparent())
    record = StatusRecord.for_request(
        request,
        request_id,
        Status.ACCEPTED,
        message=text,
        submitted_by=access.owner,
        granted=capabilities.encode(access.capabilities),
        message_hash=capabilities.message_hash(text.encode()),
    )
    created = await runtime.status.create(replace(record, history=record.with_event("accepted")))
    if created is None:
        existing = await runtime.status.get(request_id)
        if existing is None:  # deleted in between: treat as new next time
            raise InvalidRequestError(f"request {request_id} is being replaced; submit it again")
        if existing.submitted_by != access.owner:
            # Someone else's request: say nothing about it beyond "taken".
            raise IntakeError(409, "Conflict", f"requestId {request_id!r} is already taken; choose another requestId")
        stale = existing.created_at is None or existing.created_at < utcnow() - STALE_ACCEPTED
        if existing.status is Status.ACCEPTED and stale:
            await runtime.publisher.send_request(text)
        return Receipt(request_id, str(existing.status), duplicate=True)
    try:
        await runtime.publisher.send_request(text)
    except ResetError:
        # Without its message the record would wait forever: remove it so a retry starts clean
        # (if storage is down for that too, the stale-Accepted rule re-enqueues on resubmission).
        with contextlib.suppress(ResetError):
            await runtime.status.delete(request_id)
        raise
    return Receipt(request_id, str(Status.ACCEPTED), duplicate=False)


async def accept(runtime: Runtime, items: list[Item], access: Access, *, now: datetime | None = None) -> list[Receipt]:
    """Record and enqueue validated requests concurrently; order of the receipts follows the input.

    Every item is attempted even when some fail; if any failed, the whole answer is a failure
    (503 for storage trouble) that a retry of the same submission repairs.
    """
    gate = asyncio.Semaphore(CONCURRENCY)
    at = now or utcnow()

    async def one(item: Item) -> Receipt:
        async with gate:
            request_id = item.request_id or await derive_request_id(
                runtime.status, item.request, scope=item.scope, at=at
            )
            return await _accept_one(runtime, item.request, request_id, access)

    with telemetry.span("accept resets", requests=len(items), requestId=items[0].request_id or "(derived)"):
        outcomes = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
    receipts = [o for o in outcomes if isinstance(o, Receipt)]
    failures = [o for o in outcomes if not isinstance(o, Receipt)]
    if failures:
        first = next((f for f in failures if not isinstance(f, ResetError)), None)
        if first is not None:
            raise first
        permanent = next((f for f in failures if isinstance(f, ResetError) and f.permanent), None)
        if permanent is not None:
            raise permanent
        raise TransientError(
            f"{len(failures)} of {len(items)} request(s) could not be recorded or enqueued "
            f"({failures[0]}); retry the same submission: requests already accepted are not enqueued again",
            code="StorageUnavailable",
        )
    log.info("accepted %d request(s), the first %s", len(receipts), receipts[0].request_id)
    return receipts
