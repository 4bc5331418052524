"""Messages the app writes: results for listeners, poison envelopes for operators, requests held for later."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

from shared.platform.errors import TransientError

if TYPE_CHECKING:
    from azure.storage.queue.aio import QueueClient


# A queue message can stay invisible for at most 7 days (and must become visible before it expires).
MAX_HOLD_SECONDS = 7 * 24 * 3600 - 60


class Publisher:
    """Sends JSON messages to the app's queues (plain text, no Base64)."""

    def __init__(
        self,
        *,
        results: QueueClient,
        poison: QueueClient,
        requests: QueueClient,
        callbacks: QueueClient | None = None,
    ) -> None:
        self._results = results
        self._poison = poison
        self._requests = requests
        self._callbacks = callbacks

    def _queues(self) -> tuple[QueueClient, ...]:
        extra = (self._callbacks,) if self._callbacks is not None else ()
        return (self._results, self._poison, self._requests, *extra)

    async def ensure(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        for queue in self._queues():
            with contextlib.suppress(ResourceExistsError):
                await queue.create_queue()

    async def _send(self, queue: QueueClient, payload: dict[str, Any] | str, *, delay: float = 0) -> None:
        from azure.core.exceptions import AzureError

        text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        hidden = max(0, min(int(delay + 0.999), MAX_HOLD_SECONDS))
        try:
            await queue.send_message(text, visibility_timeout=hidden or None)
        except AzureError as error:
            raise TransientError(
                f"queue {queue.queue_name} unavailable: {type(error).__name__}", code="StorageUnavailable"
            ) from error

    async def send_result(self, result: dict[str, Any]) -> None:
        await self._send(self._results, result)

    async def send_poison(self, envelope: dict[str, Any] | str, *, delay: float = 0) -> None:
        await self._send(self._poison, envelope, delay=delay)

    async def send_request(self, body: dict[str, Any] | str, *, delay: float = 0) -> None:
        """Enqueue a request; ``delay`` keeps it invisible that many seconds (a held delivery)."""
        await self._send(self._requests, body, delay=delay)

    async def send_callback(self, job: dict[str, Any], *, delay: float = 0) -> None:
        if self._callbacks is None:
            raise RuntimeError("this publisher has no callback queue")
        await self._send(self._callbacks, job, delay=delay)

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
        for queue in self._queues():
            await queue.close()
