"""The reset pipeline against real Azurite and the Graph emulator, through the real SDK clients."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import unquote

import pytest

from shared.reset.status import Status
from tests.integration.support import ADELE, BRIAN, LEE, MEGAN, ROLF, App


async def test_reset_by_id_sends_one_invitation_and_records_success(app: App) -> None:
    """A guest named by id gets one reset invitation; status and result say Succeeded."""
    await app.deliver({"userId": ADELE, "requestId": "by-id", "ticketId": "INC42"})
    record = await app.status("by-id")
    assert record is not None and record.status is Status.SUCCEEDED
    assert record.verified is True and record.invitation_id
    assert record.masked_email == "a***e@contoso.com"
    sent = app.graph.invitations()
    assert len(sent) == 1 and sent[0]["body"]["resetRedemption"] is True
    assert sent[0]["body"]["invitedUser"] == {"id": ADELE}
    assert app.graph.user(ADELE)["externalUserState"] == "PendingAcceptance"
    [result] = app.results()
    assert result["status"] == "Succeeded" and result["ticketId"] == "INC42"
    assert app.poison() == []


async def test_accepted_reset_that_does_not_read_back_yet_is_recorded_unverified(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Graph accepted the invitation but replication lags: Succeeded, verified false, a warning, no resend."""
    app.graph.set_stale_reads(1)
    with caplog.at_level(logging.WARNING, logger="guest_reset"):
        await app.deliver({"userId": ADELE, "requestId": "lagging"})
    record = await app.status("lagging")
    assert record is not None and record.status is Status.SUCCEEDED
    assert record.verified is False and record.invitation_id
    assert len(app.graph.invitations()) == 1
    assert any("reads back as" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    [result] = app.results()
    assert result["status"] == "Succeeded" and result["verified"] is False
    assert app.poison() == []


async def test_emulator_gets_a_placeholder_token_never_a_real_one(app: App) -> None:
    """Safety rule 3: a loopback Graph URL gets the placeholder token."""
    await app.deliver({"userId": ADELE})
    tokens = {entry["authorization"] for entry in app.graph.journal()}
    assert tokens == {"Bearer emulator-placeholder-token"}


async def test_email_switch_sets_mail_and_keeps_other_mails(app: App) -> None:
    """newEmail becomes mail, is added to otherMails, existing entries stay, invite goes there."""
    before = app.graph.user(BRIAN)["otherMails"]
    await app.deliver({"email": "brian.j@tailspin.example", "newEmail": "brian@new.example", "requestId": "switch"})
    user = app.graph.user(BRIAN)
    assert user["mail"] == "brian@new.example"
    assert user["otherMails"] == [*before, "brian@new.example"]
    [sent] = app.graph.invitations()
    assert sent["body"]["invitedUserEmailAddress"] == "brian@new.example"
    record = await app.status("switch")
    assert record is not None and record.status is Status.SUCCEEDED


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"userId": MEGAN}, "NotAGuest"),
        ({"userId": ROLF}, "TargetHasDirectoryRoles"),
        ({"userId": LEE, "newEmail": "taken@contoso.com"}, "EmailInUse"),
        ({"email": "shared@northwind.example"}, "AmbiguousUser"),
        ({"email": "nobody@nowhere.example"}, "UserNotFound"),
        ({"userId": "5e0c1d2a-ffff-4a5b-9c3d-00000000ffff"}, "UserNotFound"),
    ],
)
async def test_policy_refusals_go_to_poison_at_once(app: App, body: dict[str, str], code: str) -> None:
    """Each refusal poisons on the first delivery, sends nothing, and ends Failed with its code."""
    await app.deliver({**body, "requestId": "refused"})
    assert app.graph.invitations() == []
    assert not app.graph.journal(method="PATCH")
    [poisoned] = await app.run_poison_handler()
    assert poisoned["error"]["code"] == code and poisoned["error"]["permanent"] is True
    assert poisoned["request"]["requestId"] == "refused"
    record = await app.status("refused")
    assert record is not None and record.status is Status.FAILED and record.error_code == code
    [result] = app.results()
    assert result["status"] == "Failed" and result["errorCode"] == code


