"""The discovery gateway on the wire: headers per query, the token's reach, and fail-safe realm answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shared.bulk.directory import GraphGuestDirectory, GuestQuery
from shared.platform.errors import ResetError
from shared.reset.graph_sdk import PlaceholderCredential
from shared.reset.throttle import RetryPolicy
from tests.factories import settings

GRAPH = "http://127.0.0.1:8765/v1.0"


class Wire:
    """A fake Graph and login host: answers from ``answer`` and records every request."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


def directory(wire: Wire) -> GraphGuestDirectory:
    return GraphGuestDirectory(
        settings(GRAPH_BASE_URL=GRAPH),
        gateway=None,  # type: ignore[arg-type]  # lookups by address are not exercised here
        policy=RetryPolicy((0.0,), 3),
        credential=PlaceholderCredential(),
        transport=httpx.MockTransport(wire),
    )


def page(users: list[dict[str, Any]], next_link: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"value": users}
    if next_link:
        body["@odata.nextLink"] = next_link
    return httpx.Response(200, json=body)


async def collect(gateway: GraphGuestDirectory, query: GuestQuery) -> list[str]:
    ids = [g.id for p in [p async for p in gateway.guest_pages(query)] for g in p.guests]
    await gateway.aclose()
    return ids


async def test_default_query_pages_plainly_and_advanced_query_sends_both_parameters_on_every_page() -> None:
    """No ConsistencyLevel or $count unless the filter needs them; then on the first page and every nextLink."""

    def answer(request: httpx.Request) -> httpx.Response:
        if "skiptoken" in str(request.url):
            return page([{"id": "b", "userType": "Guest"}])
        return page([{"id": "a", "userType": "Guest"}], f"{GRAPH}/users?$skiptoken=1&$count=true")

    plain = Wire(answer)
    assert await collect(directory(plain), GuestQuery("userType eq 'Guest'")) == ["a", "b"]
    first = plain.requests[0]
    assert "ConsistencyLevel" not in first.headers and "$count" not in first.url.params
    assert first.url.params["$top"] == "999" and "identities" in first.url.params["$select"]
    assert first.headers["Authorization"] == f"Bearer {PlaceholderCredential.TOKEN}"

    advanced = Wire(answer)
    await collect(directory(advanced), GuestQuery("userType eq 'Guest' and (endsWith(mail,'@x.example'))", True))
    assert [r.headers.get("ConsistencyLevel") for r in advanced.requests] == ["eventual", "eventual"]
    assert advanced.requests[0].url.params["$count"] == "true"


async def test_a_next_link_to_another_host_is_refused_and_gets_no_token() -> None:
    """The token goes only to the configured Graph host, whatever a response says."""
    wire = Wire(lambda r: page([{"id": "a", "userType": "Guest"}], "https://evil.example/v1.0/users?$skiptoken=1"))
    with pytest.raises(ResetError, match=r"nextLink points to evil\.example"):
        await collect(directory(wire), GuestQuery("userType eq 'Guest'"))
    assert [r.url.host for r in wire.requests] == ["127.0.0.1"]


async def test_userrealm_is_anonymous_and_reads_is_viral() -> None:
    """The login host gets no Authorization header; IsViral true means unmanaged, NameSpaceType is kept."""
    body = {"NameSpaceType": "Managed", "Login": "a@viral.example", "DomainName": "viral.example", "IsViral": True}
    wire = Wire(lambda r: httpx.Response(200, content=json.dumps(body)))
    gateway = directory(wire)
    realm = await gateway.home_realm("a@viral.example")
    await gateway.aclose()
    assert realm.unmanaged and realm.name_space_type == "Managed" and realm.domain == "viral.example"
    [request] = wire.requests
    assert str(request.url) == "http://127.0.0.1:8765/common/userrealm/a@viral.example?api-version=2.1"
    assert "Authorization" not in request.headers


@pytest.mark.parametrize(
    ("response", "calls"),
    [
        (httpx.Response(503), 3),
        (httpx.Response(404), 1),
        (httpx.Response(200, content=b"<html>not json</html>"), 1),
        (httpx.Response(200, json={"NameSpaceType": "Managed", "IsViral": "maybe"}), 1),
    ],
)
async def test_an_unreadable_realm_answer_is_never_unmanaged(response: httpx.Response, calls: int) -> None:
    """Errors (retried when transient), 404s and odd bodies all read as 'not unmanaged': no reset on a guess."""
    wire = Wire(lambda r: response)
    gateway = directory(wire)
    realm = await gateway.home_realm("a@odd.example")
    await gateway.aclose()
    assert not realm.unmanaged and len(wire.requests) == calls


async def test_a_next_link_read_early_is_checked_against_the_parsed_page() -> None:
    """The next request goes out from the page's head; if the whole page says otherwise, the page wins."""

    def answer(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("$skiptoken")
        if token is None:  # duplicate keys: the head names A, the parsed page (last key wins) names B
            body = (
                '{"@odata.nextLink": "'
                + GRAPH
                + '/users?$skiptoken=A", "value": [{"id": "first", "userType": "Guest"}],'
                ' "@odata.nextLink": "' + GRAPH + '/users?$skiptoken=B"}'
            )
            return httpx.Response(200, content=body.encode())
        return page([{"id": f"from-{token}", "userType": "Guest"}])

    wire = Wire(answer)
    assert await collect(directory(wire), GuestQuery("userType eq 'Guest'")) == ["first", "from-B"]
