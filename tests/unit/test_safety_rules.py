"""Every safety rule of the reset, run through the service over the Graph stub: a refusal writes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from shared.platform.errors import PolicyRefusedError
from shared.platform.storage_stub import MemoryTable
from shared.reset.contract import ResetRequest, validate_request
from shared.reset.graph_stub import DirectoryUser, StubGraphGateway
from shared.reset.service import ResetService
from shared.reset.status import Status, StatusRecord, StatusStore
from tests.factories import GUEST_ID, directory_user, internal_user, role, settings

OTHER_ID = "6a1b3c4d-0000-4000-8000-00000000c003"


def request(**fields: Any) -> ResetRequest:
    return validate_request({"userId": GUEST_ID, "requestId": "req-1", **fields})


async def run(
    graph: StubGraphGateway, req: ResetRequest | None = None, **setting_overrides: str
) -> tuple[StatusRecord, StatusStore]:
    """One claimed request through the service, as the worker runs it."""
    req = req or request()
    store = StatusStore(MemoryTable())
    claim = await store.claim(StatusRecord.for_request(req, "req-1", Status.PROCESSING), owner="test")
    service = ResetService(settings(**setting_overrides), graph, store)
    return await service.run(req, claim.record), store


async def refused(graph: StubGraphGateway, req: ResetRequest | None = None, **setting_overrides: str) -> str:
    """The code of the rule that refused the request; asserts nothing was written to the directory."""
    with pytest.raises(PolicyRefusedError) as raised:
        await run(graph, req, **setting_overrides)
    assert graph.writes == [] and graph.invitations == []
    return raised.value.code


async def test_a_guest_is_reset_with_one_invitation_to_its_mail() -> None:
    """The baseline every refusal below departs from: a B2B guest passes every rule."""
    graph = StubGraphGateway([directory_user()])
    record, _ = await run(graph)
    assert record.status is Status.SUCCEEDED and record.verified
    assert [i.body.email for i in graph.user(GUEST_ID).invitations] == ["adele.vance@contoso.com"]


async def test_an_external_member_is_refused_unless_members_are_allowed() -> None:
    """Rule 1: only guests, unless ALLOW_MEMBER_RESET says external members may be reset too."""
    member = directory_user(user_type="Member")
    assert await refused(StubGraphGateway([member])) == "NotAGuest"
    graph = StubGraphGateway([directory_user(user_type="Member")])
    record, _ = await run(graph, ALLOW_MEMBER_RESET="true")
    assert record.status is Status.SUCCEEDED and len(graph.invitations) == 1


@pytest.mark.parametrize(
    "user",
    [
        internal_user(id=GUEST_ID),
        # Typed Guest but never invited: a reset would still turn an internal account into a B2B one.
        internal_user(id=GUEST_ID, user_type="Guest"),
    ],
)
async def test_an_internal_account_is_never_reset_even_with_members_allowed(user: DirectoryUser) -> None:
    """An account that is not B2B (no #EXT#, no externalUserState) is refused whatever the settings."""
    assert await refused(StubGraphGateway([user]), ALLOW_MEMBER_RESET="true") == "NotAnExternalUser"


@pytest.mark.parametrize(
    ("new_email", "blocked"),
    [("adele@gmail.com", "gmail.com"), (None, "contoso.com"), ("adele@Mail.Example", "mail.example")],
)
async def test_an_address_in_a_blocked_domain_is_refused(new_email: str | None, blocked: str) -> None:
    """Rule 2: the address the guest will redeem with (newEmail, else mail) obeys BLOCKED_EMAIL_DOMAINS."""
    graph = StubGraphGateway([directory_user()])
    code = await refused(graph, request(newEmail=new_email), BLOCKED_EMAIL_DOMAINS=f"yahoo.com,{blocked}")
    assert code == "EmailDomainBlocked"


async def test_an_address_outside_the_allowed_domains_is_refused() -> None:
    """Rule 2: with ALLOWED_EMAIL_DOMAINS set, any other domain is refused; an allowed one passes."""
    graph = StubGraphGateway([directory_user()])
    code = await refused(graph, request(newEmail="adele@gmail.com"), ALLOWED_EMAIL_DOMAINS="contoso.com")
    assert code == "EmailDomainNotAllowed"
    record, _ = await run(graph, request(newEmail="adele.new@CONTOSO.com"), ALLOWED_EMAIL_DOMAINS="contoso.com")
    assert record.status is Status.SUCCEEDED


@pytest.mark.parametrize(
    "owner",
    [
        internal_user(id=OTHER_ID, mail="taken@contoso.com"),
        internal_user(id=OTHER_ID, other_mails=["Taken@Contoso.com"]),
        internal_user(id=OTHER_ID, proxy_addresses=["SMTP:owner@contoso.com", "smtp:taken@contoso.com"]),
    ],
    ids=["mail", "otherMails", "proxyAddresses"],
)
async def test_a_new_email_owned_by_another_user_is_refused(owner: DirectoryUser) -> None:
    """Rule 2: a newEmail already on another object (mail, otherMails or proxyAddresses) is EmailInUse."""
    graph = StubGraphGateway([directory_user(), owner])
    assert await refused(graph, request(newEmail="taken@contoso.com")) == "EmailInUse"


async def test_a_new_email_the_guest_already_holds_is_not_in_use() -> None:
    """The guest's own otherMails entry is no conflict: it becomes its mail and the invitation goes there."""
    graph = StubGraphGateway([directory_user(other_mails=["adele.vance@contoso.com", "adele@fabrikam.example"])])
    record, _ = await run(graph, request(newEmail="adele@fabrikam.example"))
    user = graph.user(GUEST_ID)
    assert record.status is Status.SUCCEEDED and user.mail == "adele@fabrikam.example"
    assert [call.method for call in graph.writes] == ["set_sign_in_email", "reset_redemption"]
    assert user.invitations[0].body.email == "adele@fabrikam.example"


async def test_a_guest_holding_a_directory_role_is_refused_before_graph_would() -> None:
    """App-only calls cannot reset role holders; the rule says so up front instead of a bare 403."""
    graph = StubGraphGateway([directory_user(role_assignments=[role()])])
    assert await refused(graph) == "TargetHasDirectoryRoles"


async def test_a_guest_without_mail_needs_a_new_email() -> None:
    """No mail and no newEmail: there is no address to invite, so nothing is sent."""
    graph = StubGraphGateway([directory_user(mail=None, other_mails=[])])
    assert await refused(graph) == "NoEmailOnUser"


async def test_a_dry_run_checks_everything_and_sends_nothing() -> None:
    """Every read and rule runs (owners of the new email, roles), no write happens, DryRunPassed is recorded."""
    graph = StubGraphGateway([directory_user()])
    record, store = await run(graph, request(newEmail="adele.new@contoso.com", dryRun=True))
    assert graph.writes == [] and graph.invitations == []
    assert {c.method for c in graph.calls} == {"find_user", "users_owning_email", "role_assignments"}
    stored = await store.get("req-1")
    assert stored is not None and stored.status is Status.DRY_RUN_PASSED == record.status
    assert stored.lease_owner is None and stored.history[-1]["event"] == "dryRunPassed"
    assert graph.user(GUEST_ID).mail == "adele.vance@contoso.com"


async def test_a_dry_run_still_refuses_what_a_real_run_would() -> None:
    """A dry run is a rehearsal of the rules, not a way around them."""
    graph = StubGraphGateway([directory_user(role_assignments=[role(scope="/administrativeUnits/au-1")])])
    assert await refused(graph, request(dryRun=True)) == "TargetHasDirectoryRoles"


async def test_the_email_switch_happens_before_the_invitation_and_keeps_old_addresses() -> None:
    """newEmail becomes mail, joins otherMails, and the invitation is sent to it."""
    graph = StubGraphGateway([directory_user()])
    await run(graph, request(newEmail="adele@fabrikam.example"))
    user = graph.user(GUEST_ID)
    assert (user.mail, user.other_mails) == (
        "adele@fabrikam.example",
        ["adele.vance@contoso.com", "adele@fabrikam.example"],
    )
    assert [c.method for c in graph.writes] == ["set_sign_in_email", "reset_redemption"]
    assert graph.invitations[0].body.email == "adele@fabrikam.example"
