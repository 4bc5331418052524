"""What guest discovery reads from Microsoft Graph and the Entra login host, behind one small gateway.

Each call carries exactly the headers Microsoft documents for it (docs/bulk.md has the sources):

- listing guests, ``GET /users?$filter=userType eq 'Guest' ...&$select=...&$top=999`` and then
  every ``@odata.nextLink``: ``userType eq`` and ``createdDateTime ge/le`` work by default, so
  those pages go out plain; ``endsWith`` (the domain filters) is served only as an advanced
  query, so then ``ConsistencyLevel: eventual`` and ``$count=true`` go with every page;
- reading one guest, ``GET /users/{id}?$select=...``;
- a domain's home realm, ``GET {login host}/common/userrealm/{address}?api-version=2.1``:
  anonymous, so the Graph token never goes to the login host.

Lookups by address and the "who owns this address" check go through the reset's own gateway
(``GraphGateway.find_user``, ``users_owning_email``), so `find` and the worker decide alike.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx

from shared.platform.errors import (
    GraphRequestError,
    TransientError,
    UserNotFoundError,
    classify_graph_response,
)
from shared.platform.logs import app_logger
from shared.platform.settings import Settings
from shared.reset.graph import GraphGateway
from shared.reset.throttle import RetryPolicy, WriteBudget, call_with_retries

log = app_logger()

# Everything `find` decides on or reports; explicit, so Graph does less work and we parse less.
GUEST_SELECT = (
    "id",
    "userPrincipalName",
    "mail",
    "otherMails",
    "userType",
    "externalUserState",
    "externalUserStateChangeDateTime",
    "createdDateTime",
    "identities",
)
PAGE_SIZE = 999  # the largest $top Graph accepts for users
REALM_API_VERSION = "2.1"
_TOKEN_MARGIN = 300.0  # renew a token this many seconds before it expires


def parse_graph_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class DirectoryGuest:
    """A guest as discovery sees it (our model, not Graph's JSON)."""

    id: str
    user_principal_name: str
    mail: str | None
    other_mails: tuple[str, ...]
    user_type: str | None
    external_user_state: str | None
    # Graph's own text (externalUserStateChangeDateTime, createdDateTime): parsed only when a
    # criterion compares it, which saves two parses per guest on every page.
    state_changed: str | None
    created: str | None
    # Issuers of the identities the guest signs in with (not the userPrincipalName one every user has).
    issuers: tuple[str, ...]

    @property
    def state_changed_at(self) -> datetime | None:
        return parse_graph_time(self.state_changed)

    @property
    def created_at(self) -> datetime | None:
        return parse_graph_time(self.created)

    @property
    def is_guest(self) -> bool:
        return (self.user_type or "").lower() == "guest"

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.mail, *self.other_mails) if self.mail else self.other_mails

    @classmethod
    def from_graph(cls, data: dict[str, Any]) -> DirectoryGuest:
        identities = data.get("identities") or ()
        issuers = tuple(
            str(i.get("issuer"))
            for i in identities
            if isinstance(i, dict) and i.get("issuer") and i.get("signInType") != "userPrincipalName"
        )
        return cls(
            id=str(data["id"]),
            user_principal_name=str(data.get("userPrincipalName") or ""),
            mail=data.get("mail") or None,
            other_mails=tuple(m for m in data.get("otherMails") or () if isinstance(m, str)),
            user_type=data.get("userType"),
            external_user_state=data.get("externalUserState"),
            state_changed=data.get("externalUserStateChangeDateTime") or None,
            created=data.get("createdDateTime") or None,
            issuers=issuers,
        )


@dataclass(frozen=True)
class GuestQuery:
    """One listing of guests: the ``$filter`` and whether Graph serves it only as an advanced query."""

    odata_filter: str
    advanced: bool = False
    page_size: int = PAGE_SIZE

    def describe(self) -> dict[str, Any]:
        return {"filter": self.odata_filter, "advancedQuery": self.advanced, "top": self.page_size}


@dataclass(frozen=True)
class GuestPage:
    """One page of a listing; ``count`` is ``@odata.count`` when the query asked for it."""

    guests: list[DirectoryGuest]
    count: int | None = None


@dataclass(frozen=True)
class HomeRealm:
    """The login host's answer for a domain; ``error`` set means the lookup failed (never unmanaged then)."""

    domain: str
    name_space_type: str
    is_viral: bool
    error: str | None = None

    @property
    def unmanaged(self) -> bool:
        return self.is_viral and self.error is None

    @classmethod
    def from_answer(cls, domain: str, body: Any) -> HomeRealm:
        body = body if isinstance(body, dict) else {}
        viral = body.get("IsViral")
        return cls(
            domain,
            str(body.get("NameSpaceType") or "Unknown"),
            viral is True or (isinstance(viral, str) and viral.lower() == "true"),
        )


