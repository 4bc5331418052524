"""Exactly one outcome under faults, over the in-memory doubles: claims that heal, holds, the sweeper,
uncertain invitations, idempotent intake, hostile shapes and callbacks off the critical path."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.api.handlers import ApiRequest, submit_resets
from shared.platform.errors import HoldError, InvalidRequestError, OutcomeUnknownError
from shared.reset import callbacks
from shared.reset.callbacks import Attempt, handle_callback_message
from shared.reset.contract import IDEMPOTENCY_WINDOW, MAX_NESTING, check_nesting, parse_request
from shared.reset.graph_stub import DirectoryUser, StubGraphGateway
from shared.reset.readback import Before, resolve_uncertain, verdict
from shared.reset.status import CLAIM, LEASE_ROW_KEY, Status, StatusStore, iso_time, utcnow
from shared.reset.sweeper import STALLED, UNRECOVERABLE, sweep
from shared.reset.worker import MAX_DEFERRALS, handle_request_message
from tests.factories import GUEST_ID, MakeApp, StubApp, directory_user, request_body, status_record

RID = "ticket-4711"
BOMB = b"[" * 10_000 + b"]" * 10_000


@pytest.fixture
def app(make_app: MakeApp) -> StubApp:
    return make_app(directory_user())


def body(**fields: Any) -> bytes:
    return request_body(requestId=RID, **fields)


def events(history: tuple[dict[str, Any], ...]) -> list[str]:
    return [entry["event"] for entry in history]


# --- 1. claims that heal ------------------------------------------------------------------------


async def test_the_heartbeat_renews_the_claim_while_the_reset_runs(
    app: StubApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow Graph call outlives a heartbeat period: the claim is renewed meanwhile, then released."""
    monkeypatch.setattr("shared.reset.worker.HEARTBEAT_SECONDS", 0.001)
    renewed = asyncio.Event()
    renew = StatusStore.renew

    async def counting(self: StatusStore, lease: Any) -> None:
        await renew(self, lease)
        renewed.set()

    monkeypatch.setattr(StatusStore, "renew", counting)
    find = app.graph.find_user

    async def slow_find(**kw: Any) -> Any:
        await asyncio.wait_for(renewed.wait(), 5)  # a guard against a hang, not a timing assertion
        return await find(**kw)

    monkeypatch.setattr(app.graph, "find_user", slow_find)
    await app.deliver(body())
    assert renewed.is_set()
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED
    assert await app.store.read_lease(RID) is None


async def test_a_transient_failure_whose_release_also_fails_is_held_not_dropped(app: StubApp) -> None:
    """The issue's stuck case: release fails, the message comes back while the claim lives; it is held, then done."""
    app.graph.fail_status("reset_redemption", 503)
    app.table.fail("delete_entity")  # the claim's release
    with pytest.raises(Exception, match="unavailable"):
        await app.deliver(body(), dequeue_count=1)
    assert (await app.store.read_lease(RID)) is not None, "the claim outlived its delivery"
    await app.deliver(body(), dequeue_count=2)  # back after visibilityTimeout, claim still live
    [(copy, hidden)] = app.requests_queue.hidden
    assert json.loads(copy)["requestId"] == RID and 0 < hidden <= CLAIM.total_seconds() + 5
    entity = await app.table.get_entity(RID, LEASE_ROW_KEY)
    await app.table.update_entity({**entity, "Until": iso_time(utcnow() - timedelta(seconds=1))})
    await handle_request_message(copy.encode(), message_id="copy", dequeue_count=1)
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED and len(app.graph.invitations) == 1


