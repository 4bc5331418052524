"""Factories with keyword overrides for the objects tests build over and over."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.platform.settings import (
    KEY_GRANTABLE,
    QUEUE_GRANTABLE,
    Settings,
    get_settings,
    parse_settings,
    reset_settings,
)
from shared.platform.storage_stub import MemoryQueue, MemoryTable
from shared.reset.graph import GuestUser, RoleAssignment
from shared.reset.graph_stub import DirectoryUser, StubGraphGateway
from shared.reset.runtime import Runtime, reset_runtime, set_runtime_factory, stub_runtime
from shared.reset.status import Status, StatusRecord, StatusStore
from shared.reset.worker import handle_poison_message, handle_request_message

GUEST_ID = "6a1b3c4d-0000-4000-8000-00000000a001"
# Built-in role definition (template) ids, the same in every tenant.
USER_ADMINISTRATOR = "fe930be7-5e62-47db-91af-98c3a49a38b1"
HELPDESK_ADMINISTRATOR = "729827e3-9c14-49f7-bb1b-9608f156bbb8"


# Most tests exercise what a fully trusted caller may do; the least-power tests (test_security*.py,
# test_least_power.py) set KEY_CAPABILITIES and QUEUE_CAPABILITIES back to the safe defaults ("").
FULL_TRUST = {
    "KEY_CAPABILITIES": ",".join(c.value for c in KEY_GRANTABLE),
    "QUEUE_CAPABILITIES": ",".join(c.value for c in QUEUE_GRANTABLE),
}


def env(**overrides: str) -> dict[str, str]:
    """A complete, valid local environment; keyword arguments replace single settings."""
    values = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "GRAPH_BASE_URL": "http://127.0.0.1:8765/v1.0",
        "GRAPH_RETRY_DELAYS": "0.01,0.02",
        "GRAPH_WRITES_PER_SECOND": "100",
        # One read-back, no waiting: unit tests never sleep (readback.py's polling has its own tests).
        "READBACK_WINDOW_SECONDS": "0",
        # Pacing is shown by its own tests; elsewhere it would only slow the suite down.
        "INVITATIONS_PER_MINUTE": "6000",
        **FULL_TRUST,
    }
    values.update(overrides)
    return values


def settings(**overrides: str) -> Settings:
    return parse_settings(env(**overrides))


class FakeClock:
    """Virtual time: sleepers wake in the order of their deadlines, and time jumps to the next one
    whenever every task is waiting (checked by letting the loop run a few rounds)."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        """The same instant as an aware datetime (for code that keeps time as datetimes)."""
        return datetime.fromtimestamp(self.now, UTC)

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), next(self._order), future))
        await future

    async def run(self) -> None:
        while True:
            for _ in range(50):
                await asyncio.sleep(0)
            if self._sleepers:
                deadline, _, future = heapq.heappop(self._sleepers)
                self.now = max(self.now, deadline)
                future.set_result(None)


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    """A ``FakeClock`` whose time moves on by itself whenever every task sleeps on it."""
    fake = FakeClock()
    driver = asyncio.create_task(fake.run())
    yield fake
    driver.cancel()


def guest(**overrides: Any) -> GuestUser:
    values: dict[str, Any] = {
        "id": GUEST_ID,
        "user_principal_name": "adele.vance_contoso.com#EXT#@fabrikam.onmicrosoft.com",
        "display_name": "Adele Vance",
        "mail": "adele.vance@contoso.com",
        "other_mails": ("adele.vance@contoso.com",),
        "user_type": "Guest",
        "external_user_state": "Accepted",
        "external_user_state_changed_at": None,
    }
    values.update(overrides)
    return GuestUser(**values)


def directory_user(**overrides: Any) -> DirectoryUser:
    """A redeemed B2B guest in the Graph stub's directory (the same Adele as ``guest()``)."""
    values: dict[str, Any] = {
        "id": GUEST_ID,
        "user_principal_name": "adele.vance_contoso.com#EXT#@fabrikam.onmicrosoft.com",
        "display_name": "Adele Vance",
        "mail": "adele.vance@contoso.com",
        "other_mails": ["adele.vance@contoso.com"],
        "user_type": "Guest",
        "external_user_state": "Accepted",
        "proxy_addresses": ["SMTP:adele.vance@contoso.com"],
    }
    values.update(overrides)
    return DirectoryUser(**values)


def role(definition: str = USER_ADMINISTRATOR, *, scope: str = "/", principal: str = GUEST_ID) -> RoleAssignment:
    """A role assignment: tenant-wide and held by the guest itself unless told otherwise."""
    return RoleAssignment(role_definition_id=definition, directory_scope_id=scope, principal_id=principal)


