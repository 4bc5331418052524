"""The reset against an emulator that behaves like the real Graph (issue 12): each behaviour switched on."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from azure.storage.queue import QueueClient

from shared.reset.status import Status
from shared.reset.worker import handle_request_message
from tests.integration.support import ADELE, BRIAN, LEE, App

GAIL = "5e0c1d2a-0012-4a5b-9c3d-000000000012"  # Helpdesk Administrator through a role-assignable group
URSULA = "5e0c1d2a-0013-4a5b-9c3d-000000000013"  # custom role at an administrative-unit scope
NORA = "5e0c1d2a-0014-4a5b-9c3d-000000000014"  # no mail, one otherMails
OTTO = "5e0c1d2a-0015-4a5b-9c3d-000000000015"  # no mail, two otherMails
BLOCKED = "Invitations are blocked for this directory due to suspicious activity. Please contact Microsoft support."


async def poisoned_code(app: App, request_id: str) -> str | None:
    [poisoned] = await app.run_poison_handler()
    record = await app.status(request_id)
    assert record is not None and record.status is Status.FAILED
    return str(poisoned["error"]["code"])


# --- 1. the role check ---------------------------------------------------------------------------


async def test_missing_role_permission_fails_the_request_naming_it(app: App) -> None:
    """Without RoleManagement.Read.Directory Graph answers 403: the request fails with a code naming it."""
    app.graph.set_app_permissions(["User.ReadWrite.All"])
    await app.deliver({"userId": ADELE, "requestId": "no-role-permission"})
    assert await poisoned_code(app, "no-role-permission") == "GraphPermissionMissing"
    record = await app.status("no-role-permission")
    assert record is not None and "RoleManagement.Read.Directory" in (record.error_message or "")
    assert "User.ReadWrite.All" not in (record.error_message or "")
    assert app.graph.invitations() == [] and not app.graph.journal(method="PATCH")


@pytest.mark.parametrize(("user", "scope_or_group"), [(GAIL, "through group"), (URSULA, "/administrativeUnits/")])
async def test_group_held_and_scoped_custom_roles_are_refused_before_any_write(
    app: App, user: str, scope_or_group: str
) -> None:
    """The transitive read sees roles held through role-assignable groups and scoped custom roles."""
    await app.deliver({"userId": user, "requestId": "role-holder"})
    assert await poisoned_code(app, "role-holder") == "TargetHasDirectoryRoles"
    record = await app.status("role-holder")
    assert record is not None and scope_or_group in (record.error_message or "")
    assert app.graph.invitations() == []
    [read] = app.graph.journal(path_contains="roleManagement")
    assert read["version"] == "beta" and read["consistencyLevel"] == "eventual"


async def test_direct_mode_misses_group_roles_and_graph_still_refuses(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROLE_CHECK=direct reads v1.0 only; a group-held role then meets Graph's own 403 and nothing is reset."""
    from shared.platform.settings import reset_settings
    from shared.reset.runtime import close_runtime

    monkeypatch.setenv("ROLE_CHECK", "direct")
    reset_settings()
    await close_runtime()
    await app.deliver({"userId": GAIL, "requestId": "direct-mode"})
    assert await poisoned_code(app, "direct-mode") == "GraphForbidden"
    [read] = app.graph.journal(path_contains="roleManagement")
    assert read["version"] == "v1.0" and read["consistencyLevel"] is None
    assert app.graph.invitations() == []


# --- 2. the address ------------------------------------------------------------------------------


async def test_guest_without_mail_is_reset_by_its_other_mails_address(app: App) -> None:
    """Found by its otherMails address, a guest whose mail is null is invited at that address."""
    await app.deliver({"email": "nora.nomail@litware.example", "requestId": "null-mail"})
    record = await app.status("null-mail")
    assert record is not None and record.status is Status.SUCCEEDED, record and record.error_message
    [sent] = app.graph.invitations()
    assert sent["body"]["invitedUserEmailAddress"] == "nora.nomail@litware.example"
    assert not app.graph.journal(method="PATCH")


async def test_guest_with_several_other_mails_and_no_mail_needs_the_address_said(app: App) -> None:
    """By id: refused with AmbiguousTargetEmail; by one of its addresses: that one is invited."""
    await app.deliver({"userId": OTTO, "requestId": "which-one"})
    assert await poisoned_code(app, "which-one") == "AmbiguousTargetEmail"
    await app.deliver({"email": "otto.t@tailspin.example", "requestId": "this-one"})
    record = await app.status("this-one")
    assert record is not None and record.status is Status.SUCCEEDED
    [sent] = app.graph.invitations()
    assert sent["body"]["invitedUserEmailAddress"] == "otto.t@tailspin.example"


# --- 3 and 4. replication after our own switch, plain filters ------------------------------------


