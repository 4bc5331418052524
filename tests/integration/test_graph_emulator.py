"""The Graph emulator answers the app's Graph calls like Graph, via httpx and msgraph-sdk."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from azure.core.credentials import AccessToken
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.invitation import Invitation
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.user import User
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph.graph_service_client import GraphServiceClient

from tools.graph_emulator.runner import EmulatorHandle, running_emulator

ADELE = "5e0c1d2a-0001-4a5b-9c3d-000000000001"
ADELE_UPN = "adele.vance_contoso.com#EXT#@fabrikam.onmicrosoft.com"
LEE = "5e0c1d2a-0008-4a5b-9c3d-000000000008"
BRIAN = "5e0c1d2a-0002-4a5b-9c3d-000000000002"
MEGAN = "5e0c1d2a-0003-4a5b-9c3d-000000000003"
ROLF = "5e0c1d2a-0004-4a5b-9c3d-000000000004"
TAKEN_OWNER = "5e0c1d2a-0005-4a5b-9c3d-000000000005"
SHARED_A = "5e0c1d2a-0006-4a5b-9c3d-000000000006"
SHARED_B = "5e0c1d2a-0007-4a5b-9c3d-000000000007"
GAIL = "5e0c1d2a-0012-4a5b-9c3d-000000000012"  # Helpdesk Administrator through a role-assignable group
URSULA = "5e0c1d2a-0013-4a5b-9c3d-000000000013"  # custom role scoped to an administrative unit
HELPDESK_GROUP = "9a0b1c2d-0001-4e5f-8a9b-00000000a001"
FIXTURE_USERS = 15
PLACEHOLDER = "placeholder-token"


class PlaceholderCredential:
    """An azure-identity-free async credential: the emulator only needs some bearer token."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(PLACEHOLDER, int(time.time()) + 365 * 24 * 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> PlaceholderCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    """This module's own emulator (shadows the session one): its journal sees only these tests."""
    with running_emulator() as handle:
        yield handle


@pytest.fixture(autouse=True)
def clean(emulator: EmulatorHandle) -> None:
    """Every test starts from the fixture with no faults, latency or journal."""
    emulator.control.reset()


@pytest.fixture
def graph(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=emulator.base_url, timeout=10, headers={"Authorization": f"Bearer {PLACEHOLDER}"}
    ) as client:
        yield client


def sdk_client(emulator: EmulatorHandle) -> GraphServiceClient:
    client = GraphServiceClient(credentials=PlaceholderCredential(), scopes=["https://graph.microsoft.com/.default"])
    client.request_adapter.base_url = emulator.base_url
    return client


def reset_body(user_id: str = ADELE, email: str | None = "adele.vance@contoso.com", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "invitedUserEmailAddress": email,
        "inviteRedirectUrl": "https://myapps.microsoft.com",
        "invitedUser": {"id": user_id},
        "resetRedemption": True,
        "sendInvitationMessage": False,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


# --- msgraph-sdk --------------------------------------------------------------------------


async def test_sdk_get_user_by_id_with_select(emulator: EmulatorHandle) -> None:
    """The SDK parses a $select-ed user and the journal shows the placeholder token."""
    query = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
        select=["id", "userType", "mail", "otherMails", "externalUserState"]
    )
    user = (
        await sdk_client(emulator)
        .users.by_user_id(ADELE)
        .get(request_configuration=RequestConfiguration(query_parameters=query))
    )
    assert user is not None
    assert (user.id, user.user_type, user.mail) == (ADELE, "Guest", "adele.vance@contoso.com")
    assert user.external_user_state == "Accepted"
    assert user.display_name is None  # not selected
    entry = emulator.control.journal(method="GET")[-1]
    assert entry["authorization"] == f"Bearer {PLACEHOLDER}"
    assert entry["query"]["$select"] == "id,userType,mail,otherMails,externalUserState"


