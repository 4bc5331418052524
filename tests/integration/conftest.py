"""Integration fixtures: the Graph emulator, and an app wired to it and to Azurite with fresh names."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from shared.runtime import close_runtime, reset_runtime
from shared.settings import Settings, get_settings, reset_settings
from shared.status import StatusRecord
from shared.worker import handle_poison_message, handle_request_message
from tools.azurite import AzuriteEndpoints
from tools.graph_emulator.control import EmulatorControl
from tools.graph_emulator.runner import EmulatorHandle, running_emulator

ADELE = "5e0c1d2a-0001-4a5b-9c3d-000000000001"  # redeemed guest
BRIAN = "5e0c1d2a-0002-4a5b-9c3d-000000000002"  # guest who switches email
MEGAN = "5e0c1d2a-0003-4a5b-9c3d-000000000003"  # internal member
ROLF = "5e0c1d2a-0004-4a5b-9c3d-000000000004"  # guest holding a directory role
LEE = "5e0c1d2a-0008-4a5b-9c3d-000000000008"  # plain guest


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator() as handle:
        yield handle


@dataclass
class App:
    """The app under test, driven the way the queue trigger drives it."""

    settings: Settings
    graph: EmulatorControl
    connection_string: str

    async def deliver(self, body: dict[str, Any] | bytes, *, message_id: str | None = None,
                      dequeue_count: int = 1) -> None:  # fmt: skip
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        await handle_request_message(raw, message_id=message_id or str(uuid.uuid4()),
                                     dequeue_count=dequeue_count)  # fmt: skip

    async def status(self, request_id: str) -> StatusRecord | None:
        from shared.runtime import get_runtime

        return await (await get_runtime()).status.get(request_id)

    def _queue(self, name: str) -> QueueClient:
        return QueueClient.from_connection_string(self.connection_string, name)

    def drain(self, name: str) -> list[dict[str, Any]]:
        queue = self._queue(name)
        messages = []
        for message in queue.receive_messages(max_messages=32, visibility_timeout=30):
            messages.append(json.loads(message.content))
            queue.delete_message(message)
        return messages

    def poison(self) -> list[dict[str, Any]]:
        return self.drain(self.settings.poison_queue)

    def results(self) -> list[dict[str, Any]]:
        return self.drain(self.settings.result_queue)

    async def run_poison_handler(self) -> list[dict[str, Any]]:
        """Feed every poison message to the poison trigger's handler; returns them."""
        queue = self._queue(self.settings.poison_queue)
        seen = []
        for message in queue.receive_messages(max_messages=32, visibility_timeout=30):
            await handle_poison_message(message.content.encode(), message_id=message.id)
            seen.append(json.loads(message.content))
            queue.delete_message(message)
        return seen


@pytest.fixture
async def app(
    azurite: AzuriteEndpoints, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    """A fresh app: unique queues and table, a reset emulator, fast retry delays."""
    suffix = uuid.uuid4().hex[:10]
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "GRAPH_BASE_URL": emulator.base_url,
        "RESET_REQUEST_QUEUE": f"req-{suffix}",
        "RESET_RESULT_QUEUE": f"res-{suffix}",
        "RESET_STATUS_TABLE": f"Status{suffix}",
        "GRAPH_RETRY_DELAYS": "0.05,0.1",
        "GRAPH_MAX_ATTEMPTS": "4",
        "GRAPH_WRITES_PER_SECOND": "50",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    logging.getLogger("azure").setLevel(logging.WARNING)
    emulator.control.reset()
    reset_settings()
    reset_runtime()
    yield App(get_settings(), emulator.control, azurite.connection_string)
    await close_runtime()
    reset_runtime()
    reset_settings()
