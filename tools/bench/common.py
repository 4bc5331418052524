"""Shared parts of the benchmarks: guests, settings, an in-memory status store, the plain-httpx
baselines, a concurrent runner, quiet logging and the result table.

Every ratio a benchmark prints compares two figures measured in the same process and run;
absolute figures drift on a small shared machine, ratios much less.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib.metadata import version
from typing import Any
from urllib.parse import quote

import httpx

from shared.platform.errors import ResetError
from shared.platform.settings import Settings, parse_settings
from shared.reset.budget import WriteBudget
from shared.reset.contract import ResetRequest
from shared.reset.graph import USER_SELECT, GuestUser, InvitationBody, RoleAssignment, SentInvitation
from shared.reset.graph_sdk import ROLE_SELECT, PlaceholderCredential, SdkGraphGateway
from shared.reset.service import ResetService
from shared.reset.status import Status, StatusRecord, StatusStore
from shared.reset.throttle import RetryPolicy

JsonDict = dict[str, Any]

# What the SDK's middleware chain sends as User-Agent (httpx's, then kiota's UserAgentHandler);
# the baselines send the same headers as the SDK so both sides move the same bytes.
SDK_USER_AGENT = f"python-httpx/{httpx.__version__} kiota-python/{version('microsoft-kiota-http')}"
SELECT_QUERY = "$select=" + quote(",".join(USER_SELECT), safe="")
ROLES_QUERY = "$count=true&$select=" + quote(ROLE_SELECT, safe="")


# --- logging ---------------------------------------------------------------------------------


@contextmanager
def quiet_logging() -> Iterator[None]:
    """Azure SDK and app loggers at WARNING while a benchmark runs; restored afterwards."""
    names = ("azure", "guest_reset", "httpx", "httpcore")
    loggers = [logging.getLogger(name) for name in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before, strict=True):
            lg.setLevel(level)


# --- directory and requests ------------------------------------------------------------------


def guest_id(index: int) -> str:
    return f"b0000000-0000-4000-8000-{index:012d}"


def make_guests(count: int) -> list[JsonDict]:
    """``count`` redeemed B2B guests shaped like the fixture's first user (Adele Vance)."""
    users: list[JsonDict] = []
    for i in range(count):
        local = f"guest.{i:05d}"
        mail = f"{local}@contoso.com"
        upn = f"{local}_contoso.com#EXT#@fabrikam.onmicrosoft.com"
        users.append(
            {
                "id": guest_id(i),
                "displayName": f"Bench Guest {i}",
                "givenName": "Bench",
                "surname": f"Guest {i}",
                "userPrincipalName": upn,
                "mail": mail,
                "otherMails": [mail],
                "userType": "Guest",
                "externalUserState": "Accepted",
                "externalUserStateChangeDateTime": "2024-03-01T10:00:00Z",
                "creationType": "Invitation",
                "identities": [
                    {"signInType": "userPrincipalName", "issuer": "fabrikam.onmicrosoft.com", "issuerAssignedId": upn},
                    {"signInType": "federated", "issuer": "ExternalAzureAD", "issuerAssignedId": None},
                ],
                "proxyAddresses": [f"SMTP:{mail}"],
                "accountEnabled": True,
                "createdDateTime": "2023-11-15T09:30:00Z",
            }
        )
    return users


@dataclass(frozen=True)
class Job:
    """One reset to run: the validated request and its claimed status record."""

    request: ResetRequest
    record: StatusRecord


def make_jobs(count: int, tag: str) -> list[Job]:
    """Requests by userId (no newEmail: one write per reset), built before any clock starts."""
    return [
        Job(
            ResetRequest.model_validate({"userId": guest_id(i), "requestId": f"bench-{tag}-{i}"}),
            StatusRecord(request_id=f"bench-{tag}-{i}", status=Status.PROCESSING, attempts=1),
        )
        for i in range(count)
    ]


def bench_settings(base_url: str, *, writes_per_second: float) -> Settings:
    """App settings for a run against the emulator (retry schedule as in production).

    The gateway gets its ``WriteBudget`` from ``sdk_gateway``; the setting is only clamped to
    its valid range here (the cpu benchmark's 10,000/s is above what the app accepts).
    """
    return parse_settings(
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "GRAPH_BASE_URL": base_url,
            "GRAPH_WRITES_PER_SECOND": str(min(writes_per_second, 1000)),
        }
    )


