"""The HTTP API called the way Microsoft documents for unit tests (func.HttpRequest), on real Azurite."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import azure.functions as func
import pytest
from aiohttp import web
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient
from openapi_spec_validator import validate

import function_app
from shared.platform.settings import reset_settings
from tests.integration.support import ADELE, LEE, App

BASE = "http://localhost:7071"


async def call(
    fn: Any,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    route: dict[str, str] | None = None,
) -> func.HttpResponse:
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    request = func.HttpRequest(
        method, f"{BASE}{path}", headers=all_headers, params=params or {}, route_params=route or {}, body=raw
    )
    response: func.HttpResponse = await fn.build().get_user_function()(request)
    return response


def body_of(response: func.HttpResponse) -> Any:
    return json.loads(response.get_body())


def queued(app: App) -> list[dict[str, Any]]:
    queue = QueueClient.from_connection_string(app.connection_string, app.settings.request_queue)
    try:
        return [json.loads(m.content) for m in queue.peek_messages(max_messages=32)]
    except ResourceNotFoundError:  # refused before the app ever touched storage
        return []


async def submit(body: Any, **kw: Any) -> func.HttpResponse:
    return await call(function_app.submit_resets, "POST", "/api/resets", body, **kw)


async def status(request_id: str) -> func.HttpResponse:
    return await call(function_app.get_reset, "GET", f"/api/resets/{request_id}", route={"requestId": request_id})


async def deliver_queued(app: App) -> None:
    """Run the queue trigger's handler on every queued request, as the host would."""
    queue = QueueClient.from_connection_string(app.connection_string, app.settings.request_queue)
    for message in queue.receive_messages(max_messages=32, visibility_timeout=60):
        await app.deliver(message.content.encode(), message_id=message.id)
        queue.delete_message(message)


async def test_single_request_is_accepted_with_location(app: App) -> None:
    """202 with Location and Retry-After; recorded Accepted and enqueued with its requestId."""
    response = await submit({"userId": ADELE, "requestId": "http-1", "ticketId": "T1"})
    assert response.status_code == 202
    assert response.headers["Location"] == f"{BASE}/api/resets/http-1"
    assert int(response.headers["Retry-After"]) > 0
    assert body_of(response)["accepted"][0]["statusUrl"].endswith("/api/resets/http-1")
    [message] = queued(app)
    assert message == {"userId": ADELE, "requestId": "http-1", "ticketId": "T1"}
    polled = await status("http-1")
    assert polled.status_code == 202 and body_of(polled)["status"] == "Accepted"


async def test_status_goes_from_202_to_200_across_a_real_reset(app: App) -> None:
    """The Logic Apps polling contract: 202 while pending, then 200 with the outcome."""
    await submit({"userId": ADELE, "requestId": "poll", "sendInvitationMessage": False})
    assert (await status("poll")).status_code == 202
    await deliver_queued(app)
    done = await status("poll")
    assert done.status_code == 200
    outcome = body_of(done)
    assert outcome["status"] == "Succeeded" and outcome["invitationId"]
    assert outcome["redeemUrl"].startswith("https://")  # no email was sent: the admin needs the link


async def test_redeem_url_hidden_when_microsoft_sends_the_email(app: App) -> None:
    await submit({"userId": ADELE, "requestId": "mailed", "sendInvitationMessage": True})
    await deliver_queued(app)
    outcome = body_of(await status("mailed"))
    assert outcome["status"] == "Succeeded" and "redeemUrl" not in outcome


async def test_batch_is_all_or_nothing(app: App) -> None:
    """Two bad items refuse the batch: each is listed by index and field, nothing is enqueued."""
    response = await submit(
        {
            "requests": [
                {"userId": ADELE},
                {"userId": "nope"},
                {"email": "a@contoso.com", "dryRun": "yes"},
            ]
        }
    )
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    errors = {(e["index"], e["field"]) for e in body_of(response)["errors"]}
    assert errors == {(1, "requests[1].userId"), (2, "requests[2].dryRun")}
    assert queued(app) == []


async def test_batch_that_names_a_guest_twice_is_refused(app: App) -> None:
    """The same user twice in one batch (any case, different requestIds): 400 naming both, nothing enqueued."""
    response = await submit(
        {
            "requests": [
                {"userId": ADELE, "requestId": "a"},
                {"userId": LEE},
                {"userId": ADELE.upper(), "newEmail": "x@new.example"},
            ]
        }
    )
    assert response.status_code == 400
    [error] = body_of(response)["errors"]
    assert (error["index"], error["field"]) == (2, "requests[2].userId")
    assert "the same user as requests[0]" in error["message"]
    assert queued(app) == []


