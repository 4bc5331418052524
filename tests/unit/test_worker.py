"""The worker's decisions per delivery (poison now, retry, give up, ignore a duplicate) and the poison handler's."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from shared.platform.errors import TransientError
from shared.reset.status import CLAIM, Status
from shared.reset.worker import handle_poison_message, message_hash
from tests.factories import (
    GUEST_ID,
    HELPDESK_ADMINISTRATOR,
    MakeApp,
    StubApp,
    directory_user,
    request_body,
    role,
    status_record,
)

RID = "ticket-4711"


def body(**fields: Any) -> bytes:
    return request_body(requestId=RID, **fields)


def events(history: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[str]:
    return [entry["event"] for entry in history]


@pytest.fixture
def app(make_app: MakeApp) -> StubApp:
    return make_app(directory_user())


# --- one delivery ---------------------------------------------------------------------------


async def test_a_valid_request_is_reset_and_its_result_published(app: StubApp) -> None:
    """The happy path end to end: one invitation, Succeeded recorded, one result message."""
    await app.deliver(body(ticketId="INC-1"))
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED and record.verified is True
    assert await app.store.read_lease(RID) is None, "the claim is given back"
    assert len(app.graph.invitations) == 1
    [result] = app.results()
    assert (result["requestId"], result["status"], result["ticketId"]) == (RID, "Succeeded", "INC-1")
    assert app.poison() == []


@pytest.mark.parametrize(
    "raw",
    [
        b"not json at all",
        b"\xff\xfe\x00garbage",
        json.dumps({"userId": GUEST_ID, "requestId": RID, "userPrincipalName": "x@y.com"}).encode(),
        json.dumps({"userId": GUEST_ID, "requestId": RID, "sendInvitationMesage": True}).encode(),
        json.dumps({"userId": GUEST_ID, "requestId": RID, "callbackUrl": "https://evil.example/hook"}).encode(),
    ],
    ids=["text", "bytes", "two-user-keys", "typo", "callback-off-allowlist"],
)
async def test_an_invalid_message_goes_to_poison_at_once(app: StubApp, raw: bytes) -> None:
    """Retrying cannot fix a malformed request: poisoned on its first delivery, nothing asked of Graph or the table."""
    await app.deliver(raw, message_id="msg-1")
    [envelope] = app.poison()
    assert envelope["error"]["code"] == "InvalidRequest" and envelope["error"]["attempts"] == 1
    assert envelope["requestId"] in {RID, "msg-1"}
    assert app.graph.calls == [] and app.table.entities == []


async def test_a_permanent_failure_is_poisoned_at_once_without_raising(make_app: MakeApp) -> None:
    """A refusal (here a member) ends the delivery normally, with an envelope that says why."""
    app = make_app(directory_user(user_type="Member"))
    await app.deliver(body(), dequeue_count=1)
    [envelope] = app.poison()
    assert envelope["error"]["code"] == "NotAGuest" and envelope["error"]["permanent"] is True
    assert envelope["request"]["requestId"] == RID and events(envelope["history"])[-1] == "poisoned"
    record = await app.status(RID)
    assert record is not None and events(record.history)[-1] == "poisoned"
    assert await app.store.read_lease(RID) is None
    assert app.graph.invitations == [] and app.results() == []


async def test_a_graph_refusal_is_poisoned_with_graphs_code(app: StubApp) -> None:
    """A permanent Graph answer (403 cross-tenant access) is poisoned on the first delivery, not retried."""
    app.graph.fail_status(
        "reset_redemption",
        403,
        graph_code="Forbidden",
        message="This invitation is blocked by cross-tenant access settings.",
    )
    await app.deliver(body())
    [envelope] = app.poison()
    assert envelope["error"]["code"] == "CrossTenantAccessBlocked"
    assert len(app.graph.calls_to("reset_redemption")) == 1


async def test_a_blocked_tenant_holds_the_request_instead_of_failing_it(app: StubApp) -> None:
    """The suspicious-activity 403 opens the breaker: the request is Held and back on the queue, not poisoned."""
    app.graph.fail_status(
        "reset_redemption", 403, graph_code="Forbidden", message="Blocked due to suspicious activity."
    )
    await app.deliver(body())
    assert app.poison() == [] and app.results() == []
    record = await app.status(RID)
    assert record is not None and record.status is Status.HELD and record.error_code == "InvitationsBlocked"
    assert await app.store.read_lease(RID) is None and record.invite_started_at is None
    [again] = app.requests_queue.decoded()
    assert again["requestId"] == RID
    assert (await app.runtime.gate.state()).opened_by == RID


async def test_a_transient_failure_is_handed_back_until_the_last_delivery_then_poisoned(app: StubApp) -> None:
    """Graph down: every delivery but the last releases the lease and raises; the last one poisons with history."""
    app.graph.fail_status("reset_redemption", 503, times=None)
    last = app.settings.max_dequeue_count
    for delivery in range(1, last):
        with pytest.raises(TransientError):
            await app.deliver(body(), dequeue_count=delivery)
        record = await app.status(RID)
        assert record is not None and record.attempts == delivery and await app.store.read_lease(RID) is None
        assert app.poison() == []
    await app.deliver(body(), dequeue_count=last)
    [envelope] = app.poison()
    assert envelope["error"]["code"] == "GraphUnavailable" and envelope["error"]["attempts"] == last
    assert events(envelope["history"]).count("transientFailure") == last - 1
    assert events(envelope["history"])[-1] == "poisoned"
    assert app.graph.invitations == []


async def test_a_transient_failure_that_clears_ends_in_one_success(app: StubApp) -> None:
    """One 429 on the first delivery, success on the second: exactly one invitation, attempt 2."""
    app.graph.fail_status("reset_redemption", 429, retry_after="1")
    with pytest.raises(TransientError):
        await app.deliver(body(), dequeue_count=1)
    await app.deliver(body(), dequeue_count=2)
    record = await app.status(RID)
    assert record is not None and (record.status, record.attempts) == (Status.SUCCEEDED, 2)
    assert len(app.graph.invitations) == 1 and app.poison() == []


async def test_an_invitation_that_landed_despite_the_error_is_confirmed_not_sent_again(app: StubApp) -> None:
    """Safety rule 7: a 504 after Graph sent the invitation; the same delivery confirms it by read-back."""
    app.graph.fail_status("reset_redemption", 504, applied=True)
    await app.deliver(body(), dequeue_count=1)
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED and record.verified is True
    assert len(app.graph.invitations) == 1 and len(app.graph.calls_to("reset_redemption")) == 1
    assert record.history[-1]["event"] == "succeeded" and record.history[-1]["confirmedByReadBack"] is True


@pytest.mark.parametrize("fault", ["timeout", "dropped"])
async def test_an_uncertain_invitation_without_evidence_is_never_sent_again(app: StubApp, fault: str) -> None:
    """No trace of the send: OutcomeUnknown, poisoned at once for a person, and no second POST ever."""
    app.graph.fail_transit("reset_redemption", fault)  # type: ignore[arg-type]
    await app.deliver(body(), dequeue_count=1)
    [envelope] = await app.run_poison_handler()
    assert envelope["error"]["code"] == "OutcomeUnknown" and envelope["error"]["permanent"] is True
    assert "audit log" in envelope["error"]["message"] and "poison replay" in envelope["error"]["message"]
    assert len(app.graph.calls_to("reset_redemption")) == 1 and app.graph.invitations == []
    record = await app.status(RID)
    assert record is not None and (record.status, record.error_code) == (Status.FAILED, "OutcomeUnknown")
    await app.deliver(body(), dequeue_count=2)  # a late redelivery changes nothing
    assert len(app.graph.calls_to("reset_redemption")) == 1


async def test_an_uncertain_invitation_to_a_guest_already_pending_is_outcome_unknown_at_once(
    make_app: MakeApp,
) -> None:
    """A never-redeemed guest shows nothing a reset changes: no read-back can decide, so no resend on a guess."""
    app = make_app(directory_user(external_user_state="PendingAcceptance"))
    app.graph.fail_status("reset_redemption", 504, applied=True)
    await app.deliver(body())
    [envelope] = app.poison()
    assert envelope["error"]["code"] == "OutcomeUnknown" and "already PendingAcceptance" in envelope["error"]["message"]
    assert len(app.graph.calls_to("reset_redemption")) == 1 and app.graph.calls_to("read_user") == []


async def test_a_redelivery_after_a_crash_mid_invitation_decides_by_evidence_only(app: StubApp) -> None:
    """The intent was recorded and the worker died: the next delivery reads back, and never posts again."""
    app.graph.fail("reset_redemption", asyncio.CancelledError(), applied=True)
    with pytest.raises(asyncio.CancelledError):
        await app.deliver(body(), dequeue_count=1)
    record = await app.status(RID)
    assert record is not None and record.phase == "Inviting" and await app.store.read_lease(RID) is None
    await app.deliver(body(), dequeue_count=2)
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED and record.verified is True
    assert len(app.graph.calls_to("reset_redemption")) == 1 and len(app.graph.invitations) == 1


async def test_a_refused_invitation_clears_the_intent_so_a_redelivery_may_send(app: StubApp) -> None:
    """A 429 proves nothing was sent: the record says so, and the next delivery sends the one invitation."""
    app.graph.fail_status("reset_redemption", 429, retry_after="1")
    with pytest.raises(TransientError):
        await app.deliver(body(), dequeue_count=1)
    record = await app.status(RID)
    assert record is not None and record.phase == "InviteNotSent" and record.invite_started_at is None
    await app.deliver(body(), dequeue_count=2)
    assert len(app.graph.invitations) == 1


async def test_a_finished_request_redelivered_sends_no_second_invitation_and_repeats_its_result(app: StubApp) -> None:
    """The result may have been lost with the first delivery: a redelivery re-sends it, nothing else."""
    await app.deliver(body(), dequeue_count=1)
    [first] = app.results()
    await app.deliver(body(), dequeue_count=2)
    assert len(app.graph.invitations) == 1
    assert app.results() == [first]


async def test_a_duplicate_message_of_a_finished_request_is_ignored_quietly(app: StubApp) -> None:
    """A second copy of the message (dequeue count 1) finds the request done: no invitation, no result."""
    await app.deliver(body())
    app.results()
    await app.deliver(body(), dequeue_count=1)
    assert len(app.graph.invitations) == 1 and app.results() == [] and app.poison() == []


async def test_a_delivery_that_finds_the_request_busy_holds_it_instead_of_dropping_it(app: StubApp) -> None:
    """Another delivery holds a live claim: this one touches neither Graph nor the record, and re-enqueues
    the request invisible until that claim can have lapsed, so the request survives its holder's death."""
    claim = await app.store.claim(status_record(request_id=RID), owner="another-delivery")
    await app.deliver(body())
    assert app.graph.calls == [] and await app.status(RID) == claim.record
    [(copy, hidden)] = app.requests_queue.hidden
    assert json.loads(copy)["requestId"] == RID and json.loads(copy)["userId"] == GUEST_ID
    assert CLAIM.total_seconds() <= hidden <= CLAIM.total_seconds() + 5


