"""Least power, ownership and secrets at rest, against real Azurite and the Graph emulator.

Each test sets the security settings it is about (the shared test environment grants a fully
trusted caller) and breaks the rule on purpose: a key that lacks a capability, a forged queue
message, another caller's request id, a look-alike callback host, a Graph message with an address.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from azure.storage.queue import QueueClient

import function_app
from shared.platform.settings import reset_settings
from shared.reset.retention import purge
from shared.reset.runtime import close_runtime, get_runtime, reset_runtime
from shared.reset.status import Status, StatusRecord, utcnow
from tests.integration.support import ADELE, BRIAN, LEE, App
from tests.integration.test_http_api import body_of, call, deliver_queued, queued, submit

OWNER = "0a0a0a0a-1111-4222-8333-000000000001"
STRANGER = "0b0b0b0b-1111-4222-8333-000000000002"
AUDITOR = "0c0c0c0c-1111-4222-8333-000000000003"
SAFE_DEFAULTS = {"KEY_CAPABILITIES": "", "QUEUE_CAPABILITIES": ""}


async def configure(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Apply settings before the app builds its runtime (or rebuild it)."""
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    await close_runtime()
    reset_runtime()
    reset_settings()


def as_caller(oid: str, *roles: str) -> dict[str, str]:
    """The X-MS-CLIENT-PRINCIPAL App Service authentication would send for a token with these roles."""
    data = {
        "auth_typ": "aad",
        "claims": [{"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": oid}]
        + [{"typ": "roles", "val": role} for role in roles],
    }
    return {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps(data).encode()).decode()}


async def read(request_id: str, headers: dict[str, str] | None = None) -> Any:
    return await call(
        function_app.get_reset,
        "GET",
        f"/api/resets/{request_id}",
        headers=headers,
        route={"requestId": request_id},
    )


async def failed_with(app: App, request_id: str) -> StatusRecord:
    """Run the poison trigger and return the request's record, which must be Failed with a code."""
    await app.run_poison_handler()
    record = await app.status(request_id)
    assert record is not None and record.status is Status.FAILED and record.error_code
    return record


# --- capabilities -----------------------------------------------------------------------------


