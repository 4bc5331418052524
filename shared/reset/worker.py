"""What the queue triggers call: one delivery of a request, one poison message.

Decisions made here and nowhere else: a permanent failure is written to the poison queue
at once (with its error block) and the delivery ends normally; a transient one is retried in
process, then handed back to the host (raise) until the last delivery, where it is poisoned
with its history; anything unexpected is re-raised for the host to retry and finally poison.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from shared.platform import telemetry
from shared.platform.errors import HoldError, InvalidRequestError, ResetError
from shared.platform.logs import app_logger, bind, bind_request, mask_email, mask_url_secrets, redact, redacted
from shared.reset import capabilities, policy
from shared.reset.breaker import hold_delivery
from shared.reset.callbacks import callback_allowed, notify
from shared.reset.contract import (
    load_json_object,
    parse_request,
    request_id_hint,
    stored_request,
    traceparent_hint,
)
from shared.reset.runtime import Runtime, get_runtime
from shared.reset.service import ResetService
from shared.reset.status import Status, StatusRecord, stored_form, utcnow

log = app_logger()


message_hash = capabilities.message_hash


# A queue message holds at most 64 KB: the envelope keeps the request only when it leaves room.
ENVELOPE_REQUEST_CHARS = 32_000
ENVELOPE_MESSAGE_CHARS = 4_000


def _envelope(
    body: bytes, request_id: str, error: ResetError, attempts: int, history: tuple[dict[str, Any], ...]
) -> dict[str, Any]:
    """A poison message: the original request plus why it failed, for operators and replay.

    What it carries rests in storage: the callback's secrets are masked, Graph's message redacted,
    and a request too large to fit is summarised (its size and hash) rather than kept.
    """
    try:
        original: Any = load_json_object(body)
        if isinstance(original.get("callbackUrl"), str):
            original["callbackUrl"] = mask_url_secrets(original["callbackUrl"])
    except InvalidRequestError:
        original = redact(body.decode("utf-8", errors="replace"))
    if len(json.dumps(original)) > ENVELOPE_REQUEST_CHARS:
        original = {"notKept": f"{len(body)} bytes, sha256 {message_hash(body)}"}
    message = redact(error.message)
    if len(message) > ENVELOPE_MESSAGE_CHARS:
        message = message[:ENVELOPE_MESSAGE_CHARS] + " (cut)"
    return {
        "requestId": request_id,
        "request": original,
        "error": {**error.to_dict(), "message": message, "attempts": attempts},
        "history": list(history),
        "poisonedAt": utcnow().isoformat(),
    }


async def handle_request_message(
    body: bytes, *, message_id: str, dequeue_count: int, inserted_at: datetime | None = None
) -> None:
    """Process one delivery of a reset request from the request queue.

    Every record written meanwhile carries the delivery's context, and the delivery is one span
    of the request's trace (its traceparent rides in the message); whatever is raised to the
    host (which logs it as it is) has its message redacted first.
    """
    with (
        bind_request(messageId=message_id, dequeueCount=dequeue_count),
        telemetry.span(
            "process reset", kind="consumer", traceparent=traceparent_hint(body), dequeueCount=dequeue_count
        ),
    ):
        if inserted_at is not None:
            telemetry.record("guest_reset.queue.age", max(0.0, (utcnow() - inserted_at).total_seconds()))
        try:
            await _deliver(body, message_id=message_id, dequeue_count=dequeue_count)
        except ResetError as error:
            raise redacted(error) from None
        except Exception as error:
            _outcome("Retried", type(error).__name__)
            log.exception("the delivery crashed; the host will retry it")
            raise redacted(error) from None


def _outcome(outcome: str, code: str | None = None) -> None:
    """Count a delivery's outcome and put it on the delivery's span."""
    telemetry.count("guest_reset.resets", outcome=outcome, code=code)
    telemetry.annotate(outcome=outcome, code=code)


async def _deliver(body: bytes, *, message_id: str, dequeue_count: int) -> None:
    runtime = await get_runtime()
    body_hash = message_hash(body)
    try:
        request = parse_request(body)
        if request.callback_url and not callback_allowed(request.callback_url, runtime.settings):
            raise InvalidRequestError(
                "invalid reset request: callbackUrl: host is not on the callback allowlist (CALLBACK_ALLOWED_HOSTS)",
                problems=[{"field": "callbackUrl", "message": "host is not on the callback allowlist"}],
            )
    except InvalidRequestError as error:
        request_id = request_id_hint(body) or message_id
        bind(requestId=request_id, code=error.code)
        telemetry.annotate(requestId=request_id)
        log.warning("invalid request sent to poison: %s", error.message)
        await runtime.publisher.send_poison(_envelope(body, request_id, error, 1, ()))
        _outcome("Poisoned", error.code)
        return

    request_id = request.request_id or message_id
    bind(requestId=request_id, ticketId=request.ticket_id)
    telemetry.annotate(requestId=request_id, ticketId=request.ticket_id)
    template = StatusRecord.for_request(
        request, request_id, Status.PROCESSING, message_hash=body_hash, submitted_by=capabilities.QUEUE_PRODUCER
    )
    claim = await runtime.status.claim(template, owner=str(uuid.uuid4()))
    bind(attempt=claim.record.attempts)
    if claim.kind == "finished":
        log.info("request already %s; duplicate delivery ignored", claim.record.status)
        if dequeue_count > 1:
            # A redelivery of the same message: the result may not have gone out last time.
            await runtime.publisher.send_result(claim.record.public())
        return
    if claim.kind == "busy":
        log.info("request is being processed by another delivery; this one is dropped")
        return

    record = claim.record
    try:
        # Least power on the queue too: the grant intake recorded for this very message, or the queue's.
        granted, channel = capabilities.grant_for(record, body, runtime.settings)
        capabilities.require(request, granted, runtime.settings, channel=channel)
        policy.check_request(request, runtime.settings)
        final = await ResetService(runtime.settings, runtime.graph, runtime.status, runtime.gate).run(request, record)
    except HoldError as error:
        await hold_delivery(runtime, request, request_id, error)
        return
    except ResetError as error:
        await _fail(runtime, body, record, error, dequeue_count)
        return
    except Exception as error:
        await _release_quietly(runtime, record, "crashed", error=type(error).__name__)
        raise
    await runtime.publisher.send_result(final.public())
    _outcome(str(final.status))
    await notify(final, runtime.settings)


async def _fail(runtime: Runtime, body: bytes, record: StatusRecord, error: ResetError, dequeue_count: int) -> None:
    bind(code=error.code)
    last_delivery = dequeue_count >= runtime.settings.max_dequeue_count
    if error.permanent or last_delivery:
        latest = await runtime.status.get(record.request_id) or record
        history = latest.with_event("poisoned", code=error.code, message=error.message)
        await runtime.publisher.send_poison(_envelope(body, record.request_id, error, latest.attempts, history))
        await _release_quietly(runtime, latest, "poisoned", fresh=True, code=error.code, message=error.message)
        log.warning("request sent to poison: %s", error.message)
        _outcome("Poisoned", error.code)
        return
    await _release_quietly(runtime, record, "transientFailure", code=error.code, message=error.message)
    log.warning("transient failure, the host will redeliver: %s", error.message)
    _outcome("Retried", error.code)
    raise error


async def _release_quietly(
    runtime: Runtime, record: StatusRecord, event: str, *, fresh: bool = False, **details: Any
) -> None:
    """Hand the lease back; if storage is down the lease simply expires.

    ``fresh`` says ``record`` was just read; otherwise it is read again (the service saved it since).
    """
    try:
        latest = record if fresh else (await runtime.status.get(record.request_id) or record)
        await runtime.status.release(latest, event, **details)
    except ResetError as error:
        log.warning("could not release the lease: %s", error.message)


async def handle_poison_message(body: bytes, *, message_id: str) -> None:
    """Record Failed and publish the result for a poisoned request. Never raises."""
    try:
        with (
            bind_request(messageId=message_id),
            telemetry.span("record poisoned reset", kind="consumer", traceparent=traceparent_hint(body)),
        ):
            await _record_poisoned(body, message_id)
    except Exception:
        # A poison queue has no poison queue of its own: raising would only make the host
        # redeliver this message forever. Log it loudly and let it go.
        log.exception("poison handler could not record message %s", message_id)


def _poison_details(body: bytes) -> tuple[str | None, dict[str, Any], dict[str, Any] | None]:
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict) and "request" in data:
        request = data["request"] if isinstance(data["request"], dict) else None
        rid = data.get("requestId")
        return (rid if isinstance(rid, str) else None), data["error"], request
    # A raw request the host moved after its last failed delivery (or one it could not decode).
    return request_id_hint(body), {}, data if isinstance(data, dict) else None


async def _record_poisoned(body: bytes, message_id: str) -> None:
    runtime = await get_runtime()
    request_id, error, request = _poison_details(body)
    existing = None
    if request_id:
        existing = await runtime.status.get(request_id)
    else:
        existing = await runtime.status.find_by_message_hash(message_hash(body))
        request_id = existing.request_id if existing else f"poison-{message_id}"
    bind(requestId=request_id, ticketId=existing.ticket_id if existing else None)
    if existing is not None and existing.status in {Status.SUCCEEDED, Status.DRY_RUN_PASSED}:
        log.info("poisoned copy of a request that already %s; ignored", existing.status)
        return

    if not error:
        history = existing.history if existing else ()
        last: dict[str, Any] = next((e for e in reversed(history) if e.get("code") or e.get("error")), {})
        error = {
            "code": "DeliveryFailed",
            "message": "the worker failed on every delivery and the host moved the message to "
            f"the poison queue (last problem: {last.get('code') or last.get('error') or 'unknown'})",
            "attempts": existing.attempts if existing else None,
        }
    base = existing or StatusRecord(request_id=request_id, status=Status.FAILED, created_at=utcnow())
    if request and existing is None:
        base = StatusRecord(
            request_id=request_id,
            status=Status.FAILED,
            created_at=utcnow(),
            ticket_id=_text(request.get("ticketId")),
            requested_by=_text(request.get("requestedBy")),
            on_behalf_of=_text(request.get("onBehalfOf")),
            source=_text(request.get("source")),
            submitted_by=capabilities.QUEUE_PRODUCER,
            user_id=_text(request.get("userId")),
            masked_email=mask_email(_text(request.get("newEmail")) or _text(request.get("email"))),
            request_json=stored_request(stored_form(json.dumps({**request, "requestId": request_id}))),
        )
    final = await runtime.status.put(
        StatusRecord(
            **{
                **{k: getattr(base, k) for k in base.__dataclass_fields__ if k not in {"etag"}},
                "status": Status.FAILED,
                "finished_at": utcnow(),
                "lease_owner": None,
                "lease_until": None,
                "attempts": max(base.attempts, int(error.get("attempts") or 0)),
                "error_code": _text(error.get("code")) or "Failed",
                "error_message": redact(_text(error.get("message")) or ""),
                "graph_request_id": _text(error.get("graphRequestId")) or base.graph_request_id,
                "history": base.with_event("failed", code=_text(error.get("code"))),
            }
        )
    )
    bind(code=final.error_code)
    telemetry.count("guest_reset.resets", outcome="Failed", code=final.error_code)
    log.warning("request failed: %s", final.error_message)
    await runtime.publisher.send_result(final.public())
    await notify(final, runtime.settings)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