async def test_a_release_that_crashes_after_the_outcome_is_stored_does_not_fail_the_delivery(
    app: StubApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome is stored and announced although the claim could not be given back (it lapses)."""

    async def closed(lease: object) -> bool:
        raise ValueError("HTTP transport has already been closed")

    monkeypatch.setattr(app.store, "release", closed)
    await app.deliver(body(), dequeue_count=1)
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED
    assert [r["status"] for r in app.results()] == ["Succeeded"] and len(app.graph.invitations) == 1


async def test_a_delivery_cancelled_at_shutdown_leaves_no_live_claim(app: StubApp) -> None:
    """CancelledError is not an Exception: the claim is still given back and the record says why."""
    app.graph.fail("find_user", asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await app.deliver(body())
    assert await app.store.read_lease(RID) is None
    record = await app.status(RID)
    assert record is not None and events(record.history)[-1] == "cancelled"


# --- 2. deadlines and holds -----------------------------------------------------------------------


async def test_a_wait_that_does_not_fit_holds_the_request_without_spending_a_delivery(app: StubApp) -> None:
    """Graph asks for ten minutes: a copy comes back after them, this delivery completes, nothing is poisoned."""
    app.graph.fail("reset_redemption", lambda: HoldError("Graph asked to wait", delay=600, held=False, limited=True))
    await app.deliver(body(), dequeue_count=1)  # returns normally: the host deletes this delivery
    [(copy, hidden)] = app.requests_queue.hidden
    assert json.loads(copy)["requestId"] == RID and hidden == 600
    record = await app.status(RID)
    assert record is not None and record.status is Status.PROCESSING and record.deferrals == 1
    assert record.held_until is not None and record.held_until > utcnow() + timedelta(seconds=590)
    assert record.phase == "InviteNotSent" and await app.store.read_lease(RID) is None
    assert app.poison() == [] and app.graph.invitations == []


async def test_a_request_held_too_often_counts_as_a_failed_delivery(app: StubApp) -> None:
    """Holds for the request's own sake are capped: past the cap the host's dequeue count takes over."""
    await app.store.create(status_record(request_id=RID, status=Status.PROCESSING, deferrals=MAX_DEFERRALS))
    app.graph.fail("reset_redemption", lambda: HoldError("Graph asked to wait", delay=600, held=False, limited=True))
    with pytest.raises(Exception, match="held"):
        await app.deliver(body(), dequeue_count=1)
    assert app.requests_queue.hidden == []


async def test_an_operator_hold_is_never_capped(app: StubApp) -> None:
    """A hold the operator ends (the open invitation breaker) is held however often, and says so."""
    await app.store.create(status_record(request_id=RID, status=Status.PROCESSING, deferrals=MAX_DEFERRALS))
    app.graph.fail("reset_redemption", lambda: HoldError("breaker open", delay=300, code="InvitationsBlocked"))
    await app.deliver(body())
    assert len(app.requests_queue.hidden) == 1
    record = await app.status(RID)
    assert record is not None and record.status is Status.HELD and record.error_code == "InvitationsBlocked"


# --- 3. the sweeper -------------------------------------------------------------------------------


async def stalled(app: StubApp, **fields: Any) -> None:
    fields.setdefault("updated_at", utcnow())
    record = await app.store.create(status_record(request_id=RID, request_json=body().decode(), **fields))
    assert record is not None


async def test_the_sweeper_re_enqueues_a_stalled_request_and_says_so_at_warning(
    app: StubApp, caplog: pytest.LogCaptureFixture
) -> None:
    """Processing, no live claim, quiet past the grace: back on the queue, noted, logged with a stable code."""
    await stalled(app)
    with caplog.at_level(logging.WARNING, logger="guest_reset"):
        report = await sweep(now=utcnow() + timedelta(seconds=app.settings.sweep_grace_seconds + 1))
    assert report.requeued == [RID]
    assert [json.loads(m)["requestId"] for m in app.requests_queue.messages] == [RID]
    record = await app.status(RID)
    assert record is not None and events(record.history)[-1] == "swept"
    flagged = [r for r in caplog.records if getattr(r, "code", None) == STALLED and r.levelno == logging.WARNING]
    assert flagged and all(STALLED in r.getMessage() for r in flagged)


async def test_the_swept_copy_finishes_the_request_once(app: StubApp) -> None:
    """The re-enqueued request runs to Succeeded with one invitation."""
    await stalled(app)
    await sweep(now=utcnow() + timedelta(seconds=app.settings.sweep_grace_seconds + 1))
    [copy] = app.requests_queue.messages
    await handle_request_message(copy.encode(), message_id="swept", dequeue_count=1)
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED and len(app.graph.invitations) == 1


async def test_the_sweeper_leaves_live_held_recent_and_finished_requests_alone(app: StubApp) -> None:
    """A live claim, a deliberate hold, a fresh record or an outcome: nothing is sent."""
    later = utcnow() + timedelta(seconds=app.settings.sweep_grace_seconds + 1)
    await app.store.claim(status_record(request_id="live", request_json="{}"), owner="worker")
    now = utcnow()
    await app.store.create(
        status_record(request_id="held", request_json="{}", updated_at=now, held_until=later + timedelta(hours=1))
    )
    await app.store.create(status_record(request_id="done", status=Status.SUCCEEDED, request_json="{}", updated_at=now))
    report = await sweep(now=later)
    assert report.requeued == [] and report.alive == 1 and app.requests_queue.messages == []
    assert (await sweep(now=utcnow())).examined == 0, "a record quiet for less than the grace is no candidate"


async def test_a_stalled_request_that_cannot_be_re_run_ends_failed_with_a_code(app: StubApp) -> None:
    """Without a stored body nothing can be re-enqueued: Failed with StalledUnrecoverable, and a result."""
    await app.store.create(status_record(request_id=RID, status=Status.ACCEPTED, updated_at=utcnow()))
    report = await sweep(now=utcnow() + timedelta(seconds=app.settings.sweep_grace_seconds + 1))
    assert report.failed == [RID]
    record = await app.status(RID)
    assert record is not None and (record.status, record.error_code) == (Status.FAILED, UNRECOVERABLE)
    assert [r["errorCode"] for r in app.results()] == [UNRECOVERABLE]


# --- 4./5. uncertain invitations ------------------------------------------------------------------


class FakeTime:
    """A clock and a sleep that advance together (no real waiting)."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


def graph_with(state: str) -> tuple[StubGraphGateway, DirectoryUser]:
    user = directory_user(external_user_state=state, external_user_state_changed_at=datetime(2029, 1, 1, tzinfo=UTC))
    return StubGraphGateway([user]), user


async def test_read_back_evidence_that_shows_late_is_found_within_the_window() -> None:
    """Replication lag: the state moves on the third read; the invitation is confirmed, not re-sent."""
    clock = FakeTime()
    graph, user = graph_with("Accepted")
    sent_at = clock.now
    reads = 0
    read = graph.read_user

    async def lagging(user_id: str) -> Any:
        nonlocal reads
        reads += 1
        if reads == 3:
            user.external_user_state, user.external_user_state_changed_at = "PendingAcceptance", sent_at
        return await read(user_id)

    graph.read_user = lagging  # type: ignore[method-assign]
    sent = await resolve_uncertain(
        graph,
        request_id=RID,
        user_id=GUEST_ID,
        before=Before("Accepted", datetime(2029, 1, 1, tzinfo=UTC)),
        sent_at=sent_at,
        window=60,
        sleep=clock.sleep,
        now=clock,
    )
    assert sent.confirmed_by_read_back and reads == 3 and graph.writes == []


async def test_no_evidence_within_the_window_is_outcome_unknown_after_few_reads() -> None:
    """The window is read a bounded number of times, then the request ends OutcomeUnknown."""
    clock = FakeTime()
    graph, _ = graph_with("Accepted")
    with pytest.raises(OutcomeUnknownError):
        await resolve_uncertain(
            graph,
            request_id=RID,
            user_id=GUEST_ID,
            before=Before("Accepted", None),
            sent_at=clock.now,
            window=60,
            sleep=clock.sleep,
            now=clock,
        )
    reads = len(graph.calls_to("read_user"))
    assert 3 <= reads <= 8 and sum(clock.slept) == pytest.approx(60) and graph.writes == []


async def test_a_window_longer_than_the_deadline_hands_the_rest_to_the_next_delivery() -> None:
    """The delivery's deadline ends first: HoldError, so the next delivery goes on reading, never sending."""
    from shared.reset.deadline import delivery_deadline

    clock = FakeTime()
    graph, _ = graph_with("Accepted")
    with delivery_deadline(5), pytest.raises(HoldError):
        await resolve_uncertain(
            graph,
            request_id=RID,
            user_id=GUEST_ID,
            before=Before("Accepted", None),
            sent_at=clock.now,
            window=60,
            sleep=clock.sleep,
            now=clock,
        )


def test_verified_is_true_only_when_the_read_back_moved_after_the_send() -> None:
    """verified: true when the state moved after our send; null for a guest already pending; false when stale."""
    sent = datetime(2030, 1, 1, tzinfo=UTC)
    moved = directory_user(external_user_state="PendingAcceptance", external_user_state_changed_at=sent).to_guest()
    stale = directory_user(external_user_state="Accepted", external_user_state_changed_at=sent).to_guest()
    assert verdict(Before("Accepted", sent - timedelta(days=9)), moved, sent) == (True, None)
    verified, note = verdict(Before("PendingAcceptance", sent - timedelta(days=9)), moved, sent)
    assert verified is None and note is not None and "already PendingAcceptance" in note
    assert verdict(Before("Accepted", sent - timedelta(days=9)), stale, sent)[0] is False
    assert verdict(Before("Accepted", None), None, sent)[0] is None


async def test_a_guest_already_pending_succeeds_with_verified_null_and_a_note(make_app: MakeApp) -> None:
    """Issue 12 item 8: the invitation went out (201) but nothing could show it: verified null, never true."""
    app = make_app(directory_user(external_user_state="PendingAcceptance"))
    await app.deliver(body())
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED and record.verified is None
    assert "already PendingAcceptance" in record.history[-1]["readBack"]


async def test_a_failed_read_back_after_a_sent_invitation_does_not_fail_the_request(app: StubApp) -> None:
    """201 from Graph, then the read-back is refused: still Succeeded (verified null), no second send."""
    app.graph.fail_status("read_user", 403, graph_code="Authorization_RequestDenied")
    await app.deliver(body())
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED and record.verified is None
    assert len(app.graph.invitations) == 1


# --- 6. idempotent intake -------------------------------------------------------------------------


async def post(payload: Any, **headers: str) -> tuple[int, Any]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = await submit_resets(
        ApiRequest("POST", "https://app/api/resets", raw, {"content-type": "application/json", **headers})
    )
    return response.status, response.body


async def test_a_retried_post_without_ids_returns_the_first_submissions_ids(app: StubApp) -> None:
    """No requestId, no Idempotency-Key: the same POST again is the same request (one message, duplicate: true)."""
    first = await post({"requests": [{"userId": GUEST_ID}, {"email": "lee@contoso.com"}]})
    again = await post({"requests": [{"email": "lee@contoso.com"}, {"userId": GUEST_ID}][::-1]})
    assert first[0] == again[0] == 202
    ids = [item["requestId"] for item in first[1]["accepted"]]
    assert [item["requestId"] for item in again[1]["accepted"]] == ids and all(i.startswith("auto-") for i in ids)
    assert [item["duplicate"] for item in again[1]["accepted"]] == [True, True]
    assert len(app.requests_queue.messages) == 2


async def test_the_same_content_on_the_queue_is_the_same_request(app: StubApp) -> None:
    """A producer's resend of a message without requestId (new message id, key order changed) resets once."""
    await app.deliver(json.dumps({"userId": GUEST_ID, "ticketId": "INC-1"}).encode(), message_id="m1")
    await app.deliver(json.dumps({"ticketId": "INC-1", "userId": GUEST_ID}).encode(), message_id="m2")
    assert len(app.graph.invitations) == 1
    [result] = app.results()
    assert result["requestId"].startswith("auto-")


async def test_a_request_refused_on_the_queue_is_filed_under_its_derived_id(app: StubApp) -> None:
    """A body without requestId that a rule refuses (a callback off the allowlist) ends Failed under
    the id derived from its content, so a resend finds that outcome. Found by `make fuzz`: the
    outcome was filed under the message id, which no one could look up."""
    body = {"userId": GUEST_ID, "ticketId": "INC-7", "callbackUrl": "https://.com/x"}
    await app.deliver(body, message_id="m1")
    [envelope] = await app.run_poison_handler()
    assert envelope["requestId"].startswith("auto-") and envelope["error"]["code"] == "InvalidRequest"
    record = await app.status(envelope["requestId"])
    assert record is not None and (record.status, record.error_code) == (Status.FAILED, "InvalidRequest")
    await app.deliver(body, message_id="m2")  # the producer sends it again
    [again] = app.poison()
    assert again["requestId"] == envelope["requestId"] and app.graph.invitations == []


async def test_a_resend_across_a_window_boundary_is_still_the_same_request(app: StubApp) -> None:
    """Two arrivals minutes apart but on either side of an hour boundary map to the first one's id."""
    edge = utcnow().replace(minute=0, second=0, microsecond=0)
    raw = json.dumps({"userId": GUEST_ID}).encode()
    await handle_request_message(raw, message_id="m1", dequeue_count=1, inserted_at=edge - timedelta(minutes=2))
    await handle_request_message(raw, message_id="m2", dequeue_count=1, inserted_at=edge + timedelta(minutes=2))
    await handle_request_message(raw, message_id="m3", dequeue_count=1, inserted_at=edge + IDEMPOTENCY_WINDOW * 3)
    assert len(app.graph.invitations) == 2, "the third, hours later, is a new reset"


@pytest.mark.parametrize("key", ["x" * 121, "a/b", "a#b", "a?b", "-starts-with-dash", "sp ace"])
async def test_a_bad_idempotency_key_is_refused_naming_the_header(app: StubApp, key: str) -> None:
    """The key becomes a storage key: refused with 400 that names Idempotency-Key, nothing written."""
    status, problem = await post({"userId": GUEST_ID}, **{"Idempotency-Key": key})
    assert status == 400 and problem["errors"][0]["field"] == "Idempotency-Key"
    assert app.table.entities == [] and app.requests_queue.messages == []


async def test_a_bad_request_id_is_refused_naming_the_field(app: StubApp) -> None:
    """requestId is checked the same way (length and characters), with the field named."""
    status, problem = await post({"userId": GUEST_ID, "requestId": "a/b"})
    assert status == 400 and problem["errors"][0]["field"] == "requestId"


async def test_a_batch_retried_after_a_partial_failure_enqueues_exactly_the_missing_items(app: StubApp) -> None:
    """Storage fails part-way: 503; the same batch again enqueues only what was missing and answers every id."""
    batch = {"requests": [{"userId": GUEST_ID}, {"email": "lee@contoso.com"}, {"email": "kim@contoso.com"}]}
    app.requests_queue.fail("send_message", times=1)
    status, problem = await post(batch, **{"Idempotency-Key": "flow-run-17"})
    assert status == 503 and "retry the same submission" in problem["detail"]
    assert len(app.requests_queue.messages) == 2
    status, answer = await post(batch, **{"Idempotency-Key": "flow-run-17"})
    assert status == 202
    assert [i["requestId"] for i in answer["accepted"]] == ["flow-run-17.0", "flow-run-17.1", "flow-run-17.2"]
    assert sorted(json.loads(m)["requestId"] for m in app.requests_queue.messages) == [
        "flow-run-17.0",
        "flow-run-17.1",
        "flow-run-17.2",
    ]


# --- 7. hostile shapes ----------------------------------------------------------------------------


def test_nesting_is_limited_before_parsing() -> None:
    """A 20 KB document 10,000 levels deep is refused as invalid input, never a RecursionError."""
    with pytest.raises(InvalidRequestError, match="nested more than"):
        parse_request(BOMB)
    check_nesting("[" * MAX_NESTING + "]" * MAX_NESTING)
    check_nesting(json.dumps({"customizedMessageBody": "[" * 5000}))  # brackets inside strings do not count


async def test_a_deeply_nested_http_body_is_a_400_problem(app: StubApp) -> None:
    status, problem = await post(BOMB)
    assert status == 400 and "nested" in problem["detail"]


async def test_a_deeply_nested_queue_message_is_poisoned_at_once(app: StubApp) -> None:
    """One delivery, InvalidRequest, no Graph call and no record (not five pointless deliveries)."""
    await app.deliver(BOMB, message_id="bomb")
    [envelope] = app.poison()
    assert envelope["error"]["code"] == "InvalidRequest" and envelope["error"]["attempts"] == 1
    assert app.graph.calls == [] and app.table.entities == []


# --- 7. callbacks off the critical path -----------------------------------------------------------


async def test_the_callback_is_queued_after_the_outcome_not_sent_inline(make_app: MakeApp) -> None:
    """The worker stores the outcome, sends the result, and leaves the POST to the callback queue."""
    app = make_app(directory_user(), CALLBACK_ALLOWED_HOSTS="hooks.example")
    await app.deliver(body(callbackUrl="https://hooks.example/cb"))
    callback_queue = app.runtime.publisher._callbacks
    assert callback_queue is not None
    assert [json.loads(m) for m in callback_queue.messages] == [{"requestId": RID, "attempt": 1}]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("attempt", "state", "requeued"),
    [
        (Attempt(True), "Delivered", False),
        (Attempt(False, retry=True, problem="HTTP 503"), None, True),
        (Attempt(False, retry=False, problem="HTTP 404"), "Failed", False),
    ],
    ids=["delivered", "retry-later", "refused"],
)
async def test_each_callback_fate_is_recorded_on_the_request(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, attempt: Attempt, state: str | None, requeued: bool
) -> None:
    """Delivered or failed is written on the record; a retryable failure comes back later as a delayed job."""
    app = make_app(directory_user(), CALLBACK_ALLOWED_HOSTS="hooks.example")
    await app.deliver(body(callbackUrl="https://hooks.example/cb"))

    async def answer(url: str, payload: dict[str, Any], **_: Any) -> Attempt:
        assert payload["status"] == "Succeeded"
        return attempt

    monkeypatch.setattr(callbacks, "post_outcome", answer)
    await handle_callback_message(json.dumps({"requestId": RID, "attempt": 1}).encode(), message_id="cb")
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED and record.callback_status == state
    queue = app.runtime.publisher._callbacks
    assert bool(getattr(queue, "hidden", [])) is requeued


async def test_a_callback_to_an_invalid_url_is_caught_and_reported() -> None:
    """An error outside httpx.HTTPError (InvalidURL) is a failed callback, never an exception."""
    result = await callbacks.post_outcome("https://exa mple.com:99999/x", {"status": "Succeeded"}, delays=())
    assert result.delivered is False and result.problem