async def test_a_key_without_the_email_switch_capability_cannot_switch_an_email(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Safe defaults: newEmail over HTTP is a 403 naming Reset.SwitchEmail; nothing is enqueued."""
    await configure(monkeypatch, **SAFE_DEFAULTS)
    response = await submit({"userId": BRIAN, "newEmail": "brian@attacker.example"})
    assert response.status_code == 403 and response.mimetype == "application/problem+json"
    problem = body_of(response)
    assert "Reset.SwitchEmail" in problem["detail"]
    assert [e["field"] for e in problem["errors"]] == ["newEmail"]
    assert queued(app) == []
    plain = await submit({"userId": ADELE})
    assert plain.status_code == 202


async def test_on_the_queue_a_switch_without_the_capability_ends_failed_with_a_code(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue message asking for newEmail, with the queue's default grant: Failed, nothing written."""
    await configure(monkeypatch, **SAFE_DEFAULTS)
    await app.deliver({"email": "brian.j@tailspin.example", "newEmail": "brian@attacker.example", "requestId": "q1"})
    record = await failed_with(app, "q1")
    assert record.error_code == "CapabilityMissing" and "Reset.SwitchEmail" in (record.error_message or "")
    assert app.graph.journal(method="PATCH") == [] and app.graph.invitations() == []
    assert app.graph.user(BRIAN)["mail"] != "brian@attacker.example"


async def test_intakes_grant_reaches_the_worker_but_a_forged_message_does_not_get_it(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key granted the switch gets it done; a queue message reusing a granted requestId does not."""
    await configure(monkeypatch, KEY_CAPABILITIES="Reset.Submit,Reset.SwitchEmail", QUEUE_CAPABILITIES="")
    ok = await submit({"email": "brian.j@tailspin.example", "newEmail": "brian@new.example", "requestId": "granted"})
    assert ok.status_code == 202
    await deliver_queued(app)
    done = await app.status("granted")
    assert done is not None and done.status is Status.SUCCEEDED and app.graph.user(BRIAN)["mail"] == "brian@new.example"

    assert (await submit({"userId": LEE, "requestId": "hijack"})).status_code == 202
    QueueClient.from_connection_string(app.connection_string, app.settings.request_queue).clear_messages()
    await app.deliver({"userId": LEE, "newEmail": "lee@attacker.example", "requestId": "hijack"})
    record = await failed_with(app, "hijack")
    assert record.error_code == "CapabilityMissing" and "QUEUE_CAPABILITIES" in (record.error_message or "")
    assert app.graph.user(LEE)["mail"] != "lee@attacker.example"


async def test_cc_or_new_email_outside_the_allowed_domains_is_refused(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every address the invitation touches obeys ALLOWED_EMAIL_DOMAINS, over HTTP and on the queue."""
    await configure(monkeypatch, ALLOWED_EMAIL_DOMAINS="contoso.com,new.example")
    switch = await submit({"userId": BRIAN, "newEmail": "brian@gmail.example"})
    cc = await submit({"userId": ADELE, "ccRecipients": ["spy@attacker.example"]})
    assert (switch.status_code, cc.status_code) == (400, 400)
    assert [e["field"] for e in body_of(switch)["errors"]] == ["newEmail"]
    assert [e["field"] for e in body_of(cc)["errors"]] == ["ccRecipients[0]"]
    assert "contoso.com" not in cc.get_body().decode()  # the setting is named, its value is not
    assert queued(app) == []

    await app.deliver({"userId": ADELE, "ccRecipients": ["spy@attacker.example"], "requestId": "cc"})
    assert (await failed_with(app, "cc")).error_code == "EmailDomainNotAllowed"
    assert app.graph.invitations() == []


async def test_a_redirect_off_the_allowlist_is_refused(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only allowlisted redirects reach Graph; the default allowlist is the default redirect."""
    await configure(monkeypatch, REDIRECT_ALLOWED_URLS="https://myapps.microsoft.com,https://apps.contoso.com/start")
    refused = await submit({"userId": ADELE, "inviteRedirectUrl": "https://phish.example/login"})
    assert refused.status_code == 400 and body_of(refused)["errors"][0]["field"] == "inviteRedirectUrl"
    await app.deliver({"userId": ADELE, "inviteRedirectUrl": "https://phish.example/login", "requestId": "r-bad"})
    assert (await failed_with(app, "r-bad")).error_code == "RedirectNotAllowed"
    await app.deliver({"userId": ADELE, "inviteRedirectUrl": "https://apps.contoso.com/start/x", "requestId": "r-ok"})
    [sent] = app.graph.invitations()
    assert sent["body"]["inviteRedirectUrl"] == "https://apps.contoso.com/start/x"


async def test_a_custom_message_body_is_refused_with_a_clear_problem(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Graph drops it for app-only invitations: refused at intake and on the queue, unless opted in."""
    response = await submit({"userId": ADELE, "customizedMessageBody": "Welcome back"})
    assert response.status_code == 400
    [error] = body_of(response)["errors"]
    assert error == {
        "field": "customizedMessageBody",
        "message": "customizedMessageBody is dropped by Graph for app-only invitations; "
        "send your own email with the redeem URL instead",
    }
    await app.deliver({"userId": ADELE, "customizedMessageBody": "Welcome back", "requestId": "body"})
    assert (await failed_with(app, "body")).error_code == "CustomMessageNotSupported"
    await configure(monkeypatch, ALLOW_CUSTOM_MESSAGE_BODY="true")
    both = await submit({"userId": ADELE, "customizedMessageBody": "Hi", "messageLanguage": "de-DE"})
    assert both.status_code == 400 and body_of(both)["errors"][0]["field"] == "messageLanguage"
    assert (await submit({"userId": ADELE, "customizedMessageBody": "Hi"})).status_code == 202


# --- callers and ownership ----------------------------------------------------------------------


async def test_without_a_principal_entra_mode_answers_401(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    await configure(monkeypatch, REQUIRE_ENTRA_ID="true")
    response = await submit({"userId": ADELE})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert response.mimetype == "application/problem+json" and queued(app) == []


async def test_requested_by_is_the_principals_and_the_callers_value_is_kept(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit trail cannot be forged: requestedBy is the token's object id, onBehalfOf what was written."""
    await configure(monkeypatch, REQUIRE_ENTRA_ID="true")
    response = await submit(
        {"userId": ADELE, "requestId": "audit", "requestedBy": "the CEO"}, headers=as_caller(OWNER, "Reset.Submit")
    )
    assert response.status_code == 202
    await deliver_queued(app)
    [result] = app.results()
    assert (result["requestedBy"], result["onBehalfOf"]) == (OWNER, "the CEO")
    record = await app.status("audit")
    assert record is not None and record.submitted_by == f"entra:{OWNER}"


async def test_another_callers_status_reads_as_404(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stranger gets exactly the answer of an unknown id; the owner and a Reset.ReadAll caller see it."""
    await configure(monkeypatch, REQUIRE_ENTRA_ID="true")
    assert (
        await submit({"userId": ADELE, "requestId": "mine"}, headers=as_caller(OWNER, "Reset.Submit"))
    ).status_code == 202
    stranger = await read("mine", as_caller(STRANGER, "Reset.Submit"))
    unknown = await read("never-was", as_caller(STRANGER, "Reset.Submit"))
    assert stranger.status_code == unknown.status_code == 404
    assert stranger.get_body() == unknown.get_body()
    assert (await read("mine", as_caller(OWNER))).status_code == 202
    assert (await read("mine", as_caller(AUDITOR, "Reset.ReadAll"))).status_code == 202
    taken = await submit({"userId": LEE, "requestId": "mine"}, headers=as_caller(STRANGER, "Reset.Submit"))
    assert taken.status_code == 409 and "Adele" not in taken.get_body().decode()


async def test_operating_behind_entra_id_needs_the_operate_role(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    await configure(monkeypatch, REQUIRE_ENTRA_ID="true")
    denied = await call(function_app.list_poison, "GET", "/api/poison", headers=as_caller(OWNER, "Reset.Submit"))
    allowed = await call(function_app.list_poison, "GET", "/api/poison", headers=as_caller(OWNER, "Reset.Operate"))
    assert (denied.status_code, allowed.status_code) == (403, 200)
    assert "Reset.Operate" in body_of(denied)["detail"]


# --- the redeem URL -----------------------------------------------------------------------------


@pytest.fixture
async def hook(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, list[tuple[str, Any]]]]:
    """A local https receiver: /hook records what it gets, /moved answers 302 to /hook."""
    monkeypatch.setattr("shared.reset.callbacks.TLS_VERIFY", tls[1])
    monkeypatch.setattr("shared.reset.callbacks.DELAYS", (0.01,))
    received: list[tuple[str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        received.append((request.path, await request.text()))
        return web.Response(status=200)

    async def moved(request: web.Request) -> web.Response:
        received.append((request.path, None))
        raise web.HTTPFound("/hook")

    server = web.Application()
    server.router.add_post("/hook", record)
    server.router.add_post("/moved", moved)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls[0])
    await site.start()
    yield f"https://127.0.0.1:{runner.addresses[0][1]}", received
    await runner.cleanup()


async def test_the_redeem_url_is_shown_once_to_an_allowed_caller_and_nowhere_else(
    app: App,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    hook: tuple[str, list[tuple[str, Any]]],
) -> None:
    """Shown once to its owner holding Reset.ReadRedeemUrl; never in results, callbacks, reports, logs or storage."""
    base, received = hook
    monkeypatch.setattr("shared.reset.callbacks.PRIVATE_ADDRESSES_ALLOWED", True)
    await configure(monkeypatch, REQUIRE_ENTRA_ID="true", CALLBACK_ALLOWED_HOSTS="127.0.0.1")
    owner = as_caller(OWNER, "Reset.Submit", "Reset.ReadRedeemUrl")
    body = {"userId": ADELE, "requestId": "link", "sendInvitationMessage": False, "callbackUrl": f"{base}/hook"}
    caplog.set_level(logging.DEBUG)
    assert (await submit(body, headers=owner)).status_code == 202
    await deliver_queued(app)
    await app.run_callbacks()
    record = await app.status("link")
    assert record is not None and record.redeem_url
    link = record.redeem_url

    first = body_of(await read("link", owner))
    second = body_of(await read("link", owner))
    assert first["redeemUrl"] == link and "redeemUrl" not in second
    stored = await app.status("link")
    assert stored is not None and stored.redeem_url is None
    assert any(e["event"] == "redeemUrlHandedOver" for e in stored.history)

    results = app.results()
    report = io.StringIO()
    from shared.bulk.outcomes import export_report

    runtime = await get_runtime()
    await export_report(runtime.status, report, since=utcnow() - timedelta(hours=1))
    assert [path for path, _ in received] == ["/hook"]
    for where, text in [
        ("results", json.dumps(results)),
        ("callback", json.dumps(received)),
        ("report", report.getvalue()),
        ("logs", caplog.text),
        ("record", json.dumps(stored.history) + (stored.request_json or "")),
    ]:
        assert link not in text and "redeem?rd=" not in text, where
    assert [row["requestId"] for row in csv.DictReader(io.StringIO(report.getvalue()))] == ["link"]


async def test_a_caller_without_read_redeem_url_never_sees_it(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    await configure(monkeypatch, REQUIRE_ENTRA_ID="true")
    owner = as_caller(OWNER, "Reset.Submit")
    await submit({"userId": ADELE, "requestId": "nolink", "sendInvitationMessage": False}, headers=owner)
    await deliver_queued(app)
    assert "redeemUrl" not in body_of(await read("nolink", owner))
    record = await app.status("nolink")
    assert record is not None and record.redeem_url  # kept for a caller who may see it


async def test_a_redeem_url_is_erased_unshown_once_the_guest_is_no_longer_pending(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest who redeemed already does not need the link: nobody gets it any more."""
    await configure(monkeypatch, REQUIRE_ENTRA_ID="true")
    owner = as_caller(OWNER, "Reset.Submit", "Reset.ReadRedeemUrl")
    await submit({"userId": ADELE, "requestId": "late", "sendInvitationMessage": False}, headers=owner)
    await deliver_queued(app)
    app.graph.put_user({**app.graph.user(ADELE), "externalUserState": "Accepted"})
    assert "redeemUrl" not in body_of(await read("late", owner))
    record = await app.status("late")
    assert record is not None and record.redeem_url is None


# --- data at rest, answers, callbacks -----------------------------------------------------------


async def test_poison_envelopes_and_records_keep_no_secrets_or_graphs_addresses(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A callback signature and an address in Graph's message reach neither the poison queue nor the table."""
    await configure(monkeypatch, CALLBACK_ALLOWED_HOSTS="*.callbacks.invalid")
    app.graph.add_fault(
        method="POST",
        path="^/invitations$",
        status=400,
        code="BadRequest",
        message="The invited user adele.vance@contoso.com cannot be invited.",
        times=None,
    )
    signed = "https://flow.callbacks.invalid/hook?api-version=1&sig=TopSecretSignature"
    await app.deliver({"userId": ADELE, "requestId": "leaky", "callbackUrl": signed})
    envelopes = await app.run_poison_handler()
    record = await app.status("leaky")
    assert record is not None and record.status is Status.FAILED
    for where, text in [
        ("envelope", json.dumps(envelopes)),
        ("request copy", record.request_json or ""),
        ("error", record.error_message or ""),
        ("history", json.dumps(record.history)),
        ("result", json.dumps(app.results())),
    ]:
        assert "TopSecretSignature" not in text and "adele.vance@contoso.com" not in text, where
    assert "flow.callbacks.invalid/hook" in (record.request_json or "")  # still says where it went
    assert record.callback_url == signed  # the live copy the outcome is delivered with


async def test_a_succeeded_record_keeps_no_copy_of_the_request(app: App) -> None:
    await app.deliver({"email": "adele.vance@contoso.com", "requestId": "done"})
    record = await app.status("done")
    assert record is not None and record.status is Status.SUCCEEDED and record.request_json is None


async def test_problem_answers_never_echo_setting_values(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken settings: 503 problems and health name the setting, never what it holds."""
    await configure(monkeypatch, GRAPH_BASE_URL="https://graph.internal-secret.example/v1.0")
    answers = [
        await submit({"userId": ADELE}),
        await read("anything"),
        await call(function_app.health, "GET", "/api/health"),
    ]
    for response in answers:
        text = response.get_body().decode()
        assert response.status_code == 503 and "GRAPH_BASE_URL" in text
        assert "internal-secret" not in text


async def test_callbacks_do_not_follow_redirects_or_reach_private_addresses(
    app: App, monkeypatch: pytest.MonkeyPatch, hook: tuple[str, list[tuple[str, Any]]]
) -> None:
    """A 302 from the receiver is not followed; a loopback callback is not called at all."""
    base, received = hook
    await configure(monkeypatch, CALLBACK_ALLOWED_HOSTS="127.0.0.1")
    await app.deliver({"userId": ADELE, "requestId": "private", "callbackUrl": f"{base}/hook"})
    assert await app.run_callbacks() == 1
    assert received == []  # 127.0.0.1 is on the allowlist, but it is not a public address
    refused = await app.status("private")
    assert refused is not None and refused.callback_status == "Failed"
    monkeypatch.setattr("shared.reset.callbacks.PRIVATE_ADDRESSES_ALLOWED", True)
    await app.deliver({"userId": LEE, "requestId": "moved", "callbackUrl": f"{base}/moved"})
    await app.run_callbacks()
    assert [path for path, _ in received] == ["/moved"]
    outcome = await app.status("moved")
    assert outcome is not None and outcome.status is Status.SUCCEEDED


# --- retention -----------------------------------------------------------------------------------


async def test_retention_purges_finished_records_and_unclaimed_links(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records finished RETENTION_DAYS ago go; newer ones and running ones stay; old links are erased."""
    await configure(monkeypatch, RETENTION_DAYS="30", REDEEM_URL_HOURS="72")
    store = (await get_runtime()).status
    now = utcnow()

    async def put(request_id: str, status: Status, finished_days_ago: float | None, link: str | None = None) -> None:
        finished = None if finished_days_ago is None else now - timedelta(days=finished_days_ago)
        await store.put(StatusRecord(request_id=request_id, status=status, finished_at=finished, redeem_url=link))

    await put("old-failed", Status.FAILED, 31)
    await put("old-done", Status.SUCCEEDED, 40, link="https://login.example/redeem?rd=old")
    await put("recent", Status.SUCCEEDED, 29)
    await put("stale-link", Status.SUCCEEDED, 4, link="https://login.example/redeem?rd=stale")
    await put("fresh-link", Status.SUCCEEDED, 1, link="https://login.example/redeem?rd=fresh")
    await put("running", Status.PROCESSING, None)
    purged = await purge(await get_runtime(), now=now)
    assert (purged.records, purged.redeem_urls) == (2, 1)
    for gone in ("old-failed", "old-done"):
        assert await store.get(gone) is None
    kept = {rid: await store.get(rid) for rid in ("recent", "stale-link", "fresh-link", "running")}
    assert all(record is not None for record in kept.values())
    assert kept["stale-link"].redeem_url is None  # type: ignore[union-attr]
    assert kept["fresh-link"].redeem_url  # type: ignore[union-attr]
