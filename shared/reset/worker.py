"""What the queue triggers call: one delivery of a request, one poison message.

Decisions made here and nowhere else:
- A delivery works on a request only while it holds the request's claim (``status.py``): a
  heartbeat renews it while the worker lives, every way out of the delivery releases it (only
  its owner can), and a worker that dies lets it lapse within ``CLAIM``.
- No delivery deletes the message of a request that has not finished. One that meets another
  delivery's live claim, a wait that does not fit its deadline, or the open invitation breaker
  (``HoldError``, raised anywhere below) *holds* the request: a copy goes back on the queue,
  invisible until the claim can have lapsed or the wait is over, and this delivery completes.
  Holding spends none of the host's deliveries (``maxDequeueCount``).
- A permanent failure is written to the poison queue at once (with its error block) and the
  delivery ends normally; a transient one is handed back to the host (raise) until the last
  delivery, where it is poisoned with its history; anything unexpected is re-raised for the host
  to retry and finally poison.
- The outcome is stored before anything is announced: the result message and the callback
  (its own queue, ``callbacks.py``) follow it, off the reset's critical path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from shared.platform import telemetry
from shared.platform.errors import HoldError, InvalidRequestError, ResetError, TransientError
from shared.platform.logs import app_logger, bind, bind_request, mask_email, mask_url_secrets, redact, redacted
from shared.reset import capabilities, policy
from shared.reset.callbacks import callback_allowed, queue_callback
from shared.reset.contract import (
    ResetRequest,
    canonical_json,
    load_json_object,
    parse_json,
    parse_request,
    request_id_hint,
    stored_request,
    traceparent_hint,
)
from shared.reset.deadline import delivery_deadline
from shared.reset.queues import MAX_HOLD_SECONDS
from shared.reset.runtime import Runtime, get_runtime
from shared.reset.service import ResetService
from shared.reset.status import (
    HEARTBEAT_SECONDS,
    Lease,
    Status,
    StatusRecord,
    StatusStore,
    derive_request_id,
    stored_form,
    utcnow,
)

log = app_logger()

# A request may be held this many times for its own sake (Graph's waits); past that, a wait counts
# as a failed delivery like any other, so a request cannot circle the queue for ever.
MAX_DEFERRALS = 20
# A held copy comes back this long after the other delivery's claim can have lapsed.
CLAIM_MARGIN_SECONDS = 2.0


message_hash = capabilities.message_hash


# A queue message holds at most 64 KB: the envelope keeps the request only when it leaves room.
ENVELOPE_REQUEST_CHARS = 32_000
ENVELOPE_MESSAGE_CHARS = 4_000


def claim_owner() -> str:
    """Who holds a claim: the instance and process (for operators reading a claim), and the delivery."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


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

    ``inserted_at`` is when the message was first enqueued (the host passes it); a request
    without a requestId gets one derived from its content and that time. Every record written
    meanwhile carries the delivery's context, and the delivery is one span of the request's trace
    (its traceparent rides in the message); whatever is raised to the host (which logs it as it
    is) has its message redacted first.
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
            await _deliver(body, message_id=message_id, dequeue_count=dequeue_count, inserted_at=inserted_at)
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


async def defer_request(runtime: Runtime, request: ResetRequest, request_id: str, *, delay: float) -> None:
    """Hold a request for ``delay`` seconds without spending one of the host's deliveries.

    A copy of the request (with its requestId, so the copy is the same request) goes back on the
    request queue, invisible for ``delay``; the caller then completes its delivery normally, which
    makes the host delete the message it holds. If the copy cannot be sent this raises, and the
    host keeps the original for its next delivery: nothing is lost either way. Code inside a
    delivery (the invitation breaker, pacing, deadlines) raises ``HoldError`` instead, and the
    worker calls this and notes the hold on the record.
    """
    delay = min(max(delay, 1.0), MAX_HOLD_SECONDS)
    await runtime.publisher.send_request(canonical_json(request, requestId=request_id), delay=delay)


