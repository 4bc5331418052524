"""The Graph gateway on msgraph-sdk: its credential, middleware and request adapter, none of its models.

Where the CPU goes: msgraph-sdk's typed models cost ~60 ms per reset (building field
deserializer tables for the large ``User``/``Invitation`` classes, plus a one-off ~1.2 s import
of ~1,200 model modules on the first response). We keep the SDK's request adapter, auth
provider and middleware chain, but send our own JSON and read the raw response through
kiota's ``NativeResponseHandler``, so no model class is ever built on the per-message path.

Retries are ours, not the SDK's: its RetryHandler re-sends ``POST /invitations`` on 503/504
(a 504 may already have been processed: a second invitation email), does not parse fractional
``Retry-After`` and knows nothing of the worker's shared write budget. So it is switched off
and ``shared.throttle.call_with_retries`` decides, with the ambiguity rule below.

Ambiguous invitation outcome (timeout, dropped connection after the request went out,
500/502/504): ``reset_redemption`` raises ``AmbiguousOutcomeError`` at once and never posts
again in that call; ``shared.reset.readback`` resolves it by evidence. Only failures that
prove nothing was processed (429, 503, 4xx, a connection never made) are retried.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from shared.platform import telemetry
from shared.platform.errors import (
    ROLE_CALL,
    USER_CALL,
    AmbiguousOutcomeError,
    AmbiguousUserError,
    GraphCall,
    TransientError,
    UserNotFoundError,
    classify_graph_response,
)
from shared.platform.logs import app_logger, mask_email
from shared.platform.settings import Settings
from shared.reset.budget import WriteBudget
from shared.reset.deadline import call_timeout
from shared.reset.graph import USER_SELECT, GuestUser, InvitationBody, RoleAssignment, SentInvitation
from shared.reset.throttle import RetryPolicy, call_with_retries

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from kiota_abstractions.request_adapter import RequestAdapter

log = app_logger()

# Reads while waiting for our own email switch to replicate: first after this many seconds,
# then twice as long each time, at most READ_BACK_MAX_INTERVAL apart.
READ_BACK_FIRST_INTERVAL = 0.5
READ_BACK_MAX_INTERVAL = 5.0
ROLE_SELECT = "id,principalId,roleDefinitionId,directoryScopeId"
# Statuses after which a write may have been applied although we got an error.
_AMBIGUOUS_STATUSES = {500, 502, 504}


class PlaceholderCredential:
    """Token source for the local Graph emulator: never a real token on a loopback URL."""

    TOKEN = "emulator-placeholder-token"

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        from azure.core.credentials import AccessToken

        return AccessToken(self.TOKEN, int(time.time()) + 3600)

    async def close(self) -> None:
        return None


def transport_failure(fault: BaseException) -> str:
    """The code of a failed exchange: ``GraphUnreachable`` only when the connection was never made.

    httpx-aiohttp maps every aiohttp connection error to ``httpx.ConnectTimeout``, a server that
    hung up after the request went out included, so the httpx type cannot tell whether Graph got
    the request; aiohttp's own exception (the ``__cause__``) can. Anything but a connection never
    made may hide an applied write (``GraphTimeout`` when time ran out, else ``GraphConnectionLost``).
    """
    import aiohttp

    cause = fault.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return "GraphUnreachable"
    # Our own deadline (``asyncio.timeout``) raises TimeoutError *from* the CancelledError it
    # caused, so the fault itself is asked first; aiohttp's read timeouts are TimeoutErrors too.
    if isinstance(fault, TimeoutError) or isinstance(cause, TimeoutError):
        return "GraphTimeout"
    return "GraphConnectionLost"


def _fault_name(fault: BaseException) -> str:
    return type(fault.__cause__ or fault).__name__


def _odata_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_PATH_PARAMETER = re.compile(r"\{(\w+)\}")


def _query_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def expand_template(template: str, path: Mapping[str, str], query: Mapping[str, Any]) -> str:
    """Our URL templates (``/users/{id}{?%24select}``) expanded as RFC 6570 does, once.

    kiota would expand them with std-uritemplate, which percent-encodes one character at a
    time (~130 µs for the user ``$select``) and does it three times per request (adapter,
    request building, the auth provider's host check): about 1 ms of CPU per reset, 15-20% of
    it (``python -m tools.bench cpu``). Path and query values are encoded as its ``{id}`` and
    ``{?...}`` expansions do (all but unreserved characters); query names go out decoded
    (``$select``), as the SDK's ParametersNameDecodingHandler would send them anyway.
    """
    route, _, names = template.partition("{?")
    url = _PATH_PARAMETER.sub(lambda m: quote(path[m[1]], safe=""), route)
    pairs = [
        f"{unquote(name)}={quote(_query_value(query[name]), safe='')}"
        for name in names.rstrip("}").split(",")
        if name and query.get(name) is not None
    ]
    return f"{url}?{'&'.join(pairs)}" if pairs else url


def token_tenant(token: str) -> str | None:
    """The ``tid`` claim of an access token (read, not verified: Entra issued it to us just now)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    tenant = claims.get("tid") if isinstance(claims, dict) else None
    return tenant if isinstance(tenant, str) and tenant else None


def make_credential(settings: Settings) -> Any:
    """The credential for Graph tokens: a placeholder for the emulator, else DefaultAzureCredential.

    DefaultAzureCredential picks the managed identity in Azure (AZURE_CLIENT_ID selects a
    user-assigned one) and the developer's az login locally.
    """
    if settings.uses_graph_emulator:
        return PlaceholderCredential()
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential(
        authority=settings.graph_cloud.value,
        managed_identity_client_id=settings.azure_client_id,
    )


class SdkGraphGateway:
    """``GraphGateway`` over msgraph-sdk's request adapter (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        budget: WriteBudget,
        policy: RetryPolicy,
        credential: Any | None = None,
    ) -> None:
        self._settings = settings
        self._budget = budget
        self._policy = policy
        self._credential = credential
        self._adapter: RequestAdapter | None = None
        self._transport: httpx.AsyncBaseTransport | None = None
        self._tenant_id: str | None = None
        self._host = urlsplit(settings.graph_base_url).hostname or ""

    def _request_adapter(self) -> RequestAdapter:
        if self._adapter is None:
            # Imported here: msgraph costs ~0.2 s to import and cold start must stay short.
            from kiota_authentication_azure.azure_identity_authentication_provider import (
                AzureIdentityAuthenticationProvider,
            )
            from kiota_http import ObservabilityOptions
            from kiota_http.middleware.options import (
                HeadersInspectionHandlerOption,
                ParametersNameDecodingHandlerOption,
                RetryHandlerOption,
            )
            from msgraph.graph_request_adapter import GraphRequestAdapter
            from msgraph_core import GraphClientFactory  # type: ignore[import-untyped]

            settings = self._settings
            if self._credential is None:
                self._credential = make_credential(settings)
            host = urlsplit(settings.graph_base_url).hostname or ""
            auth = AzureIdentityAuthenticationProvider(
                self._credential, scopes=[settings.graph_scope], allowed_hosts=[host]
            )
            from httpx_aiohttp import AiohttpTransport

            timeout = httpx.Timeout(settings.graph_timeout_seconds, connect=10.0)
            # aiohttp under httpx (the SDK's client type): httpcore 1.0.9's pool walks every
            # connection, polling each idle socket, twice per request (encode/httpcore#1035), a
            # third of a worker's CPU at 24 resets in flight. The storage SDKs use aiohttp too.
            transport = AiohttpTransport(limits=httpx.Limits(max_connections=64))
            http = GraphClientFactory.create_with_default_middleware(
                client=httpx.AsyncClient(timeout=timeout, transport=transport),
                options={
                    RetryHandlerOption.get_key(): RetryHandlerOption(max_retries=0),
                    # Both handlers stay in the chain with nothing to do: we read headers off
                    # the response ourselves, and expand_template already sends `$select`.
                    # Saves ~60 µs per request (copying headers twice, re-parsing the URL).
                    HeadersInspectionHandlerOption.get_key(): HeadersInspectionHandlerOption(
                        inspect_request_headers=False, inspect_response_headers=False
                    ),
                    ParametersNameDecodingHandlerOption.get_key(): ParametersNameDecodingHandlerOption(enable=False),
                },
            )
            adapter = GraphRequestAdapter(auth, client=http)
            adapter.base_url = settings.graph_base_url
            # Should the SDK's spans ever be recorded (a sampler that ignores telemetry.quiet),
            # they must not carry full URLs: our $filter values hold email addresses.
            adapter.observability_options = ObservabilityOptions(include_euii_attributes=False)
            self._adapter, self._transport = adapter, transport
        return self._adapter

    async def _send(
        self,
        method: str,
        template: str,
        *,
        path: dict[str, str] | None = None,
        query: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        advanced_query: bool = False,
        base_url: str | None = None,
        call: GraphCall | None = None,
    ) -> tuple[Any, str | None]:
        """One Graph call through the SDK adapter; returns (parsed JSON, request-id) or raises ours.

        ``advanced_query`` sends ``ConsistencyLevel: eventual``: only for the calls Graph serves
        from its eventually consistent index alone (docs/graph.md), never for plain filters.
        """
        from kiota_abstractions.method import Method
        from kiota_abstractions.native_response_handler import NativeResponseHandler
        from kiota_abstractions.request_information import RequestInformation
        from kiota_http.middleware.options.response_handler_option import ResponseHandlerOption

        adapter = self._request_adapter()
        info = RequestInformation(Method[method])
        info.url = (base_url or self._settings.graph_base_url) + expand_template(template, path or {}, query or {})
        info.headers.add("Accept", "application/json")
        if advanced_query:
            info.headers.add("ConsistencyLevel", "eventual")
        if body is not None:
            info.set_stream_content(json.dumps(body).encode("utf-8"), "application/json")
        info.add_request_options([ResponseHandlerOption(NativeResponseHandler())])

        write = method != "GET"
        route = template.partition("{?")[0]
        attributes = {"http.request.method": method, "url.template": route, "server.address": self._host}
        with telemetry.span(f"{method} {route}", kind="client", **attributes) as span:
            if write:
                await self._budget.acquire_write()
            else:
                await self._budget.wait_if_paused()
            # Never longer than the delivery has left; raises (nothing sent) when too little is left.
            timeout = call_timeout(self._settings.graph_timeout_seconds)
            response = await self._transmit(adapter, info, method, route, write, timeout)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.headers.get("request-id"):
                span.set_attribute("graphRequestId", response.headers["request-id"])
            return self._interpret(response, method, route, write, call)

    async def _transmit(
        self, adapter: RequestAdapter, info: Any, method: str, route: str, write: bool, seconds: float
    ) -> Any:
        """The HTTP exchange itself, timed and cut to ``seconds``; transport failures become ours."""
        started = time.perf_counter()
        status = "error"
        try:
            # The SDK's own spans (a dozen per call, with full URLs) are not recorded: ours is the one.
            with telemetry.quiet():
                # With NativeResponseHandler the adapter hands back the raw httpx.Response.
                async with asyncio.timeout(seconds):
                    response: Any = await adapter.send_primitive_async(info, "bytes", None)
            if isinstance(response, httpx.Response):
                status = str(response.status_code)
        except (httpx.TimeoutException, httpx.TransportError, TimeoutError) as fault:
            failure = transport_failure(fault)
            if failure == "GraphUnreachable":
                raise TransientError(f"cannot reach Graph: {_fault_name(fault)}", code=failure) from None
            kind = AmbiguousOutcomeError if write else TransientError
            raise kind(f"Graph call {method} failed in transit ({_fault_name(fault)})", code=failure) from None
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            telemetry.record("guest_reset.graph.duration", elapsed_ms, method=method, route=route, status=status)
        if not isinstance(response, httpx.Response):
            raise TransientError("Graph returned no response", code="GraphConnectionLost")
        if response.status_code == 429:
            telemetry.count("guest_reset.graph.throttled", method=method, route=route)
        return response

    def _interpret(
        self, response: httpx.Response, method: str, route: str, write: bool, call: GraphCall | None
    ) -> tuple[Any, str | None]:
        """Parsed JSON and request-id of a success; a classified error otherwise."""
        parsed: Any = None
        if response.content:
            try:
                parsed = response.json()
            except ValueError:
                parsed = None
        if response.status_code >= 400:
            error = classify_graph_response(response.status_code, parsed, response.headers, call=call)
            if error.code == "GraphThrottled" and error.retry_after is not None:
                telemetry.record("guest_reset.graph.retry_after", error.retry_after, method=method, route=route)
            if write and response.status_code in _AMBIGUOUS_STATUSES:
                raise AmbiguousOutcomeError(
                    error.message,
                    code=error.code,
                    graph_request_id=error.graph_request_id,
                    status=error.status,
                    retry_after=error.retry_after,
                )
            raise error
        return parsed, response.headers.get("request-id")

    async def _read(self, template: str, what: str, **kw: Any) -> Any:
        async def attempt() -> Any:
            return (await self._send("GET", template, **kw))[0]

        return await call_with_retries(attempt, policy=self._policy, budget=self._budget, what=what)

    async def read_user(self, user_id: str) -> GuestUser:
        data = await self._read(
            "/users/{id}{?%24select}",
            "reading the user",
            path={"id": user_id},
            query={"%24select": ",".join(USER_SELECT)},
            call=USER_CALL,
        )
        return GuestUser.from_graph(data)

    async def _list_users(self, odata_filter: str, top: int, what: str) -> list[GuestUser]:
        # mail, userPrincipalName, otherMails/any and proxyAddresses/any with eq are filters Graph
        # serves by default: no ConsistencyLevel/$count, so the read is not from the lagging
        # advanced-query index and sees a change made seconds ago (docs/graph.md).
        data = await self._read(
            "/users{?%24filter,%24select,%24top}",
            what,
            query={"%24filter": odata_filter, "%24select": ",".join(USER_SELECT), "%24top": top},
            call=USER_CALL,
        )
        return [GuestUser.from_graph(item) for item in data.get("value", [])]

    async def find_user(
        self, *, user_id: str | None = None, upn: str | None = None, email: str | None = None
    ) -> GuestUser:
        if user_id or upn:
            return await self.read_user(user_id or upn or "")
        address = _odata_quote(email or "")
        matches = await self._list_users(
            f"mail eq {address} or otherMails/any(m:m eq {address})", 2, "finding the user by email"
        )
        if not matches:
            raise UserNotFoundError(
                f"no user has {mask_email(email)} as mail or in otherMails; "
                "check the address or name the user by userId"
            )
        if len(matches) > 1:
            raise AmbiguousUserError(f"more than one user holds {mask_email(email)}; name the user by userId instead")
        return matches[0]

    async def users_owning_email(self, email: str) -> list[GuestUser]:
        address = _odata_quote(email)
        smtp = _odata_quote(f"smtp:{email}")
        return await self._list_users(
            f"mail eq {address} or otherMails/any(m:m eq {address}) or proxyAddresses/any(p:p eq {smtp})",
            5,
            "checking who owns the new email",
        )

    async def role_assignments(self, user_id: str) -> list[RoleAssignment]:
        # One page is enough: any assignment at all refuses the reset.
        query = {"%24filter": f"principalId eq {_odata_quote(user_id)}", "%24select": ROLE_SELECT}
        if self._settings.role_check == "transitive":
            # Beta only; Graph requires ConsistencyLevel, $count and $filter here (404 without them).
            data = await self._read(
                "/roleManagement/directory/transitiveRoleAssignments{?%24count,%24filter,%24select}",
                "reading the user's role assignments (direct and through groups)",
                query={**query, "%24count": "true"},
                advanced_query=True,
                base_url=self._settings.graph_beta_url,
                call=ROLE_CALL,
            )
        else:
            data = await self._read(
                "/roleManagement/directory/roleAssignments{?%24filter,%24select}",
                "reading the user's role assignments",
                query=query,
                call=ROLE_CALL,
            )
        return [RoleAssignment.from_graph(item) for item in data.get("value", [])]

    async def wait_for_address(self, user_id: str, email: str, *, within: float) -> bool:
        deadline = time.monotonic() + within
        interval = READ_BACK_FIRST_INTERVAL
        reads = 0
        while True:
            reads += 1
            if (await self.read_user(user_id)).owns_address(email):
                if reads > 1:
                    log.info("the new email read back after %d reads", reads)
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(interval, left))
            interval = min(interval * 2, READ_BACK_MAX_INTERVAL)

    async def tenant_id(self) -> str | None:
        if self._tenant_id is None and not self._settings.uses_graph_emulator:
            self._request_adapter()  # builds the credential
            credential: Any = self._credential
            token = await credential.get_token(self._settings.graph_scope)
            self._tenant_id = token_tenant(token.token)
        return self._tenant_id

    async def set_sign_in_email(self, user: GuestUser, email: str) -> None:
        others = list(user.other_mails)
        if email.lower() not in {m.lower() for m in others}:
            others.append(email)

        async def attempt() -> None:
            await self._send(
                "PATCH", "/users/{id}", path={"id": user.id}, body={"mail": email, "otherMails": others}, call=USER_CALL
            )

        # PATCH sets absolute values, so re-sending it after an ambiguous failure is harmless.
        await call_with_retries(attempt, policy=self._policy, budget=self._budget, what="setting the sign-in email")

    async def reset_redemption(self, body: InvitationBody) -> SentInvitation:
        async def attempt() -> SentInvitation:
            data, request_id = await self._send("POST", "/invitations", body=body.to_json())
            return SentInvitation(
                id=data.get("id"),
                status=data.get("status"),
                redeem_url=data.get("inviteRedeemUrl"),
                graph_request_id=request_id,
            )

        # A post that may have been processed is never sent again here (see the module docstring).
        return await call_with_retries(
            attempt,
            policy=self._policy,
            budget=self._budget,
            what="sending the reset invitation",
            retry_if=lambda error: not isinstance(error, AmbiguousOutcomeError),
        )

    async def aclose(self) -> None:
        adapter, self._adapter = self._adapter, None
        transport, self._transport = self._transport, None
        if adapter is not None:
            await adapter._http_client.aclose()  # type: ignore[attr-defined]
        if transport is not None:
            # The SDK's wrapping transport does not pass aclose on: its connections are ours to close.
            await transport.aclose()
        close = getattr(self._credential, "close", None)
        if close is not None:
            await close()