async def test_domain_rules_refuse_new_emails(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocked and not-allowed domains are refused before any write."""
    from shared.platform.settings import reset_settings

    monkeypatch.setenv("BLOCKED_EMAIL_DOMAINS", "gmail.com")
    monkeypatch.setenv("ALLOWED_EMAIL_DOMAINS", "contoso.com,gmail.com")
    reset_settings()
    await app.deliver({"userId": LEE, "newEmail": "lee@gmail.com", "requestId": "blocked"})
    await app.deliver({"userId": LEE, "newEmail": "lee@fabrikam.example", "requestId": "not-allowed"})
    codes = {p["requestId"]: p["error"]["code"] for p in app.poison()}
    assert codes == {"blocked": "EmailDomainBlocked", "not-allowed": "EmailDomainNotAllowed"}
    assert app.graph.invitations() == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"userid": "x"}',
        b'{"userId": "5e0c1d2a-0001-4a5b-9c3d-000000000001", "email": "a@b.com"}',
        b"not json",
        b'{"userId": "5e0c1d2a-0001-4a5b-9c3d-000000000001", "dryRun": "yes"}',
    ],
)
async def test_invalid_messages_are_poisoned_on_first_delivery(app: App, raw: bytes) -> None:
    """Bad input ends in poison at once with InvalidRequest, not after five tries."""
    await app.deliver(raw, dequeue_count=1)
    [poisoned] = app.poison()
    assert poisoned["error"]["code"] == "InvalidRequest"
    assert poisoned["error"]["attempts"] == 1
    assert app.graph.journal() == []


async def test_dry_run_reads_but_writes_nothing(app: App) -> None:
    await app.deliver({"userId": BRIAN, "newEmail": "brian@new.example", "dryRun": True, "requestId": "dry"})
    record = await app.status("dry")
    assert record is not None and record.status is Status.DRY_RUN_PASSED
    assert {e["method"] for e in app.graph.journal()} == {"GET"}
    assert app.graph.user(BRIAN)["mail"] != "brian@new.example"


async def test_retry_after_is_honoured(app: App) -> None:
    """A 429 with a fractional Retry-After delays the re-send by at least that long."""
    app.graph.add_fault(method="POST", path="^/invitations$", status=429, retry_after="1.3", times=1)
    await app.deliver({"userId": ADELE, "requestId": "throttled"})
    posts = app.graph.journal(method="POST")
    assert [p["status"] for p in posts] == [429, 201]
    assert posts[1]["ts"] - posts[0]["ts"] >= 1.3
    record = await app.status("throttled")
    assert record is not None and record.status is Status.SUCCEEDED


async def test_transient_failures_recover(app: App) -> None:
    """Two 503s on the user read and a dropped connection are retried to success."""
    app.graph.add_fault(method="GET", path="^/users/", status=503, times=2)
    app.graph.add_fault(method="GET", path="RoleAssignments", status=None, drop=True, times=1)
    await app.deliver({"userId": ADELE, "requestId": "flaky"})
    record = await app.status("flaky")
    assert record is not None and record.status is Status.SUCCEEDED
    assert len(app.graph.invitations()) == 1


async def test_ambiguous_504_is_resolved_by_read_back_without_resending(app: App) -> None:
    """A 504 after Graph processed the invitation must not cause a second invitation."""
    app.graph.add_fault(method="POST", path="^/invitations$", status=504, after_processing=True, times=1)
    await app.deliver({"userId": ADELE, "requestId": "ambiguous"})
    assert len(app.graph.invitations()) == 1
    assert len(app.graph.journal(method="POST")) == 1
    record = await app.status("ambiguous")
    assert record is not None and record.status is Status.SUCCEEDED
    assert record.history[-1].get("confirmedByReadBack") is True


async def test_unprocessed_504_is_sent_again(app: App) -> None:
    """A 504 that never reached the invitation service is followed by one real send."""
    app.graph.add_fault(method="POST", path="^/invitations$", status=504, times=1)
    await app.deliver({"userId": ADELE, "requestId": "retry-504"})
    assert [p["status"] for p in app.graph.journal(method="POST")] == [504, 201]
    assert len(app.graph.invitations()) == 1


async def test_transient_failure_is_handed_back_then_poisoned_with_history(app: App) -> None:
    """Transient failures raise for the host; on the last delivery they poison with history."""
    app.graph.add_fault(method="POST", path="^/invitations$", status=503, times=None)
    body = {"userId": ADELE, "requestId": "outage"}
    with pytest.raises(Exception, match="unavailable"):
        await app.deliver(body, message_id="m-1", dequeue_count=1)
    assert app.poison() == []
    await app.deliver(body, message_id="m-1", dequeue_count=app.settings.max_dequeue_count)
    [poisoned] = await app.run_poison_handler()
    assert poisoned["error"]["code"] == "GraphUnavailable"
    assert poisoned["error"]["permanent"] is False
    events = [h["event"] for h in poisoned["history"]]
    assert events.count("claimed") == 2 and "transientFailure" in events
    record = await app.status("outage")
    assert record is not None and record.status is Status.FAILED and record.attempts == 2


async def test_duplicate_delivery_sends_one_invitation(app: App) -> None:
    """Redelivering a finished request does nothing."""
    body = {"userId": ADELE, "requestId": "dup"}
    await app.deliver(body, message_id="a")
    await app.deliver(body, message_id="b")
    assert len(app.graph.invitations()) == 1


async def test_concurrent_deliveries_send_one_invitation(app: App) -> None:
    """Two deliveries of one requestId at the same moment send one invitation."""
    app.graph.set_latency(150)
    body = {"userId": ADELE, "requestId": "race"}
    await asyncio.gather(*(app.deliver(body, message_id=f"m{i}") for i in range(4)))
    assert len(app.graph.invitations()) == 1
    record = await app.status("race")
    assert record is not None and record.status is Status.SUCCEEDED


async def test_redelivery_after_crash_mid_invite_checks_before_sending(app: App) -> None:
    """If an earlier delivery died after Graph took the invitation, the next one does not resend."""
    app.graph.add_fault(method="POST", path="^/invitations$", status=None, drop=True, after_processing=True, times=None)
    app.graph.add_fault(method="GET", path=f"^/users/{ADELE}$", status=503, times=None)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the outage surfaces as our transient error
        await app.deliver({"userId": ADELE, "requestId": "crash"}, message_id="m", dequeue_count=1)
    app.graph.clear_faults()
    await app.deliver({"userId": ADELE, "requestId": "crash"}, message_id="m", dequeue_count=2)
    assert len(app.graph.invitations()) == 1
    record = await app.status("crash")
    assert record is not None and record.status is Status.SUCCEEDED


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xfe garbage",
        b"",
        b"[]",
        b"{}",
        b'{"request": 5, "error": "x"}',
        b'{"error": {}, "request": null}',
        b'{"userId": 12}',
    ],
)
async def test_poison_handler_survives_garbage(app: App, garbage: bytes) -> None:
    """The poison handler never raises, whatever lands in the poison queue."""
    from shared.reset.worker import handle_poison_message

    await handle_poison_message(garbage, message_id="g1")


async def test_no_log_record_leaks_emails_tokens_or_redeem_urls(app: App, caplog: pytest.LogCaptureFixture) -> None:
    """Safety rule 6 across a full run with an email switch, a refusal and a throttle."""
    caplog.set_level(logging.DEBUG)
    app.graph.add_fault(method="POST", path="^/invitations$", status=429, retry_after="0.2", times=1)
    await app.deliver({"email": "brian.j@tailspin.example", "newEmail": "brian@new.example"})
    await app.deliver({"userId": LEE, "newEmail": "taken@contoso.com"})
    await app.deliver({"email": "adele.vance@contoso.com", "sendInvitationMessage": False})
    await app.run_poison_handler()
    text = unquote("\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records))
    for secret in (
        "brian@new.example",
        "brian.j@tailspin.example",
        "taken@contoso.com",
        "adele.vance@contoso.com",
        "emulator-placeholder-token",
        "redeem?",
    ):
        assert secret not in text, secret
    assert any("sent to poison" in r.getMessage() for r in caplog.records)


async def test_host_poisoned_copy_without_request_id_is_linked_by_its_body(app: App) -> None:
    """A raw poison copy (new message id, no requestId) still closes the original's record."""
    app.graph.add_fault(method="GET", path=f"^/users/{ADELE}$", status=503, times=None)
    body = f'{{"userId": "{ADELE}", "ticketId": "INC-HASH"}}'.encode()
    with pytest.raises(Exception, match="unavailable"):
        await app.deliver(body, message_id="original-id", dequeue_count=1)
    from shared.reset.worker import handle_poison_message

    await handle_poison_message(body, message_id="poison-copy-id")
    record = await app.status("original-id")
    assert record is not None and record.status is Status.FAILED
    assert record.error_code == "DeliveryFailed" and "GraphUnavailable" in (record.error_message or "")
    [result] = app.results()
    assert result["requestId"] == "original-id" and result["ticketId"] == "INC-HASH"


async def test_queue_message_with_a_callback_off_the_allowlist_is_refused(app: App) -> None:
    """Queue producers meet the same callback rule as HTTP callers: refused before any Graph call."""
    await app.deliver({"userId": ADELE, "callbackUrl": "https://attacker.example.com/hook"})
    [poisoned] = app.poison()
    assert poisoned["error"]["code"] == "InvalidRequest" and "callbackUrl" in poisoned["error"]["message"]
    assert app.graph.journal() == []
