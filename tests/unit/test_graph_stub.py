"""The Graph stub answers like Graph (and the emulator) for the calls the app makes, and fails when told to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.platform.errors import (
    AmbiguousOutcomeError,
    AmbiguousUserError,
    GraphRequestError,
    PolicyRefusedError,
    TransientError,
    UserNotFoundError,
)
from shared.reset.graph import GraphGateway, InvitationBody
from shared.reset.graph_stub import DirectoryUser, StubGraphGateway
from tests.factories import GUEST_ID, directory_user, internal_user, role

OTHER_ID = "6a1b3c4d-0000-4000-8000-00000000c003"
UPN = "adele.vance_contoso.com#EXT#@fabrikam.onmicrosoft.com"


def invite(email: str = "adele.vance@contoso.com", user_id: str = GUEST_ID) -> InvitationBody:
    return InvitationBody(user_id=user_id, email=email, redirect_url="https://myapps.microsoft.com", send_message=False)


@pytest.fixture
def graph() -> StubGraphGateway:
    return StubGraphGateway([directory_user(), internal_user(id=OTHER_ID, mail="taken@contoso.com")])


def test_it_is_a_graph_gateway() -> None:
    """mypy checks the stub against the Protocol here; the app can hold it where it holds the SDK adapter."""
    gateway: GraphGateway = StubGraphGateway()
    assert gateway is not None


async def test_a_user_is_found_by_id_upn_or_any_address_whatever_the_case(graph: StubGraphGateway) -> None:
    """Lookups by id, UPN, mail and otherMails are case-insensitive, as Graph's are."""
    graph.user(GUEST_ID).other_mails.append("adele@fabrikam.example")
    for found in (
        await graph.find_user(user_id=GUEST_ID.upper()),
        await graph.find_user(upn=UPN.upper()),
        await graph.find_user(email="ADELE.VANCE@contoso.com"),
        await graph.find_user(email="adele@Fabrikam.example"),
    ):
        assert found.id == GUEST_ID and found.is_guest and found.is_external


async def test_no_user_or_two_users_for_an_address_are_refused(graph: StubGraphGateway) -> None:
    """An unknown id is Graph's 404; an address nobody or two users hold is refused by the gateway."""
    with pytest.raises(UserNotFoundError, match="check the userId"):
        await graph.find_user(user_id="6a1b3c4d-0000-4000-8000-00000000ffff")
    with pytest.raises(UserNotFoundError, match=r"n\*\*\*y@nowhere.example"):
        await graph.find_user(email="nobody@nowhere.example")
    graph.add_user(directory_user(id=OTHER_ID, other_mails=["adele.vance@contoso.com"]))
    with pytest.raises(AmbiguousUserError):
        await graph.find_user(email="adele.vance@contoso.com")


async def test_owners_of_an_address_include_proxy_addresses(graph: StubGraphGateway) -> None:
    """users_owning_email looks at mail, otherMails and smtp proxyAddresses (case-insensitive)."""
    graph.user(OTHER_ID).proxy_addresses.append("smtp:Alias@Contoso.com")
    assert [u.id for u in await graph.users_owning_email("taken@contoso.com")] == [OTHER_ID]
    assert [u.id for u in await graph.users_owning_email("alias@contoso.com")] == [OTHER_ID]
    assert await graph.users_owning_email("free@contoso.com") == []


async def test_switching_the_sign_in_email_updates_mail_other_mails_and_the_primary_address(
    graph: StubGraphGateway,
) -> None:
    """PATCH mail + otherMails as the adapter sends it; the old primary SMTP address stays as a secondary."""
    user = await graph.read_user(GUEST_ID)
    await graph.set_sign_in_email(user, "adele@fabrikam.example")
    stored = graph.user(GUEST_ID)
    assert stored.mail == "adele@fabrikam.example"
    assert stored.other_mails == ["adele.vance@contoso.com", "adele@fabrikam.example"]
    assert stored.proxy_addresses == ["SMTP:adele@fabrikam.example", "smtp:adele.vance@contoso.com"]


async def test_an_email_another_object_holds_cannot_become_mail(graph: StubGraphGateway) -> None:
    """Graph's proxyAddresses conflict, classified as EmailInUse; nothing changes."""
    with pytest.raises(PolicyRefusedError) as raised:
        await graph.set_sign_in_email(await graph.read_user(GUEST_ID), "taken@contoso.com")
    assert raised.value.code == "EmailInUse" and graph.user(GUEST_ID).mail == "adele.vance@contoso.com"