def internal_user(**overrides: Any) -> DirectoryUser:
    """A member of the tenant's own (not B2B): no #EXT# UPN, no externalUserState."""
    values: dict[str, Any] = {
        "id": "6a1b3c4d-0000-4000-8000-00000000b002",
        "user_principal_name": "megan@fabrikam.onmicrosoft.com",
        "display_name": "Megan Bowen",
        "mail": "megan@fabrikam.com",
        "other_mails": [],
        "user_type": "Member",
        "external_user_state": None,
        "proxy_addresses": ["SMTP:megan@fabrikam.com"],
    }
    values.update(overrides)
    return DirectoryUser(**values)


def status_record(**overrides: Any) -> StatusRecord:
    """A status record of one request; Processing unless told otherwise."""
    values: dict[str, Any] = {"request_id": "req-1", "status": Status.PROCESSING}
    values.update(overrides)
    return StatusRecord(**values)


def request_body(**overrides: Any) -> bytes:
    """A valid contract-v1 message body; None values drop the field."""
    values: dict[str, Any] = {"userId": GUEST_ID}
    values.update(overrides)
    return json.dumps({k: v for k, v in values.items() if v is not None}).encode()


def isolated_env(connection_string: str, graph_base_url: str, **overrides: str) -> dict[str, str]:
    """App settings for one test: real Azurite and emulator, queues and table of its own, fast retries."""
    suffix = uuid.uuid4().hex[:10]
    values = {
        "AzureWebJobsStorage": connection_string,
        "GRAPH_BASE_URL": graph_base_url,
        "RESET_REQUEST_QUEUE": f"req-{suffix}",
        "RESET_RESULT_QUEUE": f"res-{suffix}",
        "RESET_CALLBACK_QUEUE": f"cb-{suffix}",
        "RESET_STATUS_TABLE": f"Status{suffix}",
        "RESET_STATE_TABLE": f"State{suffix}",
        "GRAPH_RETRY_DELAYS": "0.05,0.1",
        "GRAPH_MAX_ATTEMPTS": "4",
        "GRAPH_WRITES_PER_SECOND": "50",
        "READBACK_WINDOW_SECONDS": "2",
        **FULL_TRUST,
        # Pacing is shown by its own tests; elsewhere it would only slow the suite down.
        "INVITATIONS_PER_MINUTE": "6000",
        "BREAKER_HOLD_SECONDS": "1",
    }
    values.update(overrides)
    return values


@dataclass
class StubApp:
    """The worker over in-memory doubles, driven the way the queue triggers drive it."""

    settings: Settings
    graph: StubGraphGateway
    table: MemoryTable
    results_queue: MemoryQueue
    poison_queue: MemoryQueue
    requests_queue: MemoryQueue
    runtime: Runtime

    @property
    def store(self) -> StatusStore:
        return self.runtime.status

    async def deliver(
        self, body: dict[str, Any] | bytes, *, message_id: str | None = None, dequeue_count: int = 1
    ) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        await handle_request_message(raw, message_id=message_id or str(uuid.uuid4()), dequeue_count=dequeue_count)

    async def status(self, request_id: str) -> StatusRecord | None:
        return await self.store.get(request_id)

    def poison(self) -> list[dict[str, Any]]:
        """The poison messages sent since the last look (drained, as the integration App does)."""
        sent = self.poison_queue.decoded()
        self.poison_queue.messages.clear()
        return sent

    def results(self) -> list[dict[str, Any]]:
        sent = self.results_queue.decoded()
        self.results_queue.messages.clear()
        return sent

    async def run_poison_handler(self) -> list[dict[str, Any]]:
        """Feed every poison message to the poison trigger's handler; returns them."""
        seen = []
        while self.poison_queue.messages:
            text = self.poison_queue.messages.pop(0)
            await handle_poison_message(text.encode(), message_id=str(uuid.uuid4()))
            seen.append(json.loads(text))
        return seen


MakeApp = Callable[..., StubApp]


@pytest.fixture
def make_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeApp]:
    """Build a StubApp and install it as the runtime: ``make_app(*users, SETTING="value")``."""
    set_names: set[str] = set()

    def make(*users: DirectoryUser, graph: StubGraphGateway | None = None, **setting_overrides: str) -> StubApp:
        for name in set_names:
            monkeypatch.delenv(name, raising=False)
        values = env(**setting_overrides)
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        set_names.update(values)
        reset_settings()
        current = get_settings()
        stub = graph or StubGraphGateway()
        for user in users:
            stub.add_user(user)
        table = MemoryTable(current.status_table)
        results, poison, requests = (
            MemoryQueue(name) for name in (current.result_queue, current.poison_queue, current.request_queue)
        )
        runtime = stub_runtime(current, graph=stub, table=table, results=results, poison=poison, requests=requests)
        app = StubApp(current, stub, table, results, poison, requests, runtime)

        async def factory(_: Settings) -> Runtime:
            return app.runtime

        set_runtime_factory(factory)
        return app

    yield make
    set_runtime_factory(None)
    reset_runtime()
    reset_settings()
