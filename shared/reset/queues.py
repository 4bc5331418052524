"""Messages the app writes: results for listeners, poison envelopes for operators."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

from shared.platform.errors import TransientError

if TYPE_CHECKING:
    from azure.storage.queue.aio import QueueClient


class Publisher:
    """Sends JSON messages to the result and poison queues (plain text, no Base64)."""

    def __init__(self, *, results: QueueClient, poison: QueueClient, requests: QueueClient) -> None:
        self._results = results
        self._poison = poison
        self._requests = requests

    async def ensure(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        for queue in (self._results, self._poison, self._requests):
            with contextlib.suppress(ResourceExistsError):
                await queue.create_queue()

    async def _send(self, queue: QueueClient, payload: dict[str, Any] | str, *, delay: float = 0) -> None:
        from azure.core.exceptions import AzureError

        text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        try:
            await queue.send_message(text, visibility_timeout=int(delay) or None)
        except AzureError as error:
            raise TransientError(
                f"queue {queue.queue_name} unavailable: {type(error).__name__}", code="StorageUnavailable"
            ) from error

    async def send_result(self, result: dict[str, Any]) -> None:
        await self._send(self._results, result)

    async def send_poison(self, envelope: dict[str, Any]) -> None:
        await self._send(self._poison, envelope)

    async def send_request(self, body: dict[str, Any] | str, *, delay: float = 0) -> None:
        """Enqueue a request; ``delay`` seconds keeps it invisible that long (a deferred delivery)."""
        await self._send(self._requests, body, delay=delay)

    async def poison_depth(self) -> int:
        """Messages waiting in the poison queue (approximate, as the service counts them)."""
        from azure.core.exceptions import AzureError

        try:
            properties = await self._poison.get_queue_properties()
        except AzureError as error:
            raise TransientError(
                f"queue {self._poison.queue_name} unavailable: {type(error).__name__}", code="StorageUnavailable"
            ) from error
        return int(properties.approximate_message_count or 0)

    async def aclose(self) -> None:
        for queue in (self._results, self._poison, self._requests):
            await queue.close()