async def test_switch_with_replication_lag_waits_and_sends_one_invitation(app: App) -> None:
    """After its PATCH the reset reads until the address shows, then invites once: success, no 400."""
    app.graph.set_replication_lag(1.5)
    await app.deliver({"userId": BRIAN, "newEmail": "brian@new.example", "requestId": "lagging-switch"})
    record = await app.status("lagging-switch")
    assert record is not None and record.status is Status.SUCCEEDED, record and record.error_message
    posts = app.graph.journal(method="POST", path_contains="/invitations")
    assert [p["status"] for p in posts] == [201]
    [patch] = app.graph.journal(method="PATCH")
    reads_between = [
        e
        for e in app.graph.journal(method="GET", since=patch["seq"])
        if e["seq"] < posts[0]["seq"] and BRIAN in e["path"]
    ]
    assert len(reads_between) >= 2, "the address was read back until it showed"


async def test_email_mismatch_after_our_own_switch_is_retried_in_the_delivery(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads see the new address but the invitation service lags: its 400 is retried, one invitation goes out."""
    from shared.platform.settings import reset_settings
    from shared.reset.runtime import close_runtime

    monkeypatch.setenv("GRAPH_RETRY_DELAYS", "0.5,1,2")  # the retries outlast the emulator's 1 s lag
    reset_settings()
    await close_runtime()
    app.graph.set_replication_lag(1.0, reads=False, index=False, invitations=True)
    await app.deliver({"userId": BRIAN, "newEmail": "brian@new.example", "requestId": "mismatch"})
    record = await app.status("mismatch")
    assert record is not None and record.status is Status.SUCCEEDED, record and record.error_message
    statuses = [p["status"] for p in app.graph.journal(method="POST", path_contains="/invitations")]
    assert statuses[0] == 400 and statuses[-1] == 201 and len(app.graph.invitations()) == 1


async def test_a_mismatch_without_our_own_switch_stays_permanent(app: App) -> None:
    """The same 400 on an address nobody just set is the caller's mistake: poisoned at once, no retry."""
    app.graph.add_fault(
        method="POST",
        path="^/invitations$",
        status=400,
        code="BadRequest",
        message="The email you're using to invite this user doesn't match any emails on the user object.",
    )
    await app.deliver({"userId": LEE, "requestId": "not-ours"})
    assert await poisoned_code(app, "not-ours") == "EmailNotOnUser"
    assert len(app.graph.journal(method="POST")) == 1


async def test_lookups_use_plain_filters_that_see_a_fresh_change(app: App) -> None:
    """Finding a guest by an address set seconds ago works: no ConsistencyLevel, so no lagging index."""
    app.graph.set_replication_lag(30, reads=False, invitations=False)
    async with httpx.AsyncClient(base_url=app.graph.base_url, headers={"Authorization": "Bearer t"}) as graph:
        changed = await graph.patch(f"/users/{LEE}", json={"otherMails": ["lee.gu@contoso.com", "lee@fresh.example"]})
        assert changed.status_code == 204
        stale = await graph.get(
            "/users",
            params={"$filter": "otherMails/any(m:m eq 'lee@fresh.example')", "$count": "true"},
            headers={"ConsistencyLevel": "eventual"},
        )
        assert stale.json()["value"] == [], "the advanced-query index has not caught up"
    before = app.graph.journal()[-1]["seq"]
    await app.deliver({"email": "lee@fresh.example", "requestId": "fresh", "dryRun": True})
    record = await app.status("fresh")
    assert record is not None and record.status is Status.DRY_RUN_PASSED, record and record.error_message
    lookups = [e for e in app.graph.journal(method="GET", since=before) if e["path"] == "/users"]
    assert lookups and all(e["consistencyLevel"] is None and "$count" not in e["query"] for e in lookups)


# --- 5. the default redirect ---------------------------------------------------------------------


async def test_default_redirect_is_my_apps_in_the_tenant(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.platform.settings import reset_settings
    from shared.reset.runtime import close_runtime

    tenant = str(uuid.uuid4())
    monkeypatch.setenv("AZURE_TENANT_ID", tenant)
    reset_settings()
    await close_runtime()
    await app.deliver({"userId": ADELE, "requestId": "redirect"})
    [sent] = app.graph.invitations()
    assert sent["body"]["inviteRedirectUrl"] == f"https://myapps.microsoft.com?tenantId={tenant}"


# --- 7. the invitation breaker -------------------------------------------------------------------


def wait_for_requests(app: App, count: int, timeout: float = 20.0) -> list[tuple[str, bytes]]:
    """The request queue's messages (held ones become visible after BREAKER_HOLD_SECONDS)."""
    queue = QueueClient.from_connection_string(app.connection_string, app.settings.request_queue)
    found: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} messages came back"
        for message in queue.receive_messages(max_messages=32, visibility_timeout=60):
            found.append((message.id, message.content.encode()))
            queue.delete_message(message)
        time.sleep(0.2)
    return found


async def deliver_all(messages: list[tuple[str, bytes]]) -> None:
    for message_id, body in messages:
        await handle_request_message(body, message_id=message_id, dequeue_count=1)


async def test_breaker_opens_on_the_first_block_holds_the_queue_and_resumes_when_closed(app: App) -> None:
    """The first block opens the breaker; later requests are held without posting; closing resumes them all."""
    from tools.cli import main as cli

    app.graph.add_fault(method="POST", path="^/invitations$", status=403, code="Forbidden", message=BLOCKED, times=None)
    await app.deliver({"userId": ADELE, "requestId": "first"})
    await app.deliver({"userId": LEE, "newEmail": "lee@new.example", "requestId": "second"})
    assert len(app.graph.journal(method="POST")) == 1, "only the first request met the block"
    assert not app.graph.journal(method="PATCH"), "a held request writes nothing"
    for request_id in ("first", "second"):
        record = await app.status(request_id)
        assert record is not None and record.status is Status.HELD and record.error_code == "InvitationsBlocked"
        assert "breaker close" in (record.error_message or "")
    assert app.poison() == [] and app.results() == []

    # Held deliveries come back and are held again while the breaker stays open: nothing posts.
    await deliver_all(wait_for_requests(app, 2))
    assert len(app.graph.journal(method="POST")) == 1

    app.graph.clear_faults()  # Microsoft lifted the block
    assert await cli.run(["breaker", "close", "--by", "ops", "--json", "--no-progress"]) == 0
    await deliver_all(wait_for_requests(app, 2))
    for request_id in ("first", "second"):
        record = await app.status(request_id)
        assert record is not None and record.status is Status.SUCCEEDED, record and record.error_message
    assert len(app.graph.invitations()) == 2
    results = app.results()
    assert sorted(r["requestId"] for r in results) == ["first", "second"]


async def test_breaker_admin_endpoint_reports_and_closes(app: App) -> None:
    """GET /api/breaker shows why it is open; POST /api/breaker/close closes it and says who."""
    from shared.api import handlers as api
    from shared.platform.errors import GraphRequestError
    from shared.reset.runtime import get_runtime

    runtime = await get_runtime()
    await runtime.gate.trip(GraphRequestError(BLOCKED, code="InvitationsBlocked"), "req-x")
    shown = await api.breaker_status(api.ApiRequest("GET", "https://app/api/breaker"))
    assert shown.status == 200 and shown.body["state"] == "open" and shown.body["openedBy"] == "req-x"
    closed = await api.close_breaker(api.ApiRequest("POST", "https://app/api/breaker/close", b'{"closedBy": "ops"}'))
    assert closed.status == 200 and closed.body["breaker"]["state"] == "closed"
    assert closed.body["breaker"]["closedBy"] == "ops" and closed.body["resumedCount"] == 0


async def test_invitation_slots_are_distinct_across_concurrent_instances(app: App) -> None:
    """Instances pacing at once against the shared entity (real ETags) never share a slot: after the
    burst, each delivery keeps its own slot, one interval after the one before."""
    import itertools
    from dataclasses import replace
    from datetime import timedelta
    from typing import Any

    from shared.platform.errors import HoldError
    from shared.platform.fleet import FleetState
    from shared.platform.storage import table_client
    from shared.reset.breaker import INVITATION_BURST, InvitationGate
    from shared.reset.runtime import get_runtime
    from shared.reset.status import StatusRecord, StatusStore

    class Kept(StatusStore):
        def __init__(self) -> None:
            self.slots: list[Any] = []

        async def save(self, record: StatusRecord, **changes: Any) -> StatusRecord:
            self.slots.append(changes["invite_slot"])
            return replace(record, **changes)

    await get_runtime()  # creates the state table
    settings = replace(app.settings, invitations_per_minute=0.6)  # one every 100 s: the rest are held
    states = [FleetState(table_client(app.settings.storage, app.settings.state_table)) for _ in range(4)]
    gates = [InvitationGate(state, settings) for state in states]
    kept = Kept()
    outcomes = await asyncio.gather(
        *(gates[i % 4].pace(StatusRecord(request_id=f"r{i}", status=Status.PROCESSING), kept) for i in range(12)),
        return_exceptions=True,
    )
    for gate, state in zip(gates, states, strict=True):
        await gate.aclose()
        await state.aclose()
    assert sum(isinstance(o, HoldError) for o in outcomes) == 12 - INVITATION_BURST
    ordered = sorted(kept.slots)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    assert all(abs(gap - timedelta(seconds=100)) < timedelta(milliseconds=1) for gap in gaps), gaps