async def _deliver(body: bytes, *, message_id: str, dequeue_count: int, inserted_at: datetime | None) -> None:
    runtime = await get_runtime()
    try:
        request = parse_request(body)
    except InvalidRequestError as error:
        await _refuse(runtime, body, request_id_hint(body) or message_id, error)
        return

    # A request that parses is filed under its own id (or the one derived from its content), even
    # when a rule below refuses it: a producer's resend then finds the same outcome.
    request_id = request.request_id or await derive_request_id(
        runtime.status, request, scope="queue", at=inserted_at or utcnow()
    )
    if request.callback_url and not callback_allowed(request.callback_url, runtime.settings):
        refused = InvalidRequestError(
            "invalid reset request: callbackUrl: host is not on the callback allowlist (CALLBACK_ALLOWED_HOSTS)",
            problems=[{"field": "callbackUrl", "message": "host is not on the callback allowlist"}],
        )
        await _refuse(runtime, body, request_id, refused)
        return
    bind(requestId=request_id, ticketId=request.ticket_id)
    telemetry.annotate(requestId=request_id, ticketId=request.ticket_id)
    template = StatusRecord.for_request(
        request,
        request_id,
        Status.PROCESSING,
        message_hash=message_hash(body),
        submitted_by=capabilities.QUEUE_PRODUCER,
    )
    claim = await runtime.status.claim(template, owner=claim_owner())
    if claim.kind == "finished":
        log.info("request already %s; duplicate delivery ignored", claim.record.status)
        if dequeue_count > 1:
            # A redelivery of the same message: the result may not have gone out last time.
            await _announce(runtime, claim.record)
        return
    if claim.kind == "busy":
        assert claim.busy_until is not None
        delay = (claim.busy_until - utcnow()).total_seconds() + CLAIM_MARGIN_SECONDS
        await defer_request(runtime, request, request_id, delay=delay)
        log.info("another delivery holds the request's claim; this one is held for %.0fs", delay)
        _outcome("Held", "Busy")
        return
    assert claim.lease is not None
    bind(attempt=claim.record.attempts)
    final = await _work(runtime, body, request, claim.record, claim.lease, dequeue_count)
    if final is not None:
        await _announce(runtime, final)
        _outcome(str(final.status))


async def _refuse(runtime: Runtime, body: bytes, request_id: str, error: InvalidRequestError) -> None:
    """A request that can never run goes to poison at once, where its Failed record is written."""
    bind(requestId=request_id, code=error.code)
    telemetry.annotate(requestId=request_id)
    log.warning("invalid request sent to poison: %s", error.message)
    await runtime.publisher.send_poison(_envelope(body, request_id, error, 1, ()))
    _outcome("Poisoned", error.code)


async def _work(
    runtime: Runtime, body: bytes, request: ResetRequest, record: StatusRecord, lease: Lease, dequeue_count: int
) -> StatusRecord | None:
    """Run the reset while holding ``lease``; the stored outcome, or None when there is nothing to announce."""
    heartbeat = asyncio.create_task(_heartbeat(runtime.status, lease))
    try:
        with delivery_deadline(runtime.settings.delivery_deadline_seconds):
            try:
                # Least power on the queue too: the grant intake recorded for this message, or the queue's.
                granted, channel = capabilities.grant_for(record, body, runtime.settings)
                capabilities.require(request, granted, runtime.settings, channel=channel)
                policy.check_request(request, runtime.settings)
                return await ResetService(runtime.settings, runtime.graph, runtime.status, runtime.gate).run(
                    request, record
                )
            except HoldError as held:
                await _hold(runtime, body, request, record, held, dequeue_count)
            except ResetError as error:
                await _fail(runtime, body, record, error, dequeue_count)
            except asyncio.CancelledError:
                await asyncio.shield(_note_quietly(runtime.status, record, "cancelled"))
                raise
            except Exception as error:
                await _note_quietly(runtime.status, record, "crashed", error=type(error).__name__)
                raise
        return None
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        # Shielded: a delivery cancelled at shutdown still gives its claim back.
        await asyncio.shield(_release(runtime.status, lease))


async def _heartbeat(store: StatusStore, lease: Lease) -> None:
    """Renew the claim every ``HEARTBEAT_SECONDS`` while the delivery runs."""
    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        try:
            await store.renew(lease)
        except TransientError as error:
            if error.code == "ClaimLost":
                log.warning("%s; this delivery's next write will fail and it stops", error.message)
                return
            # The claim lasts two more heartbeats: a blip is ridden out, an outage lets it lapse.
            log.warning("could not renew the claim: %s", error.message)


async def _release(store: StatusStore, lease: Lease) -> None:
    """Give the claim back (owner-checked); if that fails for any reason it simply lapses, and the
    delivery's outcome (already stored, or about to be raised) stands."""
    try:
        if not await store.release(lease):
            log.warning("the claim had lapsed and another delivery holds it now; left alone")
    except ResetError as error:
        log.warning("could not release the claim (it lapses by itself): %s", error.message)
    except Exception as error:  # a closed client at shutdown, say: never worth failing the delivery
        log.warning("could not release the claim (it lapses by itself): %s", type(error).__name__)