def sdk_gateway(settings: Settings, *, writes_per_second: float) -> SdkGraphGateway:
    """The production gateway with its own write budget and the settings' retry policy."""
    return SdkGraphGateway(
        settings,
        budget=WriteBudget(writes_per_second),
        policy=RetryPolicy(settings.graph_retry_delays, settings.graph_max_attempts),
    )


class MemoryStatusStore(StatusStore):
    """Status records in a dict: ``save`` is ``dataclasses.replace``; no storage in the figures."""

    def __init__(self) -> None:
        self.records: dict[str, StatusRecord] = {}

    async def get(self, request_id: str) -> StatusRecord | None:
        return self.records.get(request_id)

    async def save(self, record: StatusRecord, **changes: Any) -> StatusRecord:
        updated = replace(record, **changes)
        self.records[updated.request_id] = updated
        return updated

    async def aclose(self) -> None:
        return None


# --- plain-httpx baselines -------------------------------------------------------------------


def plain_client(settings: Settings) -> httpx.AsyncClient:
    """An httpx client configured like the gateway's, sending the headers the SDK sends."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.graph_timeout_seconds, connect=10.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        headers={
            "Accept": "application/json",
            "Authorization": f"Bearer {PlaceholderCredential.TOKEN}",
            "User-Agent": SDK_USER_AGENT,
        },
    )


def _json(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.method} {response.request.url.path} -> {response.status_code}")
    return response.json() if response.content else None


def invitation_json(user: JsonDict, settings: Settings) -> bytes:
    """The body ``InvitationBody.to_json`` produces for a reset to the current mail."""
    body = InvitationBody(
        user_id=str(user["id"]),
        email=str(user["mail"]),
        redirect_url=settings.invite_redirect_url or settings.my_apps_url(None),
        send_message=settings.send_invitation_message,
    ).to_json()
    return json.dumps(body).encode("utf-8")


async def plain_get_user(client: httpx.AsyncClient, base: str, user_id: str) -> JsonDict:
    data: JsonDict = _json(await client.get(f"{base}/users/{user_id}?{SELECT_QUERY}"))
    return data


async def plain_invite(client: httpx.AsyncClient, base: str, content: bytes) -> JsonDict:
    response = await client.post(f"{base}/invitations", content=content, headers={"Content-Type": "application/json"})
    data: JsonDict = _json(response)
    return data


def roles_url(settings: Settings, user_id: str) -> str:
    """The role check's URL as the SDK gateway sends it with ROLE_CHECK=transitive."""
    odata_filter = quote(f"principalId eq '{user_id}'", safe="")
    path = "/roleManagement/directory/transitiveRoleAssignments"
    return f"{settings.graph_beta_url}{path}?$filter={odata_filter}&{ROLES_QUERY}"


async def plain_reset(client: httpx.AsyncClient, settings: Settings, user_id: str) -> None:
    """The calls one ``ResetService.run`` makes, in plain httpx: GET user, GET roles, POST, GET."""
    base = settings.graph_base_url
    user = await plain_get_user(client, base, user_id)
    roles = _json(await client.get(roles_url(settings, user_id), headers={"ConsistencyLevel": "eventual"}))
    if roles.get("value"):
        raise RuntimeError(f"user {user_id} holds directory roles")
    await plain_invite(client, base, invitation_json(user, settings))
    after = await plain_get_user(client, base, user_id)
    if after.get("externalUserState") != "PendingAcceptance":
        raise RuntimeError(f"user {user_id} did not read back as PendingAcceptance")