class GuestDirectory(Protocol):
    """The reads guest discovery makes; each method says what it does."""

    def guest_pages(self, query: GuestQuery) -> AsyncIterator[GuestPage]:
        """Every page of guests matching ``query``, in Graph's order."""
        ...

    async def read_guest(self, user_id: str) -> DirectoryGuest | None:
        """One user by object id; None when Graph has no such user."""
        ...

    async def user_id_by_address(self, address: str) -> str | None:
        """The one user whose mail or otherMails holds ``address``; None when none (raises when many)."""
        ...

    async def owners_of(self, address: str) -> list[str]:
        """Object ids of every user whose mail, otherMails or proxyAddresses holds ``address``."""
        ...

    async def home_realm(self, address: str) -> HomeRealm:
        """The login host's answer for the domain of ``address`` (a failed lookup is an answer with error)."""
        ...

    async def aclose(self) -> None: ...


class _Token:
    """A Graph token from the app's credential, reused until shortly before it expires."""

    def __init__(self, credential: Any, scope: str) -> None:
        self._credential = credential
        self._scope = scope
        self._value = ""
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def header(self) -> str:
        if time.time() >= self._expires - _TOKEN_MARGIN:
            async with self._lock:
                if time.time() >= self._expires - _TOKEN_MARGIN:
                    token = await self._credential.get_token(self._scope)
                    self._value, self._expires = token.token, float(token.expires_on)
        return f"Bearer {self._value}"