async def _hold(
    runtime: Runtime,
    body: bytes,
    request: ResetRequest,
    record: StatusRecord,
    held: HoldError,
    dequeue_count: int,
) -> None:
    """Put the request back on the queue after ``held.delay``: not failed, not retried into a wait.

    A breaker hold (``held.held``) also says so on the record (status Held, with the breaker's
    code and message); every hold notes ``heldUntil`` so the sweeper leaves the request alone.
    """
    latest = await runtime.status.get(record.request_id) or record
    if held.limited and latest.deferrals >= MAX_DEFERRALS:
        give_up = TransientError(f"{held.message} (held {latest.deferrals} times already)", code="HeldTooOften")
        await _fail(runtime, body, latest, give_up, dequeue_count, fresh=True)
        return
    delay = min(max(held.delay, 1.0), MAX_HOLD_SECONDS)
    await defer_request(runtime, request, record.request_id, delay=delay)
    changes: dict[str, Any] = {
        "held_until": utcnow() + timedelta(seconds=delay),
        "deferrals": latest.deferrals + (1 if held.limited else 0),
    }
    if held.held:
        changes.update(status=Status.HELD, phase="Held", error_code=held.code, error_message=held.message)
    event = "held" if held.held else "waiting"
    await _note_quietly(runtime.status, latest, event, fresh=True, changes=changes, code=held.code)
    log.warning("request put back on the queue for %.0fs: %s", delay, held.message)
    _outcome("Held", held.code)


async def _fail(
    runtime: Runtime,
    body: bytes,
    record: StatusRecord,
    error: ResetError,
    dequeue_count: int,
    *,
    fresh: bool = False,
) -> None:
    bind(code=error.code)
    last_delivery = dequeue_count >= runtime.settings.max_dequeue_count
    if error.permanent or last_delivery:
        latest = record if fresh else (await runtime.status.get(record.request_id) or record)
        history = latest.with_event("poisoned", code=error.code, message=error.message)
        await runtime.publisher.send_poison(_envelope(body, record.request_id, error, latest.attempts, history))
        await _note_quietly(runtime.status, latest, "poisoned", fresh=True, code=error.code, message=error.message)
        log.warning("request sent to poison: %s", error.message)
        _outcome("Poisoned", error.code)
        return
    await _note_quietly(runtime.status, record, "transientFailure", fresh=fresh, code=error.code, message=error.message)
    log.warning("transient failure, the host will redeliver: %s", error.message)
    _outcome("Retried", error.code)
    raise error


async def _note_quietly(
    store: StatusStore,
    record: StatusRecord,
    event: str,
    *,
    fresh: bool = False,
    changes: dict[str, Any] | None = None,
    **details: Any,
) -> None:
    """Add an event to the record's history, best effort (the record was saved since unless ``fresh``)."""
    try:
        latest = record if fresh else (await store.get(record.request_id) or record)
        await store.note(latest, event, changes=changes, **details)
    except ResetError as error:
        log.warning("could not note %s on the status record: %s", event, error.message)


async def _announce(runtime: Runtime, record: StatusRecord) -> None:
    """After the outcome is stored: the result message, then the callback's own delivery job."""
    await runtime.publisher.send_result(record.public())
    await queue_callback(runtime, record)


async def handle_poison_message(body: bytes, *, message_id: str, dequeue_count: int = 1) -> None:
    """Record Failed and publish the result for a poisoned request.

    A transient failure (storage) is raised so the host retries; on the host's last delivery,
    which a poison queue has no poison queue behind, the message is re-enqueued for later
    instead. Garbage that can never be parsed is recorded as Failed with its own code.
    """
    with (
        bind_request(messageId=message_id, dequeueCount=dequeue_count),
        telemetry.span("record poisoned reset", kind="consumer", traceparent=traceparent_hint(body)),
    ):
        try:
            await _record_poisoned(body, message_id)
        except ResetError as error:
            runtime = await get_runtime()
            if dequeue_count < runtime.settings.max_dequeue_count:
                log.warning("could not record the poisoned request yet; the host retries: %s", error.message)
                raise redacted(error) from None
            log.warning("could not record the poisoned request on the last delivery; re-queued: %s", error.message)
            await runtime.publisher.send_poison(body.decode("utf-8", errors="replace"), delay=60)