async def test_a_lost_result_message_is_recovered_by_the_redelivery(app: StubApp) -> None:
    """The result queue blips after the reset: the host redelivers, the result goes out, still one invitation."""
    app.results_queue.fail("send_message")
    with pytest.raises(TransientError):
        await app.deliver(body(), dequeue_count=1)
    assert app.results() == []
    await app.deliver(body(), dequeue_count=2)
    assert [r["status"] for r in app.results()] == ["Succeeded"] and len(app.graph.invitations) == 1


async def test_a_crash_releases_the_lease_and_reaches_the_host(app: StubApp) -> None:
    """An unexpected error is re-raised for the host to retry, and the lease is given back on the way out."""
    app.graph.fail("read_user", RuntimeError("bug"))
    with pytest.raises(RuntimeError):
        await app.deliver(body())
    record = await app.status(RID)
    assert record is not None and events(record.history)[-1] == "crashed"
    assert await app.store.read_lease(RID) is None


async def test_a_dry_run_through_the_worker_publishes_dry_run_passed(app: StubApp) -> None:
    """A dry run ends in DryRunPassed with its result message, and nothing was written to the directory."""
    await app.deliver(body(dryRun=True))
    assert [r["status"] for r in app.results()] == ["DryRunPassed"]
    assert app.graph.writes == []


