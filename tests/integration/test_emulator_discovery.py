"""The emulator's parts for guest discovery: generated tenants, paging, the find filters and userrealm."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tools.graph_emulator.runner import EmulatorHandle
from tools.graph_emulator.tenant import generate_guests

GUESTS = "userType eq 'Guest'"
ADVANCED = {"ConsistencyLevel": "eventual"}


@pytest.fixture
def graph(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    emulator.control.reset()
    with httpx.Client(base_url=emulator.base_url, headers={"Authorization": "Bearer placeholder"}) as client:
        yield client
    emulator.control.reset()


@pytest.fixture
def login(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.root_url) as client:
        yield client
    emulator.control.reset()


def pages(graph: httpx.Client, params: dict[str, str], headers: dict[str, str] | None = None) -> list[list[Any]]:
    """Every page of a user listing, following @odata.nextLink with the same headers."""
    found = []
    response = graph.get("/users", params=params, headers=headers)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        found.append(body["value"])
        if "@odata.nextLink" not in body:
            return found
        response = graph.get(body["@odata.nextLink"], headers=headers)


def test_generated_tenant_mixes_states_issuers_and_domains(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """`--guests N` style generation: every guest has identities and createdDateTime, in a realistic mix."""
    emulator.control.generate_tenant(600, seed=7, domains=40, keep_fixture=False)
    users = [
        u
        for page in pages(
            graph, {"$filter": GUESTS, "$top": "999", "$select": "id,mail,externalUserState,identities,createdDateTime"}
        )
        for u in page
    ]
    assert len(users) == 600 and all(u["createdDateTime"] and u["identities"] for u in users)
    states = Counter(u["externalUserState"] for u in users)
    assert set(states) == {"Accepted", "PendingAcceptance"} and states["PendingAcceptance"] > 60
    issuers = Counter(i["issuer"] for u in users for i in u["identities"] if i["signInType"] == "federated")
    assert set(issuers) == {"ExternalAzureAD", "MicrosoftAccount", "mail", "google.com"}
    domains = {u["mail"].split("@")[1] for u in users}
    assert 30 <= len(domains) <= 43  # the pool does not grow with the tenant
    assert generate_guests(5, seed=7, domains=40) == generate_guests(5, seed=7, domains=40)


def test_paging_with_top_follows_next_links_to_the_last_guest(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """$top sets the page size (1-999); the nextLink carries the query on; no guest is read twice."""
    emulator.control.generate_tenant(250, keep_fixture=False)
    found = pages(graph, {"$filter": GUESTS, "$top": "100", "$select": "id"})
    assert [len(p) for p in found] == [100, 100, 50]
    assert len({u["id"] for p in found for u in p}) == 250
    assert graph.get("/users", params={"$top": "1000"}).json()["error"]["code"] == "Request_BadRequest"


def test_ends_with_needs_advanced_query_parameters(graph: httpx.Client) -> None:
    """endsWith on mail/otherMails answers only with ConsistencyLevel: eventual and $count (else Graph's error)."""
    ends = "'@litware.example'"
    domain = f"userType eq 'Guest' and (endsWith(mail,{ends}) or otherMails/any(m:endsWith(m,{ends})))"
    plain = graph.get("/users", params={"$filter": domain})
    assert plain.status_code == 400
    assert plain.json()["error"]["message"].startswith("Operator 'endsWith' is not supported")
    without_count = graph.get("/users", params={"$filter": domain}, headers=ADVANCED)
    assert without_count.status_code == 400
    select = {"$filter": domain, "$count": "true", "$select": "mail,otherMails"}
    body = graph.get("/users", params=select, headers=ADVANCED).json()
    # By mail (Brian, Pradeep) or by an otherMails address only (Nora and Otto have no mail).
    assert sorted(u["mail"] or u["otherMails"][0] for u in body["value"]) == [
        "brian.johnson@litware.example",
        "nora.nomail@litware.example",
        "otto@litware.example",
        "pradeep.gupta@litware.example",
    ]
    assert body["@odata.count"] == 4


def test_created_date_range_is_a_default_filter(emulator: EmulatorHandle, graph: httpx.Client) -> None:
    """createdDateTime ge/le needs no advanced query; null dates match no range."""
    emulator.control.put_user(
        {"id": "d1", "userType": "Guest", "mail": "old@x.example", "createdDateTime": "2019-05-01T00:00:00Z"}
    )
    emulator.control.put_user({"id": "d2", "userType": "Guest", "mail": "undated@x.example"})
    body = graph.get(
        "/users", params={"$filter": f"{GUESTS} and createdDateTime le 2020-01-01T00:00:00Z", "$select": "id"}
    ).json()
    assert [u["id"] for u in body["value"]] == ["d1"]
    after = graph.get(
        "/users", params={"$filter": f"{GUESTS} and createdDateTime ge 2023-01-01T00:00:00Z", "$select": "id"}
    ).json()
    assert "d1" not in {u["id"] for u in after["value"]} and "d2" not in {u["id"] for u in after["value"]}


def test_userrealm_answers_managed_unmanaged_federated_and_unknown(
    emulator: EmulatorHandle, login: httpx.Client
) -> None:
    """The login host's userrealm: IsViral for unmanaged tenants, NameSpaceType always, Unknown for strangers."""
    emulator.control.set_realms({"fabrikam.net": {"nameSpaceType": "Managed", "isViral": True}})

    def realm(address: str) -> dict[str, Any]:
        response = login.get(f"/common/userrealm/{address}", params={"api-version": "2.1"})
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    assert realm("a@contoso.com")["NameSpaceType"] == "Managed" and realm("a@contoso.com")["IsViral"] is False
    assert realm("b@fabrikam.net")["IsViral"] is True and realm("b@fabrikam.net")["DomainName"] == "fabrikam.net"
    assert realm("c@adatum.example")["NameSpaceType"] == "Federated"
    unknown = realm("d@nowhere.example")
    assert unknown["NameSpaceType"] == "Unknown" and "IsViral" not in unknown
    query_form = login.get("/common/userrealm", params={"user": "e@fabrikam.net", "api-version": "2.1"})
    assert query_form.json()["IsViral"] is True
    assert login.get("/common/userrealm/a@contoso.com").status_code == 400  # api-version 2.1 only
    lookups = emulator.control.realm_lookups()
    assert len(lookups) == 8 and all(entry["authorization"] is None for entry in lookups)


def test_userrealm_failure_can_be_injected_per_domain(emulator: EmulatorHandle, login: httpx.Client) -> None:
    """A realm with a status answers that HTTP error, so callers' fail-safe handling can be tested."""
    emulator.control.set_realms({"flaky.example": {"status": 503}})
    response = login.get("/common/userrealm/a@flaky.example", params={"api-version": "2.1"})
    assert response.status_code == 503 and emulator.control.realm_lookups()[-1]["status"] == 503
