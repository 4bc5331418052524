"""Least power through the worker and the HTTP handlers over the in-memory doubles (fast twins of test_security)."""

from __future__ import annotations

import base64
import json
from typing import Any

from shared.api import handlers
from shared.api.handlers import ApiRequest, ApiResponse
from shared.reset.status import Status
from tests.factories import GUEST_ID, MakeApp, directory_user

OWNER = "0a0a0a0a-1111-4222-8333-000000000001"
STRANGER = "0b0b0b0b-1111-4222-8333-000000000002"


def as_caller(oid: str, *roles: str) -> dict[str, str]:
    claims = [{"typ": "oid", "val": oid}] + [{"typ": "roles", "val": role} for role in roles]
    encoded = base64.b64encode(json.dumps({"auth_typ": "aad", "claims": claims}).encode()).decode()
    return {"X-MS-CLIENT-PRINCIPAL": encoded, "Content-Type": "application/json"}


async def post(body: dict[str, Any], headers: dict[str, str] | None = None) -> ApiResponse:
    request = ApiRequest(
        "POST",
        "http://localhost/api/resets",
        json.dumps(body).encode(),
        headers=headers or {"Content-Type": "application/json"},
    )
    return await handlers.submit_resets(request)


async def get(request_id: str, headers: dict[str, str] | None = None) -> ApiResponse:
    request = ApiRequest(
        "GET",
        f"http://localhost/api/resets/{request_id}",
        headers=headers or {},
        route_params={"requestId": request_id},
    )
    return await handlers.get_reset(request)


async def test_the_queue_without_the_switch_capability_fails_the_request_and_writes_nothing(make_app: MakeApp) -> None:
    app = make_app(directory_user(), KEY_CAPABILITIES="", QUEUE_CAPABILITIES="")
    await app.deliver({"userId": GUEST_ID, "newEmail": "adele@attacker.example", "requestId": "q"})
    await app.run_poison_handler()
    record = await app.status("q")
    assert record is not None and record.status is Status.FAILED and record.error_code == "CapabilityMissing"
    assert app.graph.writes == [] and app.graph.invitations == []


async def test_a_key_without_the_capability_gets_403_and_nothing_is_recorded(make_app: MakeApp) -> None:
    app = make_app(directory_user(), KEY_CAPABILITIES="", QUEUE_CAPABILITIES="")
    response = await post({"userId": GUEST_ID, "ccRecipients": ["boss@contoso.com"], "requestId": "k"})
    assert response.status == 403 and "Reset.MessageOptions" in response.body["detail"]
    assert await app.status("k") is None and app.requests_queue.messages == []


async def test_the_redeem_url_is_handed_over_once_and_only_to_its_owner(make_app: MakeApp) -> None:
    app = make_app(directory_user(), REQUIRE_ENTRA_ID="true")
    owner = as_caller(OWNER, "Reset.Submit", "Reset.ReadRedeemUrl")
    accepted = await post({"userId": GUEST_ID, "requestId": "l", "sendInvitationMessage": False}, owner)
    assert accepted.status == 202
    await app.deliver(app.requests_queue.messages.pop(0).encode())
    [invitation] = app.graph.invitations
    stranger = await get("l", as_caller(STRANGER, "Reset.Submit", "Reset.ReadRedeemUrl"))
    first, second = await get("l", owner), await get("l", owner)
    assert stranger.status == 404
    assert first.body["redeemUrl"] == invitation.redeem_url and "redeemUrl" not in second.body
    assert invitation.redeem_url not in json.dumps(app.results())