# --- the poison handler ---------------------------------------------------------------------


async def test_the_poison_handler_records_failed_with_the_code_and_publishes_it(make_app: MakeApp) -> None:
    """A poisoned refusal ends as Failed with its code and message, and a result says so."""
    app = make_app(directory_user(role_assignments=[role(HELPDESK_ADMINISTRATOR)]))
    await app.deliver(body(ticketId="INC-9"))
    await app.run_poison_handler()
    record = await app.status(RID)
    assert record is not None and record.status is Status.FAILED and record.finished_at is not None
    assert record.error_code == "TargetHasDirectoryRoles" and HELPDESK_ADMINISTRATOR in (record.error_message or "")
    [result] = app.results()
    assert (result["status"], result["errorCode"], result["ticketId"]) == ("Failed", "TargetHasDirectoryRoles", "INC-9")


async def test_the_poison_handler_records_a_transient_failure_that_ran_out(app: StubApp) -> None:
    """The last delivery's poison envelope becomes Failed with the transient code and every attempt counted."""
    app.graph.fail_status("reset_redemption", 503, times=None)
    await app.deliver(body(), dequeue_count=app.settings.max_dequeue_count)
    await app.run_poison_handler()
    record = await app.status(RID)
    assert record is not None and (record.status, record.error_code) == (Status.FAILED, "GraphUnavailable")
    assert record.attempts == 1


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\x00\x01 garbage", "InvalidRequest"),
        (b"", "InvalidRequest"),
        (b"[1, 2, 3]", "InvalidRequest"),
        (b"[" * 10_000 + b"]" * 10_000, "InvalidRequest"),
        (b'{"requestId": 7}', "DeliveryFailed"),
    ],
    ids=["bytes", "empty", "list", "nested-10000", "object"],
)
async def test_the_poison_handler_records_garbage_without_raising(app: StubApp, raw: bytes, code: str) -> None:
    """A poison message nobody can read still ends as one Failed record with a code, under its message id."""
    await handle_poison_message(raw, message_id="m-77")
    record = await app.status("poison-m-77")
    assert record is not None and (record.status, record.error_code) == (Status.FAILED, code)
    assert [r["requestId"] for r in app.results()] == ["poison-m-77"]