class GraphGuestDirectory:
    """``GuestDirectory`` over httpx (listing, reading, userrealm) and the reset gateway (lookups)."""

    def __init__(
        self,
        settings: Settings,
        gateway: GraphGateway,
        *,
        policy: RetryPolicy,
        credential: Any | None = None,
        realm_attempts: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        from shared.reset.graph_sdk import make_credential

        self._settings = settings
        self._gateway = gateway
        self._policy = policy
        self._budget = WriteBudget(settings.graph_writes_per_second)  # reads only: it carries 429 pauses
        self._credential = credential or make_credential(settings)
        self._token = _Token(self._credential, settings.graph_scope)
        self._realm_policy = RetryPolicy(policy.delays, min(realm_attempts, policy.max_attempts))
        self._transport = transport
        self._tls = httpx.create_ssl_context()  # ~0.2 s (the CA bundle): built once for both clients
        self._graph = self._client()
        self._login: httpx.AsyncClient | None = None  # made on the first realm lookup
        origin = urlsplit(settings.graph_base_url)
        self._graph_origin = (origin.scheme, origin.netloc)

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self._settings.graph_timeout_seconds, connect=10.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
            headers={"Accept": "application/json"},
            transport=self._transport,
            verify=self._tls,
        )

    async def _get(self, url: str, what: str, *, advanced: bool = False) -> Any:
        raw = await self._get_bytes(url, what, advanced=advanced)
        return json.loads(raw) if raw else None

    async def _get_bytes(self, url: str, what: str, *, advanced: bool = False) -> bytes:
        """The body of a successful GET (a waiting page costs its bytes, not its parsed JSON)."""
        headers = {"Authorization": await self._token.header()}
        if advanced:
            headers["ConsistencyLevel"] = "eventual"

        async def attempt() -> bytes:
            await self._budget.wait_if_paused()
            try:
                # Streamed, so the page's bytes are not kept on the response: httpx's response and
                # its stream refer to each other, and a kept page would wait for the cycle collector.
                async with self._graph.stream("GET", url, headers=headers) as response:
                    raw = b"".join([chunk async for chunk in response.aiter_bytes()])
            except httpx.TransportError as fault:
                raise TransientError(
                    f"Graph call failed in transit ({type(fault).__name__})", code="GraphTimeout"
                ) from None
            if response.status_code >= 400:
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                raise classify_graph_response(response.status_code, body, response.headers)
            return raw

        return await call_with_retries(attempt, policy=self._policy, budget=self._budget, what=what)

    def _on_graph_host(self, link: str) -> bool:
        parts = urlsplit(link)
        return (parts.scheme, parts.netloc) == self._graph_origin

    def _next_link(self, link: str) -> str:
        # The token goes only to the Graph host the settings name, whatever a response says.
        if not self._on_graph_host(link):
            raise GraphRequestError(
                f"Graph's @odata.nextLink points to {urlsplit(link).netloc}, not to the Graph host; "
                "the listing stops there (the token is not sent elsewhere)",
                code="GraphBadNextLink",
            )
        return link

    async def guest_pages(self, query: GuestQuery) -> AsyncIterator[GuestPage]:
        params = {"$filter": query.odata_filter, "$select": ",".join(GUEST_SELECT), "$top": str(query.page_size)}
        if query.advanced:
            params["$count"] = "true"
        url = f"{self._settings.graph_base_url}/users?" + "&".join(
            f"{name}={quote(value, safe=',')}" for name, value in params.items()
        )

        # Pages come one after another (a nextLink is in its page), so the next request goes out
        # as soon as the nextLink is known: read from the head of the bytes (Graph writes the
        # @odata annotations before "value"), checked against the parsed page, which is then
        # matched while Graph works on the next one.
        def fetch(link: str) -> asyncio.Task[bytes]:
            return asyncio.create_task(
                self._get_bytes(self._next_link(link), "listing guests", advanced=query.advanced)
            )

        fetching: asyncio.Task[bytes] | None = asyncio.create_task(
            self._get_bytes(url, "listing guests", advanced=query.advanced)
        )
        try:
            while fetching is not None:
                raw = await fetching
                peeked = _peek_next_link(raw)
                if peeked is not None and not self._on_graph_host(peeked):
                    peeked = None  # the parsed page decides (and refuses it if it says the same)
                fetching = fetch(peeked) if peeked else None
                # Parsed in a worker thread: the event loop sends the next request meanwhile
                # (parsing here would hold it until this page's 30-50 ms of CPU are done).
                page, link = await asyncio.to_thread(_parse_page, raw)
                del raw
                if link != peeked:  # the head said otherwise than the page: follow the page
                    if fetching is not None:
                        fetching.cancel()
                    fetching = fetch(link) if link else None
                yield page
        finally:
            if fetching is not None:
                fetching.cancel()

    async def read_guest(self, user_id: str) -> DirectoryGuest | None:
        url = f"{self._settings.graph_base_url}/users/{quote(user_id, safe='')}?$select={','.join(GUEST_SELECT)}"
        try:
            return DirectoryGuest.from_graph(await self._get(url, "reading a listed guest"))
        except UserNotFoundError:
            return None

    async def user_id_by_address(self, address: str) -> str | None:
        try:
            return (await self._gateway.find_user(email=address)).id
        except UserNotFoundError:
            return None

    async def owners_of(self, address: str) -> list[str]:
        return [user.id for user in await self._gateway.users_owning_email(address)]

    async def home_realm(self, address: str) -> HomeRealm:
        domain = address.rsplit("@", 1)[-1].lower()
        url = f"{self._settings.login_base_url}/common/userrealm/{quote(address, safe='@')}"

        if self._login is None:
            self._login = self._client()
        login = self._login

        async def attempt() -> HomeRealm:
            try:
                response = await login.get(url, params={"api-version": REALM_API_VERSION})
            except httpx.TransportError as fault:
                raise TransientError(f"userrealm lookup failed in transit ({type(fault).__name__})") from None
            if response.status_code == 429 or response.status_code >= 500:
                raise TransientError(f"the login host answered HTTP {response.status_code}")
            if response.status_code >= 400:
                # MSAL treats a 404 as "this login host has no user realm discovery"; any 4xx is
                # an answer we cannot read: the domain is never reported unmanaged on it.
                return HomeRealm(domain, "Unknown", False, f"the login host answered HTTP {response.status_code}")
            return HomeRealm.from_answer(domain, _json(response))

        try:
            return await call_with_retries(
                attempt, policy=self._realm_policy, budget=WriteBudget(1.0), what="looking up a home realm"
            )
        except TransientError as error:
            log.warning("home realm of %s unknown: %s", domain, error.message)
            return HomeRealm(domain, "Unknown", False, error.message)

    async def aclose(self) -> None:
        await self._graph.aclose()
        if self._login is not None:
            await self._login.aclose()
        close = getattr(self._credential, "close", None)
        if close is not None:
            await close()


def _parse_page(raw: bytes) -> tuple[GuestPage, str | None]:
    """A page of guests (our models only: Graph's JSON is 2-3x their size) and its nextLink."""
    body = json.loads(raw)
    count, link = body.get("@odata.count"), body.get("@odata.nextLink")
    guests = [DirectoryGuest.from_graph(item) for item in body.get("value", [])]
    return GuestPage(guests, count if isinstance(count, int) else None), link if isinstance(
        link, str
    ) and link else None


_NEXT_LINK = re.compile(rb'"@odata\.nextLink"\s*:\s*("(?:[^"\\]|\\.)*")')
_HEAD_BYTES = 4096


def _peek_next_link(raw: bytes) -> str | None:
    """The nextLink if the page's head has one, before the whole page is parsed (None if not there)."""
    head = raw[:_HEAD_BYTES]
    value_at = head.find(b'"value"')
    match = _NEXT_LINK.search(head, 0, value_at if value_at >= 0 else len(head))
    if match is None:
        return None
    try:
        link = json.loads(match.group(1))
    except ValueError:
        return None
    return link if isinstance(link, str) and link else None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json() if response.content else None
    except ValueError:
        return None