async def test_sdk_lists_users_by_other_mails_with_eventual_consistency(emulator: EmulatorHandle) -> None:
    """An otherMails/any filter with ConsistencyLevel and $count returns both sharing guests."""
    query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
        filter="userType eq 'Guest' and otherMails/any(x:x eq 'SHARED@northwind.example')",
        select=["id", "mail"],
        count=True,
        top=999,
    )
    config = RequestConfiguration(query_parameters=query)
    config.headers.add("ConsistencyLevel", "eventual")
    page = await sdk_client(emulator).users.get(request_configuration=config)
    assert page is not None and page.value is not None
    assert [u.id for u in page.value] == [SHARED_A, SHARED_B]
    assert page.odata_count == 2


async def test_sdk_patch_sets_mail_and_primary_proxy_address(emulator: EmulatorHandle) -> None:
    """PATCH through the SDK (with its @odata.type key) updates mail, otherMails, proxyAddresses."""
    await (
        sdk_client(emulator)
        .users.by_user_id(BRIAN)
        .patch(
            User(
                mail="brian.j@tailspin.example",
                other_mails=["brian.j@tailspin.example", "brian.johnson@litware.example"],
            )
        )
    )
    stored = emulator.control.user(BRIAN)
    assert stored["mail"] == "brian.j@tailspin.example"
    assert stored["otherMails"] == ["brian.j@tailspin.example", "brian.johnson@litware.example"]
    assert stored["proxyAddresses"][0] == "SMTP:brian.j@tailspin.example"
    assert "smtp:brian.johnson@litware.example" in stored["proxyAddresses"]


async def test_sdk_reset_invitation_returns_pending_acceptance(emulator: EmulatorHandle) -> None:
    """POST /invitations through the SDK yields an Invitation in PendingAcceptance."""
    invitation = await sdk_client(emulator).invitations.post(
        Invitation(
            invited_user_email_address="adele.vance@contoso.com",
            invite_redirect_url="https://myapps.microsoft.com",
            invited_user=User(id=ADELE),
            reset_redemption=True,
            send_invitation_message=False,
        )
    )
    assert invitation is not None and invitation.invited_user is not None
    assert invitation.status == "PendingAcceptance"
    assert invitation.reset_redemption is True
    assert invitation.invited_user.id == ADELE
    assert (invitation.invite_redeem_url or "").startswith("https://login.microsoftonline.com/redeem?rd=")
    assert emulator.control.user(ADELE)["_invitationCount"] == 1


async def test_sdk_raises_odata_error_for_unknown_user(emulator: EmulatorHandle) -> None:
    """A 404 reaches the SDK caller as ODataError with Graph's code and request id."""
    with pytest.raises(ODataError) as caught:
        await sdk_client(emulator).users.by_user_id("00000000-0000-0000-0000-000000000000").get()
    assert caught.value.response_status_code == 404
    assert caught.value.error is not None and caught.value.error.inner_error is not None
    assert caught.value.error.code == "Request_ResourceNotFound"
    assert caught.value.error.inner_error.request_id


# --- Graph routes over plain HTTP -----------------------------------------------------------


def test_missing_token_is_401(emulator: EmulatorHandle) -> None:
    """A request without a bearer token gets InvalidAuthenticationToken."""
    response = httpx.get(f"{emulator.base_url}/users/{ADELE}")
    assert response.status_code == 401
    assert error_of(response)["code"] == "InvalidAuthenticationToken"
    assert error_of(response)["message"] == "Access token is empty."


def test_responses_carry_graph_headers_and_error_shape(graph: httpx.Client) -> None:
    """Success and error responses carry request-id, the echoed client-request-id and Date."""
    ok = graph.get(f"/users/{ADELE}", headers={"client-request-id": "my-corr-id"})
    missing = graph.get("/users/nobody@nowhere.example")
    for response in (ok, missing):
        assert response.headers["request-id"]
        assert response.headers["x-ms-ags-diagnostic"]
        assert response.headers["Date"]
        assert response.headers["Content-Type"] == "application/json"
    assert ok.headers["client-request-id"] == "my-corr-id"
    inner = error_of(missing)["innerError"]
    assert set(inner) == {"date", "request-id", "client-request-id"}
    assert inner["request-id"] == missing.headers["request-id"]
    assert error_of(missing)["code"] == "Request_ResourceNotFound"
    assert error_of(missing)["message"].startswith("Resource 'nobody@nowhere.example' does not")


