"""A queue-trigger listener with the Storage Queues extension's semantics (QueueListener/QueueProcessor)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.functions.queue import QueueMessage as WorkerQueueMessage
from azure.storage.queue import QueueMessage as StorageMessage
from azure.storage.queue.aio import QueueClient

from tools.devhost.functions import FunctionSpec, Invocation
from tools.devhost.hostconfig import MIN_POLLING_INTERVAL, QueuesOptions
from tools.devhost.storage import ensure_queue

log = logging.getLogger("devhost")

# The listener's invisibility while a message is being processed; renewed at half-life. This is
# the real host's value; `--message-lease` shortens it for development only (a killed runner's
# messages then come back in seconds instead of ten minutes).
LEASE_SECONDS = 600
POISON_SUFFIX = "-poison"
MAX_QUEUE_NAME = 63

# invoke(spec, trigger_value, detail) -> Invocation; supplied by the host (it owns output bindings).
Invoker = Callable[[FunctionSpec, Any, str], Awaitable[Invocation]]


def poison_queue_name(queue_name: str) -> str | None:
    """`<queue>-poison`, or None where the host keeps no poison queue (already poison, or too long)."""
    if queue_name.endswith(POISON_SUFFIX) or len(queue_name) + len(POISON_SUFFIX) > MAX_QUEUE_NAME:
        return None
    return queue_name + POISON_SUFFIX


def decode_body(content: str | None, encoding: str) -> bytes:
    """The message body as the function sees it; raises ValueError when base64 is expected but absent."""
    text = content or ""
    if encoding == "none":
        return text.encode("utf-8")
    # .NET's Convert.FromBase64String skips whitespace but rejects any other non-alphabet character.
    return base64.b64decode("".join(text.split()), validate=True)


def worker_message(
    body: bytes,
    *,
    id: str | None = None,
    dequeue_count: int = 1,
    pop_receipt: str | None = None,
    inserted: datetime | None = None,
    expires: datetime | None = None,
    next_visible: datetime | None = None,
) -> WorkerQueueMessage:
    """The azure.functions.queue.QueueMessage the worker builds (it carries dequeue_count)."""
    now = datetime.now(UTC)
    return WorkerQueueMessage(  # type: ignore[no-untyped-call]
        id=id or str(uuid.uuid4()),
        body=body,
        dequeue_count=dequeue_count,
        expiration_time=expires or now + timedelta(days=7),
        insertion_time=inserted or now,
        time_next_visible=next_visible or now,
        pop_receipt=pop_receipt,
    )


@dataclass
class _Lease:
    """A received message's id and current pop receipt (visibility renewals replace the receipt)."""

    id: str
    pop_receipt: str
    done: asyncio.Event = field(default_factory=asyncio.Event)


