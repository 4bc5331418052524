"""The service meets Graph as it really behaves (issue 12), over the in-memory Graph stub and storage doubles."""

from __future__ import annotations

from typing import Any

import pytest

from shared.platform.errors import TransientError
from shared.reset.graph_stub import EMAIL_MISMATCH, StubGraphGateway
from shared.reset.status import Status
from tests.factories import GUEST_ID, HELPDESK_ADMINISTRATOR, MakeApp, directory_user, role

RID = "req-real-graph"
GROUP = "9a0b1c2d-0001-4e5f-8a9b-00000000a001"


def body(**fields: Any) -> dict[str, Any]:
    return {"userId": GUEST_ID, "requestId": RID, **fields}


async def test_the_switch_reads_back_before_inviting(make_app: MakeApp) -> None:
    """After its PATCH the reset waits for the address to read back, within REPLICATION_WAIT_SECONDS."""
    app = make_app(directory_user(), REPLICATION_WAIT_SECONDS="7")
    await app.deliver(body(newEmail="adele@new.example"))
    methods = [c.method for c in app.graph.calls]
    assert methods.index("set_sign_in_email") < methods.index("wait_for_address") < methods.index("reset_redemption")
    [wait] = app.graph.calls_to("wait_for_address")
    assert wait.arguments == {"user_id": GUEST_ID, "email": "adele@new.example"}


async def test_a_mismatch_after_our_own_switch_is_retried_and_sends_one_invitation(make_app: MakeApp) -> None:
    """Graph's invitation service still sees the old addresses twice: retried in the delivery, then success."""
    app = make_app(directory_user())
    app.graph.fail_status("reset_redemption", 400, graph_code="BadRequest", message=EMAIL_MISMATCH, times=2)
    await app.deliver(body(newEmail="adele@new.example"))
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED
    assert len(app.graph.calls_to("reset_redemption")) == 3 and len(app.graph.invitations) == 1


async def test_a_mismatch_that_outlasts_the_retries_is_handed_back_not_poisoned(make_app: MakeApp) -> None:
    """Still refused after every retry: transient (the host redelivers), because the address is ours."""
    app = make_app(directory_user())
    app.graph.fail_status("reset_redemption", 400, graph_code="BadRequest", message=EMAIL_MISMATCH, times=None)
    with pytest.raises(TransientError) as handed_back:
        await app.deliver(body(newEmail="adele@new.example"))
    assert handed_back.value.code == "EmailNotReplicatedYet"
    assert app.poison() == []
    assert len(app.graph.calls_to("reset_redemption")) == 1 + len(app.settings.graph_retry_delays)


async def test_a_mismatch_without_our_own_switch_is_permanent(make_app: MakeApp) -> None:
    """The caller named an address the guest does not hold: poisoned on the first answer, no retry."""
    app = make_app(directory_user())
    app.graph.fail_status("reset_redemption", 400, graph_code="BadRequest", message=EMAIL_MISMATCH)
    await app.deliver(body())
    [envelope] = app.poison()
    assert envelope["error"]["code"] == "EmailNotOnUser"
    assert len(app.graph.calls_to("reset_redemption")) == 1


async def test_a_role_held_through_a_group_is_refused_with_the_transitive_check(make_app: MakeApp) -> None:
    """ROLE_CHECK=transitive (the default) sees the group's role and names the group; nothing is written."""
    app = make_app(directory_user())
    app.graph.add_role_group(GROUP, [GUEST_ID], [role(HELPDESK_ADMINISTRATOR, principal=GROUP)])
    await app.deliver(body(newEmail="adele@new.example"))
    [envelope] = app.poison()
    assert envelope["error"]["code"] == "TargetHasDirectoryRoles" and GROUP in envelope["error"]["message"]
    assert app.graph.writes == []


async def test_the_direct_check_leaves_group_roles_to_graphs_own_refusal(make_app: MakeApp) -> None:
    """ROLE_CHECK=direct misses the group's role; Graph's 403 still stops the reset."""
    app = make_app(directory_user(), graph=StubGraphGateway(role_check="direct"), ROLE_CHECK="direct")
    app.graph.add_role_group(GROUP, [GUEST_ID], [role(HELPDESK_ADMINISTRATOR, principal=GROUP)])
    await app.deliver(body())
    [envelope] = app.poison()
    assert envelope["error"]["code"] == "GraphForbidden" and app.graph.invitations == []


async def test_an_open_breaker_holds_a_request_before_any_write(make_app: MakeApp) -> None:
    """With the breaker open, a request with an email switch is held before its PATCH."""
    app = make_app(directory_user())
    app.graph.fail_status(
        "reset_redemption",
        403,
        graph_code="Forbidden",
        message="Invitations are blocked for this directory due to suspicious activity.",
    )
    await app.deliver(body(requestId="opener"))
    await app.deliver(body(newEmail="adele@new.example"))
    record = await app.status(RID)
    assert record is not None and record.status is Status.HELD
    assert [c.method for c in app.graph.writes] == ["reset_redemption"], "only the opener ever posted"
    assert {m["requestId"] for m in app.requests_queue.decoded()} == {"opener", RID}
    await app.runtime.gate.close("ops")
    await app.deliver(body(newEmail="adele@new.example"))
    record = await app.status(RID)
    assert record is not None and record.status is Status.SUCCEEDED


async def test_the_default_redirect_opens_my_apps_in_the_tokens_tenant(make_app: MakeApp) -> None:
    """No INVITE_REDIRECT_URL and no AZURE_TENANT_ID: the tenant comes from the app's own token."""
    app = make_app(directory_user(), graph=StubGraphGateway(tenant="tenant-from-token"))
    await app.deliver(body())
    [sent] = app.graph.invitations
    assert sent.body.redirect_url == "https://myapps.microsoft.com?tenantId=tenant-from-token"


async def test_a_guest_without_mail_is_invited_at_its_only_other_address(make_app: MakeApp) -> None:
    """A guest created while a contact held its address: the one otherMails entry is invited, nothing patched."""
    app = make_app(directory_user(mail=None, other_mails=["adele@litware.example"], proxy_addresses=[]))
    await app.deliver(body())
    [sent] = app.graph.invitations
    assert sent.body.email == "adele@litware.example" and app.graph.calls_to("set_sign_in_email") == []