async def test_valid_batch_is_enqueued(app: App) -> None:
    response = await submit(
        {"requests": [{"userId": ADELE}, {"userId": LEE, "dryRun": True}]}, headers={"Idempotency-Key": "batch-7"}
    )
    assert response.status_code == 202 and "Location" not in response.headers
    ids = [item["requestId"] for item in body_of(response)["accepted"]]
    assert ids == ["batch-7.0", "batch-7.1"]
    assert sorted(m["requestId"] for m in queued(app)) == ids


async def test_resubmission_returns_the_existing_request(app: App) -> None:
    """Same requestId or Idempotency-Key: the existing record, no second message."""
    first = await submit({"userId": ADELE, "requestId": "same"})
    again = await submit({"userId": ADELE, "requestId": "same"})
    keyed = [await submit({"userId": LEE}, headers={"Idempotency-Key": "key-1"}) for _ in range(2)]
    assert body_of(first)["accepted"][0]["duplicate"] is False
    assert body_of(again)["accepted"][0]["duplicate"] is True
    assert [body_of(r)["accepted"][0]["duplicate"] for r in keyed] == [False, True]
    assert sorted(m["requestId"] for m in queued(app)) == ["key-1", "same"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"body": b"x" * (1024 * 1024 + 1)}, 413),
        ({"body": {"requests": [{"userId": ADELE}] * 1001}}, 413),
        ({"body": b"userId=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415),
        ({"body": b"{not json"}, 400),
        ({"body": [1, 2]}, 400),
        ({"body": {"requests": [], "extra": 1}}, 400),
    ],
)
async def test_bad_submissions_get_problem_bodies(app: App, kwargs: dict[str, Any], expected: int) -> None:
    response = await submit(kwargs.pop("body"), **kwargs)
    assert response.status_code == expected
    assert response.mimetype == "application/problem+json"
    assert body_of(response)["status"] == expected
    assert queued(app) == []


async def test_other_methods_get_405(app: App) -> None:
    response = await call(function_app.submit_resets, "GET", "/api/resets")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    assert body_of(response)["title"] == "Method not allowed"


async def test_unknown_request_is_404(app: App) -> None:
    response = await status("never-submitted")
    assert response.status_code == 404 and response.mimetype == "application/problem+json"


async def test_callback_outside_the_allowlist_is_refused(app: App) -> None:
    response = await submit({"userId": ADELE, "callbackUrl": "https://attacker.example.com/hook"})
    assert response.status_code == 400
    assert body_of(response)["errors"][0]["field"] == "callbackUrl"


@pytest.fixture
async def receiver(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, list[dict[str, Any]], list[int]]]:
    """A local https callback receiver that fails its first call with 503."""
    monkeypatch.setattr("shared.reset.callbacks.TLS_VERIFY", tls[1])
    monkeypatch.setattr("shared.reset.callbacks.PRIVATE_ADDRESSES_ALLOWED", True)  # the receiver is on loopback
    received: list[dict[str, Any]] = []
    answers = [503]

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=answers.pop(0) if answers else 200)

    server = web.Application()
    server.router.add_post("/hook", hook)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls[0])
    await site.start()
    port = runner.addresses[0][1]
    yield f"https://127.0.0.1:{port}/hook", received, answers
    await runner.cleanup()