async def test_a_raw_request_moved_by_the_host_is_failed_with_its_last_problem(app: StubApp) -> None:
    """When the worker crashed on every delivery the host moves the bare request; the record names why."""
    app.graph.fail("read_user", RuntimeError("bug"), times=None)
    for delivery in (1, 2):
        with pytest.raises(RuntimeError):
            await app.deliver(body(), dequeue_count=delivery)
    await handle_poison_message(body(), message_id="m-1")
    record = await app.status(RID)
    assert record is not None and (record.status, record.error_code, record.attempts) == (
        Status.FAILED,
        "DeliveryFailed",
        2,
    )


async def test_a_raw_request_without_request_id_is_found_by_its_body(app: StubApp) -> None:
    """A request without requestId gets one derived from its content; its poisoned copy is matched by body hash."""
    raw = request_body()
    app.graph.fail("find_user", RuntimeError("bug"))
    with pytest.raises(RuntimeError):
        await app.deliver(raw, message_id="first-id")
    await handle_poison_message(raw, message_id="poison-copy-id")
    [result] = app.results()
    record = await app.status(result["requestId"])
    assert result["requestId"].startswith("auto-") and await app.status("first-id") is None
    assert record is not None and record.status is Status.FAILED and record.message_hash == message_hash(raw)
    assert await app.status("poison-poison-copy-id") is None


async def test_a_poisoned_copy_of_a_succeeded_request_changes_nothing(app: StubApp) -> None:
    """The host may poison a copy after another copy succeeded: the success stands, no Failed result."""
    await app.deliver(body())
    app.results()
    await handle_poison_message(body(), message_id="late-copy")
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED and app.results() == []


async def test_the_poison_handler_lets_the_host_retry_a_storage_blip(app: StubApp) -> None:
    """Storage down: the handler raises (the host delivers it again) instead of dropping the message."""
    app.table.fail("get_entity")
    with pytest.raises(TransientError):
        await handle_poison_message(body(), message_id="m-1", dequeue_count=1)
    await app.deliver(body(), dequeue_count=app.settings.max_dequeue_count)  # nothing recorded yet: it works now
    assert (await app.status(RID)) is not None


async def test_the_poison_handler_requeues_on_the_hosts_last_delivery(app: StubApp) -> None:
    """On its last delivery a failure cannot be raised (a poison queue has no poison queue): it goes back, delayed."""
    app.table.fail("get_entity", times=None)
    await handle_poison_message(body(), message_id="m-1", dequeue_count=app.settings.max_dequeue_count)
    [(copy, hidden)] = app.poison_queue.hidden
    assert json.loads(copy)["requestId"] == RID and hidden >= 30
    assert app.results() == []


async def test_the_poison_handler_waits_for_a_live_delivery_of_the_same_request(app: StubApp) -> None:
    """A copy of the request is being worked on: its outcome decides, so the poison message is held, not recorded."""
    await app.store.claim(status_record(request_id=RID), owner="live-delivery")
    await handle_poison_message(body(), message_id="m-1")
    record = await app.status(RID)
    assert record is not None and record.status is Status.PROCESSING
    assert len(app.poison_queue.hidden) == 1 and app.results() == []
