"""The devhost itself: load settings and the app, start queue listeners and the HTTP server, drain on stop."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from azure.functions.timer import TimerRequest

from tools.devhost.functions import (
    FunctionSpec,
    Invocation,
    QueueOutput,
    index_app,
    invoke,
)
from tools.devhost.hostconfig import HostConfig, load_host_config
from tools.devhost.http import build_app
from tools.devhost.queues import LEASE_SECONDS, QueueListener, poison_queue_name, worker_message
from tools.devhost.settings import load_settings
from tools.devhost.storage import QueueClients, ensure_queue

log = logging.getLogger("devhost")

DEFAULT_CONNECTION = "AzureWebJobsStorage"


class DevHost:
    """Hosts one function app in this process; `start()` then `stop()`, or use `serve()`."""

    def __init__(
        self,
        app_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 7071,
        max_polling_interval: float = 1.0,
        ready_file: Path | None = None,
        grace_seconds: float = 30.0,
        message_lease: int = LEASE_SECONDS,
    ) -> None:
        self.app_dir = app_dir.resolve()
        self.host = host
        self.port = port
        self.max_polling_interval = max_polling_interval
        self.message_lease = message_lease
        self.ready_file = ready_file
        self.grace_seconds = grace_seconds
        self.base_url = ""
        self._config: HostConfig | None = None
        self._functions: dict[str, FunctionSpec] = {}
        self._clients: QueueClients | None = None
        self._listeners: list[QueueListener] = []
        self._admin_tasks: set[asyncio.Task[Invocation]] = set()
        self._ensured: set[tuple[str, str]] = set()
        self._runner: web.AppRunner | None = None

    @property
    def route_prefix(self) -> str:
        return self._config.route_prefix if self._config else "api"

    @property
    def functions(self) -> Mapping[str, FunctionSpec]:
        return self._functions

    async def start(self) -> None:
        """Index the app, start every listener and the HTTP server, then write the ready file."""
        settings = load_settings(self.app_dir)
        self._config = load_host_config(self.app_dir, settings)
        # The host's `AzureWebJobs.<name>.Disabled` app setting switches a function off.
        self._functions = {
            spec.name: spec
            for spec in index_app(self.app_dir, settings)
            if settings.get(f"AzureWebJobs.{spec.name}.Disabled", "").strip().lower() not in {"true", "1"}
        }
        self._clients = clients = QueueClients(settings)
        try:
            for spec in self._functions.values():
                for output in spec.outputs:
                    clients.service(output.connection)  # fail at startup on a bad connection
                if spec.trigger_type == "queueTrigger":
                    self._listeners.append(self._listener(spec, clients))
            await asyncio.gather(*(listener.start() for listener in self._listeners))
            self._runner = web.AppRunner(build_app(self), shutdown_timeout=self.grace_seconds, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.host, self.port).start()
            port = self._runner.addresses[0][1]
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.base_url = f"http://{host}:{port}"
        except BaseException:
            await self._close()
            raise
        log.info(
            "devhost serving %d functions at %s (%s)",
            len(self._functions),
            self.base_url,
            ", ".join(sorted(self._functions)),
        )
        if self.ready_file is not None:
            # Write then rename, so a watcher never reads half a URL.
            partial = self.ready_file.with_name(self.ready_file.name + ".tmp")
            partial.write_text(self.base_url, encoding="utf-8")
            partial.replace(self.ready_file)

    def _listener(self, spec: FunctionSpec, clients: QueueClients) -> QueueListener:
        assert self._config is not None
        name = str(spec.trigger["queueName"])
        connection = str(spec.trigger.get("connection") or DEFAULT_CONNECTION)
        poison = poison_queue_name(name)
        return QueueListener(
            spec,
            queue=clients.queue(connection, name),
            poison=clients.queue(connection, poison) if poison else None,
            options=self._config.queues,
            max_polling_interval=self.max_polling_interval,
            invoke=self.invoke,
            notify=self._notify,
            message_lease=self.message_lease,
        )

    async def stop(self) -> None:
        """Stop polling, give in-flight invocations up to grace_seconds, then close everything."""
        await asyncio.gather(*(listener.stop_polling() for listener in self._listeners))
        pending: set[asyncio.Task[Any]] = set(self._admin_tasks)
        for listener in self._listeners:
            pending |= listener.in_flight
        if pending:
            log.info("devhost stopping; waiting for %d in-flight invocations", len(pending))
        if self._runner is not None:
            # aiohttp stops listening, then waits up to shutdown_timeout for running handlers.
            pending.add(asyncio.create_task(self._runner.cleanup()))
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.grace_seconds)
            for task in late:
                task.cancel()
            if late:
                log.warning(
                    "devhost: %d invocations still running after %.0f s were cancelled", len(late), self.grace_seconds
                )
                await asyncio.wait(late, timeout=5)
        await self._close()
        log.info("devhost stopped")

    async def _close(self) -> None:
        if self._clients is not None:
            await self._clients.close()
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)

    async def invoke(self, spec: FunctionSpec, value: Any, detail: str) -> Invocation:
        return await invoke(spec, value, send=self._send, detail=detail)

    def start_admin(self, spec: FunctionSpec, text: str) -> None:
        """Run a non-HTTP function with the admin API's input, in the background (the API answers 202)."""
        value: Any
        if spec.trigger_type == "queueTrigger":
            value = worker_message(text.encode("utf-8"), dequeue_count=1)
        else:
            value = TimerRequest(past_due=False)
        task = asyncio.create_task(self.invoke(spec, value, " (admin)"))
        self._admin_tasks.add(task)
        task.add_done_callback(self._admin_tasks.discard)

    async def _send(self, output: QueueOutput, messages: list[str]) -> None:
        """Write a queue output binding's messages with the trigger queues' messageEncoding."""
        assert self._clients is not None and self._config is not None
        queue = self._clients.queue(output.connection, output.queue_name)
        if (output.connection, output.queue_name) not in self._ensured:
            await ensure_queue(queue)
            self._ensured.add((output.connection, output.queue_name))
        for text in messages:
            if self._config.queues.message_encoding == "base64":
                text = base64.b64encode(text.encode("utf-8")).decode("ascii")
            await queue.send_message(text)
        self._notify(output.queue_name)

    def _notify(self, queue_name: str) -> None:
        # The host's shared watcher: a message this host wrote wakes that queue's listener at once.
        for listener in self._listeners:
            if listener.queue.queue_name == queue_name:
                listener.wake.set()


async def serve(
    app_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 7071,
    max_polling_interval: float = 1.0,
    stop_event: asyncio.Event,
    ready_file: Path | None = None,
    message_lease: int = LEASE_SECONDS,
) -> None:
    """Run the devhost until stop_event is set, then shut down gracefully."""
    devhost = DevHost(
        app_dir,
        host=host,
        port=port,
        max_polling_interval=max_polling_interval,
        ready_file=ready_file,
        message_lease=message_lease,
    )
    await devhost.start()
    try:
        await stop_event.wait()
    finally:
        await devhost.stop()