class QueueListener:
    """Polls one queue for one function: batches, new-batch threshold, backoff, retries and poison."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        queue: QueueClient,
        poison: QueueClient | None,
        options: QueuesOptions,
        max_polling_interval: float,
        invoke: Invoker,
        notify: Callable[[str], None],
        message_lease: int = LEASE_SECONDS,
    ) -> None:
        self.spec = spec
        self.queue = queue
        self.poison = poison
        self.options = options
        self.max_interval = max(MIN_POLLING_INTERVAL, min(options.max_polling_interval, max_polling_interval))
        self._invoke = invoke
        self._notify = notify
        self.message_lease = message_lease
        self.wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._poison_ready = False

    async def start(self) -> None:
        await ensure_queue(self.queue)
        self._task = asyncio.create_task(self._run(), name=f"listener:{self.queue.queue_name}")

    async def stop_polling(self) -> None:
        """Stop fetching; messages already received keep running (the host drains them too)."""
        self._stopping.set()
        self.wake.set()
        if self._task is not None:
            await self._task

    async def _sleep(self, seconds: float) -> None:
        # Woken early by a message written to this queue from this host (the host's shared watcher).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)
        self.wake.clear()

    async def _receive(self) -> list[StorageMessage]:
        count = self.options.batch_size
        pages = self.queue.receive_messages(
            messages_per_page=count, max_messages=count, visibility_timeout=self.message_lease
        )
        return [message async for message in pages]

    async def _run(self) -> None:
        delay = MIN_POLLING_INTERVAL
        while not self._stopping.is_set():
            try:
                batch = await self._receive()
            except Exception as exc:  # the listener must outlive storage hiccups, as the host's does
                log.warning("queue '%s': receive failed (%s); backing off", self.queue.queue_name, exc)
                batch = []
            if not batch:
                await self._sleep(delay)
                delay = min(delay * 2, self.max_interval)
                continue
            delay = MIN_POLLING_INTERVAL
            for message in batch:
                task = asyncio.create_task(self._process(message))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
            # Fetch the next batch once in-flight work drops to newBatchThreshold.
            while len(self.in_flight) > self.options.new_batch_threshold and not self._stopping.is_set():
                stop = asyncio.create_task(self._stopping.wait())
                await asyncio.wait({*self.in_flight, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()

    async def _process(self, message: StorageMessage) -> None:
        count = int(message.dequeue_count or 0)
        lease = _Lease(message.id, message.pop_receipt or "")
        detail = f" queue={self.queue.queue_name} id={message.id} dequeue_count={count}"
        try:
            if count > self.options.max_dequeue_count:
                log.warning(
                    "message%s is past maxDequeueCount=%d; not invoking", detail, self.options.max_dequeue_count
                )
                await self._to_poison(message, lease)
                return
            try:
                body = decode_body(message.content, self.options.message_encoding)
            except ValueError:
                log.warning("message%s failed base64 decoding; check messageEncoding", detail)
                await self._to_poison(message, lease)
                return
            trigger = worker_message(
                body,
                id=message.id,
                dequeue_count=count,
                pop_receipt=message.pop_receipt,
                inserted=message.inserted_on,
                expires=message.expires_on,
                next_visible=message.next_visible_on,
            )
            renewer = asyncio.create_task(self._renew(lease))
            try:
                result = await self._invoke(self.spec, trigger, detail)
            finally:
                # Let a renewal in progress finish so the pop receipt we hold stays current.
                lease.done.set()
                await renewer
            if result.ok:
                await self._settle("delete", self.queue.delete_message(lease.id, lease.pop_receipt))
            elif self.poison is None:
                # The host leaves it invisible for the lease rather than spin on a queue with no poison queue.
                log.warning("message%s failed on a queue without a poison queue; left invisible", detail)
            elif count >= self.options.max_dequeue_count:
                await self._to_poison(message, lease)
            else:
                release = self.queue.update_message(
                    lease.id, lease.pop_receipt, visibility_timeout=int(self.options.visibility_timeout)
                )
                await self._settle("release", release)
        except Exception:
            # Storage trouble after the invocation: the message simply reappears after its lease.
            log.exception("message%s: completing the message failed", detail)

    async def _renew(self, lease: _Lease) -> None:
        while True:
            try:
                await asyncio.wait_for(lease.done.wait(), self.message_lease / 2)
                return
            except TimeoutError:
                pass
            try:
                updated = await self.queue.update_message(
                    lease.id, lease.pop_receipt, visibility_timeout=self.message_lease
                )
                lease.pop_receipt = updated.pop_receipt or lease.pop_receipt
            except Exception as exc:  # a missed renewal only risks a duplicate delivery
                log.warning("message id=%s: visibility renewal failed (%s)", lease.id, exc)

    async def _to_poison(self, message: StorageMessage, lease: _Lease) -> None:
        """Copy the message text as received (same encoding) to the poison queue, then delete it."""
        if self.poison is None:
            log.warning(
                "queue '%s' has no poison queue; message id=%s left in place", self.queue.queue_name, message.id
            )
            return
        if not self._poison_ready:
            await ensure_queue(self.poison)
            self._poison_ready = True
        await self.poison.send_message(message.content or "")
        log.warning(
            "moved message id=%s to queue '%s' (maxDequeueCount=%d)",
            message.id,
            self.poison.queue_name,
            self.options.max_dequeue_count,
        )
        await self._settle("delete", self.queue.delete_message(lease.id, lease.pop_receipt))
        self._notify(self.poison.queue_name)

    async def _settle(self, what: str, operation: Awaitable[Any]) -> None:
        try:
            await operation
        except HttpResponseError as exc:
            # Message gone or pop receipt stale: someone else owns it now; the host ignores these too.
            if exc.status_code not in (400, 404):
                raise
            log.warning("queue '%s': %s skipped (HTTP %s)", self.queue.queue_name, what, exc.status_code)
