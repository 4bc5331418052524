"""A reverse proxy in front of one Azurite endpoint that can fail matching requests for a while.

Azurite has no fault injection, so the chaos suite points the app's table endpoint here. Requests
are forwarded unchanged (Shared Key signatures do not cover the host, so they stay valid); a
fault rule answers matching ones with a storage error instead, as a busy Azure storage stamp
would, and while Azurite itself is down the connection is dropped, as a real outage looks.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

# Headers that describe one hop, not the message: never copied across the proxy.
_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade", "proxy-connection"}
)


@dataclass
class StorageFault:
    """Answer ``status`` to requests whose method and path (with query) match, until ``until`` (monotonic)."""

    method: str
    path: re.Pattern[str]
    status: int
    until: float
    hits: int = 0


class StorageProxy:
    """``await start()``, point a connection string's endpoint at ``port``, ``add_fault`` at will."""

    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = f"http://{host}:{target_port}"
        self.host = host
        self.port = 0
        self.faults: list[StorageFault] = []
        self.forwarded = 0
        self.dropped = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop
        self._thread: threading.Thread

    async def start(self, port: int = 0) -> int:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, port).start()
        self.port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False)
        return self.port

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def start_in_thread(self) -> int:
        """Serve from a thread of its own, so whatever blocks the caller never stalls storage traffic."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="storage-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the storage proxy did not start")
        return self.port

    def stop_thread(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def add_fault(self, *, method: str, path: str, status: int = 503, seconds: float) -> StorageFault:
        """Fail matching requests for ``seconds``."""
        fault = StorageFault(method.upper(), re.compile(path), status, time.monotonic() + seconds)
        self.faults = [*self.faults, fault]  # a new list: the proxy's thread reads the old one meanwhile
        return fault

    def _fault_for(self, request: web.Request) -> StorageFault | None:
        now = time.monotonic()
        for fault in self.faults:
            if fault.until > now and fault.method == request.method and fault.path.search(request.raw_path):
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._fault_for(request)
        if fault is not None:
            fault.hits += 1
            error = {"odata.error": {"code": "ServerBusy", "message": {"lang": "en-US", "value": "Injected fault."}}}
            return web.Response(
                status=fault.status,
                body=json.dumps(error).encode(),
                headers={"Content-Type": "application/json;odata=minimalmetadata", "x-ms-error-code": "ServerBusy"},
            )
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        # The path exactly as signed (no re-quoting), and no body (so no Content-Type) unless there was one.
        url = URL(self.target + request.raw_path, encoded=True)
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                content = await upstream.read()
                answer = web.Response(status=upstream.status, body=content)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP:
                        answer.headers[key] = value
        except (aiohttp.ClientError, TimeoutError):
            # Azurite is down: close the connection without an answer, as the real outage would.
            self.dropped += 1
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=502)
        self.forwarded += 1
        return answer