async def test_a_reset_sets_pending_acceptance_and_records_the_invitation(graph: StubGraphGateway) -> None:
    """The invitation flips externalUserState and its change time, as the read-back then shows."""
    before = datetime.now(UTC).replace(microsecond=0)
    sent = await graph.reset_redemption(invite())
    after = await graph.read_user(GUEST_ID)
    assert sent.status == "PendingAcceptance" and sent.id == graph.invitations[0].id
    assert after.external_user_state == "PendingAcceptance"
    assert after.external_user_state_changed_at is not None and after.external_user_state_changed_at >= before
    assert [i.body.email for i in graph.user(GUEST_ID).invitations] == ["adele.vance@contoso.com"]


@pytest.mark.parametrize(
    ("user", "email", "error", "code"),
    [
        (directory_user(), "stranger@contoso.com", GraphRequestError, "EmailNotOnUser"),
        (
            directory_user(role_assignments=[role()]),
            "adele.vance@contoso.com",
            GraphRequestError,
            "GraphForbidden",
        ),
        (directory_user(id=OTHER_ID), "adele.vance@contoso.com", UserNotFoundError, "UserNotFound"),
    ],
)
async def test_graph_refuses_an_invitation_it_cannot_send(
    user: DirectoryUser, email: str, error: type[Exception], code: str
) -> None:
    """An address not on the user, a role holder, an unknown user: Graph's refusals, nothing sent."""
    graph = StubGraphGateway([user])
    with pytest.raises(error) as raised:
        await graph.reset_redemption(invite(email))
    assert getattr(raised.value, "code", None) == code and graph.invitations == []


async def test_an_earlier_attempt_confirmed_by_read_back_is_not_sent_again(graph: StubGraphGateway) -> None:
    """With sent_after, a user already pending since then is taken as sent; one before that is not."""
    started = datetime.now(UTC)
    await graph.reset_redemption(invite())
    confirmed = await graph.reset_redemption(invite(), sent_after=started)
    assert confirmed.confirmed_by_read_back and len(graph.invitations) == 1
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert not (await graph.reset_redemption(invite(), sent_after=later)).confirmed_by_read_back
    assert len(graph.invitations) == 2


async def test_scripted_failures_hit_the_next_calls_in_order(graph: StubGraphGateway) -> None:
    """fail() rules apply to the next N calls of their method, one after the other, then calls succeed."""
    graph.fail_status("read_user", 503, times=2)
    graph.fail_status("read_user", 404)
    for _ in range(2):
        with pytest.raises(TransientError):
            await graph.read_user(GUEST_ID)
    with pytest.raises(UserNotFoundError):
        await graph.read_user(GUEST_ID)
    assert (await graph.read_user(GUEST_ID)).id == GUEST_ID
    assert len(graph.calls_to("read_user")) == 4 and graph.failures.pending("read_user") == 0


async def test_an_applied_failure_changes_the_directory_before_raising(graph: StubGraphGateway) -> None:
    """applied=True: the invitation goes out and the caller still sees an ambiguous 504."""
    graph.fail_status("reset_redemption", 504, applied=True)
    with pytest.raises(AmbiguousOutcomeError):
        await graph.reset_redemption(invite())
    assert len(graph.invitations) == 1 and graph.user(GUEST_ID).external_user_state == "PendingAcceptance"


def test_a_failure_for_a_method_the_gateway_lacks_is_refused(graph: StubGraphGateway) -> None:
    """A typo in a test's script fails loudly instead of never firing; reads cannot be 'applied'."""
    with pytest.raises(ValueError, match="no method"):
        graph.fail("reset_redemtion", TransientError("x"))
    with pytest.raises(ValueError, match="writes nothing"):
        graph.fail("read_user", TransientError("x"), applied=True)


async def test_every_call_is_recorded_with_its_arguments(graph: StubGraphGateway) -> None:
    """Tests assert on what the app asked of Graph; writes are listed on their own."""
    await graph.role_assignments(GUEST_ID)
    await graph.reset_redemption(invite())
    assert [c.method for c in graph.calls] == ["role_assignments", "reset_redemption"]
    assert graph.calls[0].arguments == {"user_id": GUEST_ID}
    assert [c.method for c in graph.writes] == ["reset_redemption"]