def test_get_user_by_percent_encoded_upn_case_insensitive(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """A UPN with %23EXT%23 in any case resolves to the user; a double slash is tolerated."""
    response = graph.get(
        f"{emulator.base_url}//users/{ADELE_UPN.upper().replace('#', '%23')}",
        params={"$select": "id,userPrincipalName"},
    )
    assert response.status_code == 200
    assert response.json() == {
        "@odata.context": f"{emulator.base_url}/$metadata#users(id,userPrincipalName)/$entity",
        "id": ADELE,
        "userPrincipalName": ADELE_UPN,
    }


def test_default_properties_hide_emulator_fields(graph: httpx.Client) -> None:
    """Without $select the user has the default set and no emulator-only or unselected fields."""
    body = graph.get(f"/users/{ROLF}").json()
    assert body["userType"] == "Guest" and body["otherMails"] == ["rolf.admin@adatum.example"]
    assert not [k for k in body if k.startswith("_")]
    assert "externalUserState" not in body


def test_filter_by_mail_is_case_insensitive(graph: httpx.Client) -> None:
    """mail eq and userType eq filters, combined with or/and, match case-insensitively."""
    response = graph.get(
        "/users",
        params={
            "$filter": "userType eq 'guest' and (mail eq 'LEE.GU@contoso.com' or mail eq 'adele.vance@contoso.com')",
            "$select": "id",
        },
    )
    assert [u["id"] for u in response.json()["value"]] == [ADELE, "5e0c1d2a-0008-4a5b-9c3d-000000000008"]


def test_other_mails_and_proxy_address_filters_need_no_advanced_query(graph: httpx.Client) -> None:
    """otherMails/any and proxyAddresses/any with eq are default filters: no ConsistencyLevel or $count."""
    shared = graph.get("/users", params={"$filter": "otherMails/any(m:m eq 'shared@northwind.example')"})
    assert shared.status_code == 200
    assert [u["id"] for u in shared.json()["value"]] == [SHARED_A, SHARED_B]
    assert "@odata.count" not in shared.json()
    taken = graph.get("/users", params={"$filter": "proxyAddresses/any(x:x eq 'smtp:taken@contoso.com')"})
    assert [u["id"] for u in taken.json()["value"]] == [TAKEN_OWNER]


def test_proxy_addresses_filter_with_advanced_query(graph: httpx.Client) -> None:
    """proxyAddresses/any matches the SMTP address regardless of prefix case."""
    response = graph.get(
        "/users",
        headers={"ConsistencyLevel": "eventual"},
        params={"$filter": "proxyAddresses/any(x:x eq 'smtp:TAKEN@contoso.com')", "$count": "true", "$select": "id"},
    )
    assert response.json()["@odata.count"] == 1
    assert response.json()["value"] == [{"id": TAKEN_OWNER}]


def test_unparseable_filter_is_bad_request(graph: httpx.Client) -> None:
    """A filter outside the grammar is 400 BadRequest 'Invalid filter clause'."""
    response = graph.get("/users", params={"$filter": "mail eq adele@contoso.com"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "BadRequest"
    assert error_of(response)["message"].startswith("Invalid filter clause")


def test_top_pages_with_next_link(graph: httpx.Client) -> None:
    """$top limits a page and @odata.nextLink fetches the rest in directory order."""
    first = graph.get("/users", params={"$top": "8", "$select": "id"}).json()
    second = graph.get(first["@odata.nextLink"]).json()
    ids = [u["id"] for u in first["value"] + second["value"]]
    assert len(first["value"]) == 8 and len(ids) == FIXTURE_USERS and ids[0] == ADELE
    assert "@odata.nextLink" not in second


def roles(graph: httpx.Client, user_id: str, *, transitive: bool) -> httpx.Response:
    if transitive:
        return graph.get(
            graph.base_url.copy_with(path="/beta/roleManagement/directory/transitiveRoleAssignments"),
            params={"$count": "true", "$filter": f"principalId eq '{user_id}'"},
            headers={"ConsistencyLevel": "eventual"},
        )
    return graph.get("/roleManagement/directory/roleAssignments", params={"$filter": f"principalId eq '{user_id}'"})


def test_direct_role_assignments_at_any_scope(graph: httpx.Client) -> None:
    """v1.0 roleAssignments lists direct assignments, tenant-wide or scoped, custom roles included."""
    [rolf] = roles(graph, ROLF, transitive=False).json()["value"]
    assert (rolf["principalId"], rolf["directoryScopeId"]) == (ROLF, "/")
    assert rolf["roleDefinitionId"] == "fe930be7-5e62-47db-91af-98c3a49a38b1"
    [ursula] = roles(graph, URSULA, transitive=False).json()["value"]
    assert ursula["directoryScopeId"].startswith("/administrativeUnits/")
    assert roles(graph, GAIL, transitive=False).json()["value"] == []  # her role is the group's
    assert roles(graph, ADELE, transitive=False).json()["value"] == []


def test_transitive_role_assignments_include_role_assignable_groups(graph: httpx.Client) -> None:
    """Beta transitiveRoleAssignments lists a group-held role with the group as principal."""
    response = roles(graph, GAIL, transitive=True)
    assert response.status_code == 200 and response.json()["@odata.count"] == 1
    [held] = response.json()["value"]
    assert held["principalId"] == HELPDESK_GROUP
    assert held["roleDefinitionId"] == "729827e3-9c14-49f7-bb1b-9608f156bbb8"
    assert roles(graph, ADELE, transitive=True).json()["value"] == []  # an ordinary group gives no role


def test_transitive_role_assignments_need_their_advanced_query_and_beta(graph: httpx.Client) -> None:
    """Without ConsistencyLevel Graph documents a 404; under v1.0 the segment does not exist."""
    beta = graph.base_url.copy_with(path="/beta/roleManagement/directory/transitiveRoleAssignments")
    no_header = graph.get(beta, params={"$count": "true", "$filter": f"principalId eq '{GAIL}'"})
    assert no_header.status_code == 404
    v1 = graph.get(
        "/roleManagement/directory/transitiveRoleAssignments", params={"$filter": f"principalId eq '{GAIL}'"}
    )
    assert v1.status_code == 400 and "transitiveRoleAssignments" in error_of(v1)["message"]


def test_missing_permission_is_403_authorization_request_denied(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """Without RoleManagement.Read.Directory the role read is refused, users can still be read."""
    emulator.control.set_app_permissions(["User.ReadWrite.All"])
    for transitive in (False, True):
        denied = roles(graph, ROLF, transitive=transitive)
        assert denied.status_code == 403
        assert error_of(denied)["code"] == "Authorization_RequestDenied"
        assert error_of(denied)["message"] == "Insufficient privileges to complete the operation."
    assert graph.get(f"/users/{ADELE}").status_code == 200
    emulator.control.set_app_permissions(["User.Invite.All"])  # not enough for a reset
    assert graph.post("/invitations", json=reset_body()).status_code == 403
    emulator.control.reset()
    assert roles(graph, ROLF, transitive=False).status_code == 200


def test_patch_mail_owned_by_another_object_conflicts(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """PATCH mail to another user's proxy address is 400 with ObjectConflict details."""
    response = graph.patch(f"/users/{BRIAN}", json={"mail": "Taken.Alias@contoso.com"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "Request_BadRequest"
    assert error["message"] == ("Another object with the same value for property proxyAddresses already exists.")
    assert error["details"][0] == {"code": "ObjectConflict", "message": error["message"], "target": "proxyAddresses"}
    assert emulator.control.user(BRIAN)["mail"] == "brian.johnson@litware.example"


def test_unknown_route_is_bad_request(graph: httpx.Client) -> None:
    """An unknown segment gets Graph's 'Resource not found for the segment' 400."""
    response = graph.get("/groupz")
    assert response.status_code == 400
    assert error_of(response) | {"innerError": None} == {
        "code": "BadRequest",
        "message": "Resource not found for the segment 'groupz'.",
        "innerError": None,
    }


# --- POST /invitations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "message_part"),
    [
        (reset_body(email=None), 400, "BadRequest", "invitedUserEmailAddress"),
        (reset_body(email="adele+x@contoso.com"), 400, "BadRequest", "is invalid"),
        (reset_body(email=".adele@contoso.com"), 400, "BadRequest", "is invalid"),
        (reset_body(inviteRedirectUrl=None), 400, "BadRequest", "inviteRedirectUrl"),
        (
            reset_body(
                invitedUserMessageInfo={
                    "ccRecipients": [
                        {"emailAddress": {"address": "a@contoso.com"}},
                        {"emailAddress": {"address": "b@contoso.com"}},
                    ]
                }
            ),
            400,
            "BadRequest",
            "one cc recipient",
        ),
        (reset_body(resetRedemption=None), 400, "BadRequest", "only implements reset invitations"),
        (reset_body(invitedUser={}), 400, "BadRequest", "invitedUser.id is required"),
        (reset_body(user_id="00000000-0000-0000-0000-00000000beef"), 404, "Request_ResourceNotFound", "does not exist"),
        (
            reset_body(email="someone.else@contoso.com"),
            400,
            "BadRequest",
            "doesn't match any emails on the user object",
        ),
        (
            reset_body(user_id=ROLF, email="rolf.admin@adatum.example"),
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ),
        (
            reset_body(user_id=GAIL, email="gail.group@adatum.example"),
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ),
    ],
    ids=[
        "no-email",
        "plus-sign",
        "leading-dot",
        "no-redirect",
        "two-cc",
        "not-reset",
        "no-user-id",
        "unknown-user",
        "email-mismatch",
        "directory-role",
        "group-held-role",
    ],
)
def test_invitation_validation(
    graph: httpx.Client, emulator: EmulatorHandle, body: dict[str, Any], status: int, code: str, message_part: str
) -> None:
    """Each invalid reset request fails with Graph's status and code and changes nothing."""
    response = graph.post("/invitations", json=body)
    assert response.status_code == status
    assert error_of(response)["code"] == code
    assert message_part in error_of(response)["message"]
    assert emulator.control.invitations() == []


def test_reset_with_other_mails_address_updates_user_state(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """A reset to an otherMails address returns 201 and moves the user to PendingAcceptance."""
    response = graph.post(
        "/invitations",
        json=reset_body(
            BRIAN,
            "Brian.J@tailspin.example",
            invitedUserMessageInfo={
                "messageLanguage": "de-DE",
                "ccRecipients": [{"emailAddress": {"address": "helpdesk@fabrikam.com"}}],
            },
        ),
    )
    assert response.status_code == 201
    invitation = response.json()
    assert invitation["status"] == "PendingAcceptance"
    assert invitation["invitedUserType"] == "Guest"
    assert invitation["invitedUser"] == {
        "id": BRIAN,
        "userPrincipalName": "brian.johnson_litware.example#EXT#@fabrikam.onmicrosoft.com",
    }
    assert invitation["invitedUserMessageInfo"]["messageLanguage"] == "de-DE"
    stored = emulator.control.user("BRIAN.JOHNSON_litware.example#EXT#@fabrikam.onmicrosoft.com")
    assert stored["externalUserState"] == "PendingAcceptance"
    assert stored["externalUserStateChangeDateTime"].endswith("Z")
    assert stored["externalUserStateChangeDateTime"] > "2024-03-01T10:00:00Z"
    assert stored["_invitationCount"] == 1


def test_stale_reads_show_the_user_as_before_the_invitation(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """Replication lag: the next reads (by id or UPN) still show the old state, then the new one."""
    before = graph.get(f"/users/{ADELE}?$select=externalUserState").json()["externalUserState"]
    assert before != "PendingAcceptance"
    emulator.control.set_stale_reads(2)
    assert graph.post("/invitations", json=reset_body()).status_code == 201
    select = "?$select=externalUserState"
    assert graph.get(f"/users/{ADELE}{select}").json()["externalUserState"] == before
    assert graph.get(f"/users/{quote(ADELE_UPN)}{select}").json()["externalUserState"] == before
    assert graph.get(f"/users/{ADELE}{select}").json()["externalUserState"] == "PendingAcceptance"
    assert emulator.control.user(ADELE)["externalUserState"] == "PendingAcceptance"
    emulator.control.reset()  # switches the lag off again
    assert graph.post("/invitations", json=reset_body()).status_code == 201
    assert graph.get(f"/users/{ADELE}{select}").json()["externalUserState"] == "PendingAcceptance"


def test_replication_lag_after_patch(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """With lag on, a patched user reads, is found by advanced queries and is invited as before the PATCH;
    default filters see the change at once; the lag ends by itself."""
    emulator.control.set_replication_lag(30)
    assert graph.patch(f"/users/{ADELE}", json={"otherMails": ["adele@new.example"]}).status_code == 204
    assert graph.get(f"/users/{ADELE}?$select=otherMails").json()["otherMails"] == ["adele.vance@contoso.com"]
    by_filter = {"$filter": "otherMails/any(m:m eq 'adele@new.example')", "$select": "id"}
    assert [u["id"] for u in graph.get("/users", params=by_filter).json()["value"]] == [ADELE]
    lagging = graph.get("/users", params={**by_filter, "$count": "true"}, headers={"ConsistencyLevel": "eventual"})
    assert lagging.json()["value"] == []
    refused = graph.post("/invitations", json=reset_body(email="adele@new.example"))
    assert refused.status_code == 400 and "doesn't match any emails" in error_of(refused)["message"]
    emulator.control.set_replication_lag(0.3)
    assert graph.patch(f"/users/{LEE}", json={"otherMails": ["lee@new.example"]}).status_code == 204
    deadline = time.monotonic() + 10
    while graph.get(f"/users/{LEE}?$select=otherMails").json()["otherMails"] != ["lee@new.example"]:
        assert time.monotonic() < deadline, "the lag never ended"
        time.sleep(0.05)
    assert graph.post("/invitations", json=reset_body(LEE, "lee@new.example")).status_code == 201


def test_internal_member_is_not_special_cased(graph: httpx.Client) -> None:
    """The emulator lets a member be reset, so tests can catch an app that forgets to check."""
    response = graph.post("/invitations", json=reset_body(MEGAN, "meganb@fabrikam.com"))
    assert response.status_code == 201


# --- faults, throttling, latency, journal, reset --------------------------------------------


def test_fault_rule_with_fractional_retry_after(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """A 429 rule answers once with Retry-After '2.128' and throttle headers, then runs out."""
    emulator.control.add_fault(method="POST", path="/invitations", status=429, retry_after="2.128")
    throttled = graph.post("/invitations", json=reset_body())
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "2.128"
    assert throttled.headers["x-ms-throttle-information"]
    assert error_of(throttled)["code"] == "TooManyRequests"
    assert error_of(throttled)["message"] == "Please retry again later."
    assert graph.post("/invitations", json=reset_body()).status_code == 201
    entries = emulator.control.journal(method="POST")
    assert [e["throttled"] for e in entries] == [True, False]
    assert entries[0]["fault"]["source"] == "rule"


def test_after_processing_504_still_sends_the_invitation(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """An afterProcessing 504 hides a reset that really happened (the duplicate-email risk)."""
    emulator.control.add_fault(method="POST", path="^/invitations$", status=504, after_processing=True)
    response = graph.post("/invitations", json=reset_body())
    assert response.status_code == 504
    assert error_of(response)["code"] == "GatewayTimeout"
    stored = emulator.control.user(ADELE)
    assert stored["externalUserState"] == "PendingAcceptance"
    assert stored["externalUserStateChangeDateTime"] != "2024-03-01T10:00:00Z"
    assert len(emulator.control.invitations()) == 1


def test_drop_closes_connection_without_response(emulator: EmulatorHandle) -> None:
    """A drop rule closes the socket, which httpx reports as a protocol/read error."""
    emulator.control.add_fault(method="GET", path="/users", status=None, drop=True)
    with httpx.Client(headers={"Authorization": "Bearer x"}) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.get(f"{emulator.base_url}/users/{ADELE}")
        assert client.get(f"{emulator.base_url}/users/{ADELE}").status_code == 200
    assert emulator.control.journal()[0]["fault"]["drop"] is True


def test_write_budget_throttles_writes_only(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """Beyond the write bucket a PATCH gets 429 WriteLimitExceeded; reads still pass."""
    emulator.control.set_write_budget(per_second=0.5, burst=2)
    statuses = [graph.patch(f"/users/{ADELE}", json={"jobTitle": f"t{i}"}).status_code for i in range(3)]
    assert statuses == [204, 204, 429]
    assert graph.get(f"/users/{ADELE}").status_code == 200
    last = emulator.control.journal(method="PATCH")[-1]
    assert last["throttled"] is True and last["fault"]["source"] == "writeBudget"
    throttled = graph.patch(f"/users/{ADELE}", json={"jobTitle": "x"})
    assert throttled.headers["x-ms-throttle-information"] == "WriteLimitExceeded"
    assert throttled.headers["Retry-After"] == "2"
    emulator.control.set_write_budget(None)
    assert graph.patch(f"/users/{ADELE}", json={"jobTitle": "y"}).status_code == 204


def test_seeded_chaos_injects_faults(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """Chaos with p503=1 fails every Graph call until switched off."""
    emulator.control.set_chaos(p503=1.0, retry_after=1, seed=7)
    response = graph.get(f"/users/{ADELE}")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    emulator.control.set_chaos()
    assert graph.get(f"/users/{ADELE}").status_code == 200


def test_latency_is_applied(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """Configured latency delays every Graph response."""
    emulator.control.set_latency(200)
    started = time.perf_counter()
    graph.get(f"/users/{ADELE}")
    assert time.perf_counter() - started >= 0.2


def test_journal_records_request_details(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """The journal keeps the Authorization value, ConsistencyLevel, query and parsed body."""
    graph.get("/users", params={"$filter": "mail eq 'lee.gu@contoso.com'"}, headers={"ConsistencyLevel": "eventual"})
    graph.post("/invitations", json=reset_body())
    get, post = emulator.control.journal()
    assert get["authorization"] == f"Bearer {PLACEHOLDER}"
    assert get["consistencyLevel"] == "eventual"
    assert get["query"] == {"$filter": "mail eq 'lee.gu@contoso.com'"}
    assert post["body"]["invitedUser"] == {"id": ADELE} and post["status"] == 201
    assert post["seq"] > get["seq"] and post["ts"] >= get["ts"]


def test_reset_restores_fixture(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """POST /_emulator/reset reloads users and clears journal and faults."""
    emulator.control.set_users([{"id": "only-user", "displayName": "Only"}])
    emulator.control.add_fault(method=None, path=".*", status=500, times=None)
    emulator.control.reset()
    assert emulator.control.journal() == []
    assert graph.get(f"/users/{ADELE}").status_code == 200
    assert len(emulator.control.users()) == FIXTURE_USERS
    assert graph.get("/users/only-user").status_code == 404