def _poison_details(body: bytes) -> tuple[str | None, dict[str, Any], dict[str, Any] | None, str | None]:
    """(requestId, error block, original request, why the body is unreadable) of a poison message."""
    try:
        data: Any = parse_json(body.decode("utf-8-sig"))
    except UnicodeDecodeError:
        return None, {}, None, "the message is not UTF-8 text"
    except InvalidRequestError as error:
        return None, {}, None, error.message
    if isinstance(data, dict) and isinstance(data.get("error"), dict) and "request" in data:
        request = data["request"] if isinstance(data["request"], dict) else None
        rid = data.get("requestId")
        return (rid if isinstance(rid, str) else None), data["error"], request, None
    if not isinstance(data, dict):
        return None, {}, None, "the message is not a JSON object"
    # A raw request the host moved after its last failed delivery.
    return request_id_hint(body), {}, data, None


async def _record_poisoned(body: bytes, message_id: str) -> None:
    runtime = await get_runtime()
    request_id, error, request, unreadable = _poison_details(body)
    existing = None
    if request_id:
        existing = await runtime.status.get(request_id)
    elif unreadable is None:
        existing = await runtime.status.find_by_message_hash(message_hash(body))
    request_id = request_id or (existing.request_id if existing else f"poison-{message_id}")
    bind(requestId=request_id, ticketId=existing.ticket_id if existing else None)
    if existing is not None and existing.status.terminal:
        log.info("poisoned copy of a request that already %s; ignored", existing.status)
        return
    claim = await runtime.status.read_lease(request_id)
    if claim is not None and claim.live():
        # A copy of the request is being worked on right now: its outcome decides; look again later.
        delay = (claim.until - utcnow()).total_seconds() + CLAIM_MARGIN_SECONDS
        await runtime.publisher.send_poison(body.decode("utf-8", errors="replace"), delay=delay)
        log.info("the request is claimed by a live delivery; the poison message is held for %.0fs", delay)
        return

    if unreadable is not None:
        why = f"the poison queue held a message that is not a reset request: {unreadable}"
        error = {"code": "InvalidRequest", "message": why}
    elif not error:
        history = existing.history if existing else ()
        last: dict[str, Any] = next((e for e in reversed(history) if e.get("code") or e.get("error")), {})
        error = {
            "code": "DeliveryFailed",
            "message": "the worker failed on every delivery and the host moved the message to "
            f"the poison queue (last problem: {last.get('code') or last.get('error') or 'unknown'})",
            "attempts": existing.attempts if existing else None,
        }
    final = await _store_failed(runtime.status, request_id, existing, request, error)
    bind(code=final.error_code)
    telemetry.count("guest_reset.resets", outcome="Failed", code=final.error_code)
    log.warning("request failed: %s", final.error_message)
    await _announce(runtime, final)


async def _store_failed(
    store: StatusStore,
    request_id: str,
    existing: StatusRecord | None,
    request: dict[str, Any] | None,
    error: dict[str, Any],
) -> StatusRecord:
    """Write Failed under ETag (a concurrent writer makes it read again), never over a finished record."""
    for _ in range(5):
        if existing is None:
            base = StatusRecord(request_id=request_id, status=Status.FAILED, created_at=utcnow())
            if request:
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
                    callback_url=_text(request.get("callbackUrl")),
                    request_json=stored_request(
                        stored_form(
                            json.dumps({**request, "requestId": request_id}, separators=(",", ":"), ensure_ascii=False)
                        )
                    ),
                )
        else:
            base = existing
        failed: dict[str, Any] = {
            "status": Status.FAILED,
            "finished_at": utcnow(),
            "held_until": None,
            "attempts": max(base.attempts, int(error.get("attempts") or 0)),
            "error_code": _text(error.get("code")) or "Failed",
            "error_message": redact(_text(error.get("message")) or ""),
            "graph_request_id": _text(error.get("graphRequestId")) or base.graph_request_id,
            "history": base.with_event("failed", code=_text(error.get("code"))),
        }
        try:
            if existing is None:
                created = await store.create(replace(base, **failed, updated_at=utcnow()))
                if created is not None:
                    return created
            else:
                return await store.save(existing, **failed)
        except TransientError as conflict:
            if conflict.code != "StatusConflict":
                raise
        existing = await store.get(request_id)
        if existing is not None and existing.status.terminal:
            return existing
    raise TransientError(f"the status of {request_id} kept changing while recording it Failed", code="StatusConflict")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
