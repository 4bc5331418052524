"""Driving the app the way the queue trigger does, plus the emulator fixture's user ids."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from azure.storage.queue import QueueClient

from shared.platform.settings import Settings
from shared.reset.status import StatusRecord
from shared.reset.worker import handle_poison_message, handle_request_message
from tools.graph_emulator.control import EmulatorControl

ADELE = "5e0c1d2a-0001-4a5b-9c3d-000000000001"  # redeemed guest
BRIAN = "5e0c1d2a-0002-4a5b-9c3d-000000000002"  # guest who switches email
MEGAN = "5e0c1d2a-0003-4a5b-9c3d-000000000003"  # internal member
ROLF = "5e0c1d2a-0004-4a5b-9c3d-000000000004"  # guest holding a directory role
LEE = "5e0c1d2a-0008-4a5b-9c3d-000000000008"  # plain guest


@dataclass
class App:
    """The app under test, driven the way the queue trigger drives it."""

    settings: Settings
    graph: EmulatorControl
    connection_string: str

    async def deliver(
        self, body: dict[str, Any] | bytes, *, message_id: str | None = None, dequeue_count: int = 1
    ) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        await handle_request_message(raw, message_id=message_id or str(uuid.uuid4()), dequeue_count=dequeue_count)

    async def status(self, request_id: str) -> StatusRecord | None:
        from shared.reset.runtime import get_runtime

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

    async def run_callbacks(self) -> int:
        """Run the callback trigger's handler on every queued callback job, as the host would."""
        from shared.reset.callbacks import handle_callback_message

        queue = self._queue(self.settings.callback_queue)
        handled = 0
        for message in queue.receive_messages(max_messages=32, visibility_timeout=60):
            await handle_callback_message(message.content.encode(), message_id=message.id)
            queue.delete_message(message)
            handled += 1
        return handled