async def test_callback_is_delivered_with_retries(
    app: App, receiver: tuple[str, list[dict[str, Any]], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome is stored first, then POSTed from the callback queue; a 503 from it is retried."""
    url, received, _ = receiver
    monkeypatch.setenv("CALLBACK_ALLOWED_HOSTS", "127.0.0.1")
    monkeypatch.setattr("shared.reset.callbacks.DELAYS", (0.05,))
    reset_settings()
    assert (await submit({"userId": ADELE, "requestId": "cb", "callbackUrl": url})).status_code == 202
    await deliver_queued(app)
    assert received == [], "nothing is POSTed on the reset's own path"
    assert await app.run_callbacks() == 1
    assert [r["requestId"] for r in received] == ["cb", "cb"]
    assert received[-1]["status"] == "Succeeded"
    record = await app.status("cb")
    assert record is not None and record.callback_status == "Delivered"


async def test_callback_failure_never_changes_the_outcome(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver that cannot be reached leaves the outcome as it is; the callback is tried again later."""
    monkeypatch.setenv("CALLBACK_ALLOWED_HOSTS", "127.0.0.1")
    monkeypatch.setattr("shared.reset.callbacks.PRIVATE_ADDRESSES_ALLOWED", True)  # the dead port is on loopback
    monkeypatch.setattr("shared.reset.callbacks.DELAYS", (0.01,))
    reset_settings()
    await submit({"userId": ADELE, "requestId": "cb-down", "callbackUrl": "https://127.0.0.1:9/hook"})
    await deliver_queued(app)
    await app.run_callbacks()
    assert body_of(await status("cb-down"))["status"] == "Succeeded"
    record = await app.status("cb-down")
    assert record is not None and record.callback_status is None
    events = [e["event"] for e in record.history]
    assert "succeeded" in events and not any(e.startswith("callback") for e in events)
    callbacks = QueueClient.from_connection_string(app.connection_string, app.settings.callback_queue)
    assert callbacks.get_queue_properties().approximate_message_count == 1, "tried again later, delayed"


def principal(*roles: str, **claims: str) -> str:
    data = {
        "auth_typ": "aad",
        "claims": [{"typ": k, "val": v} for k, v in claims.items()] + [{"typ": "roles", "val": r} for r in roles],
    }
    return base64.b64encode(json.dumps(data).encode()).decode()


FLOW_OID = "0f0f0f0f-1111-4222-8333-444444444444"


async def test_allowed_callers_gate_and_requested_by(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ALLOWED_CALLERS set, outsiders get 403 and an insider's object id becomes requestedBy."""
    monkeypatch.setenv("ALLOWED_CALLERS", FLOW_OID)
    reset_settings()
    outsider = await submit(
        {"userId": ADELE},
        headers={"X-MS-CLIENT-PRINCIPAL": principal("Reset.Submit", oid="9e9e9e9e-0000-4000-8000-000000000009")},
    )
    assert outsider.status_code == 403
    insider = await submit(
        {"userId": ADELE, "requestId": "by-flow", "requestedBy": "ticket requester"},
        headers={"X-MS-CLIENT-PRINCIPAL": principal("Reset.Submit", oid=FLOW_OID)},
    )
    assert insider.status_code == 202
    assert queued(app)[0]["requestedBy"] == FLOW_OID
    assert queued(app)[0]["onBehalfOf"] == "ticket requester"


async def test_health_reports_storage(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = await call(function_app.health, "GET", "/api/health")
    assert ok.status_code == 200 and body_of(ok)["status"] == "healthy"
    from shared.reset.runtime import close_runtime

    await close_runtime()
    monkeypatch.setenv(
        "AzureWebJobsStorage",
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=a2V5;TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
        "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;",
    )
    reset_settings()
    broken = await asyncio.wait_for(call(function_app.health, "GET", "/api/health"), 60)
    assert broken.status_code == 503
    assert "AccountKey" not in broken.get_body().decode()


async def test_health_lists_setting_problems(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPH_BASE_URL", "https://example.com/v1.0")
    reset_settings()
    response = await call(function_app.health, "GET", "/api/health")
    assert response.status_code == 503
    assert "GRAPH_BASE_URL" in body_of(response)["problems"][0]


async def test_openapi_document_is_valid_swagger_2(app: App) -> None:
    """The connector document validates as OpenAPI 2.0 and matches the checked-in copy's shape."""
    response = await call(function_app.openapi, "GET", "/api/openapi.json")
    document = body_of(response)
    validate(document)
    assert document["swagger"] == "2.0" and document["host"] == "localhost:7071"
    assert document["paths"]["/resets"]["post"]["operationId"] == "SubmitReset"
    props = document["definitions"]["ResetSubmission"]["properties"]
    assert props["newEmail"]["x-ms-summary"] == "New email"


async def test_poison_list_and_replay_then_success(app: App) -> None:
    """A request failed by a Graph outage is listed, replayed after the fix, and then succeeds."""
    app.graph.add_fault(
        method="POST",
        path="^/invitations$",
        status=403,
        code="Authorization_RequestDenied",
        message="Insufficient privileges to complete the operation.",
        times=None,
    )
    await submit({"userId": ADELE, "requestId": "to-replay"})
    await deliver_queued(app)
    await app.run_poison_handler()
    query = {"errorCode": "GraphForbidden"}
    listing = body_of(await call(function_app.list_poison, "GET", "/api/poison", params=query))
    assert [(i["requestId"], i["replayable"]) for i in listing["items"]] == [("to-replay", True)]

    app.graph.clear_faults()
    replayed = await call(function_app.replay_poison, "POST", "/api/poison/replay", {"requestIds": ["to-replay"]})
    assert body_of(replayed)["moved"] == ["to-replay"]
    assert (await status("to-replay")).status_code == 202
    await deliver_queued(app)
    outcome = body_of(await status("to-replay"))
    assert outcome["status"] == "Succeeded" and outcome["replays"] == 1
    assert len(app.graph.invitations()) == 1
    empty = body_of(await call(function_app.list_poison, "GET", "/api/poison"))
    assert empty["items"] == []


async def test_replay_order_is_validated(app: App) -> None:
    response = await call(function_app.replay_poison, "POST", "/api/poison/replay", {"max": 0})
    assert response.status_code == 400
    bad_max = await call(function_app.list_poison, "GET", "/api/poison", params={"max": "lots"})
    assert bad_max.status_code == 400