class PlainGraphGateway:
    """``GraphGateway`` over plain httpx, for the diagnostic split of the cpu benchmark only.

    Only the calls of a reset without newEmail are implemented; the others raise. With a
    ``budget`` the invitation waits for its write slot, as the SDK gateway's does.
    """

    def __init__(self, settings: Settings, client: httpx.AsyncClient, budget: WriteBudget | None = None) -> None:
        self._settings = settings
        self._client = client
        self._base = settings.graph_base_url
        self._budget = budget

    async def find_user(
        self, *, user_id: str | None = None, upn: str | None = None, email: str | None = None
    ) -> GuestUser:
        return await self.read_user(user_id or upn or "")

    async def users_owning_email(self, email: str) -> list[GuestUser]:
        raise NotImplementedError("the benchmarks reset without newEmail")

    async def role_assignments(self, user_id: str) -> list[RoleAssignment]:
        data = _json(
            await self._client.get(roles_url(self._settings, user_id), headers={"ConsistencyLevel": "eventual"})
        )
        return [RoleAssignment.from_graph(item) for item in data.get("value", [])]

    async def wait_for_address(self, user_id: str, email: str, *, within: float) -> bool:
        raise NotImplementedError("the benchmarks reset without newEmail")

    async def tenant_id(self) -> str | None:
        return None

    async def set_sign_in_email(self, user: GuestUser, email: str) -> None:
        raise NotImplementedError("the benchmarks reset without newEmail")

    async def reset_redemption(self, body: InvitationBody, *, sent_after: datetime | None = None) -> SentInvitation:
        if self._budget is not None:
            await self._budget.acquire_write()
        response = await self._client.post(
            f"{self._base}/invitations",
            content=json.dumps(body.to_json()).encode("utf-8"),
            headers={"Content-Type": "application/json"},
        )
        data = _json(response)
        return SentInvitation(
            data.get("id"), data.get("status"), data.get("inviteRedeemUrl"), response.headers.get("request-id")
        )

    async def read_user(self, user_id: str) -> GuestUser:
        return GuestUser.from_graph(await plain_get_user(self._client, self._base, user_id))

    async def aclose(self) -> None:
        await self._client.aclose()


# --- running ---------------------------------------------------------------------------------


@dataclass
class RunStats:
    """Outcome of one batch: wall and process CPU seconds, successes, failure reasons, and the
    Graph requests the emulator journaled for it (filled in by the caller)."""

    wall: float
    cpu: float
    done: int
    failures: list[str] = field(default_factory=list)
    requests: int = 0


async def run_concurrently(
    items: Sequence[Any], work: Callable[[Any], Awaitable[object]], concurrency: int
) -> RunStats:
    """Run ``work`` on every item with at most ``concurrency`` in flight; time wall and CPU."""
    index = 0
    failures: list[str] = []
    done = 0

    async def worker() -> None:
        nonlocal index, done
        while index < len(items):
            item = items[index]
            index += 1
            try:
                await work(item)
            except (ResetError, RuntimeError, httpx.HTTPError) as error:
                failures.append(f"{type(error).__name__}: {error}")
            else:
                done += 1

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(items)))))
    return RunStats(time.perf_counter() - wall0, time.process_time() - cpu0, done, failures)


def service_work(service: ResetService) -> Callable[[Job], Awaitable[object]]:
    async def work(job: Job) -> None:
        final = await service.run(job.request, job.record)
        if final.status is not Status.SUCCEEDED or not final.verified:
            raise RuntimeError(f"{job.record.request_id} ended {final.status} (verified={final.verified})")

    return work


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of a result table; ``passed`` is None for informational rows."""

    metric: str
    value: str
    baseline: str = ""
    ratio: str = ""
    goal: str = ""
    passed: bool | None = None


@dataclass
class BenchResult:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row.passed is not False for row in self.rows)


def verdict(passed: bool | None) -> str:
    if passed is None:
        return ""
    return "[green]PASS[/green]" if passed else "[bold red]FAIL[/bold red]"


def print_result(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.name}: {result.title}", title_justify="left")
    for column in ("metric", "value", "baseline", "ratio", "goal", "result"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in result.rows:
        table.add_row(row.metric, row.value, row.baseline, row.ratio, row.goal, verdict(row.passed))
    # Piped output (CI logs) gets a wide table instead of rich's 80-column default.
    console = Console() if sys.stdout.isatty() else Console(width=132)
    console.print(table)
    for note in result.notes:
        console.print(f"  {note}", style="dim", markup=False, highlight=False)
    console.print()


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
