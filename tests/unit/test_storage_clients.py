"""Storage clients skip per-request proxy lookups, yet still go through a proxy the environment names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from azure.core.exceptions import HttpResponseError

from shared.platform.settings import StorageConnection
from shared.platform.storage import client_options, queue_client, table_client

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@dataclass
class Recorder:
    """A local HTTP server that notes the target of every request and answers 404."""

    url: str
    targets: list[str] = field(default_factory=list)


@pytest.fixture
async def recorders() -> AsyncIterator[tuple[Recorder, Recorder]]:
    runners: list[web.AppRunner] = []
    found: list[Recorder] = []
    for _ in range(2):
        recorder = Recorder("")

        async def note(request: web.Request, recorder: Recorder = recorder) -> web.Response:
            # Through a proxy the request line carries the absolute URL of the storage account.
            recorder.targets.append(request.raw_path.split("?")[0])
            return web.Response(status=404)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", note)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        recorder.url = f"http://127.0.0.1:{port}"
        runners.append(runner)
        found.append(recorder)
    try:
        yield found[0], found[1]
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*PROXY_VARIABLES, "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _connection(storage_url: str) -> StorageConnection:
    key = "a2V5"  # any base64 key: the recorder does not check signatures
    return StorageConnection(
        connection_string=(
            f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={key};"
            f"QueueEndpoint={storage_url}/acct;TableEndpoint={storage_url}/acct;BlobEndpoint={storage_url}/acct"
        )
    )


def test_without_a_proxy_in_the_environment_lookups_are_off(no_proxy_env: pytest.MonkeyPatch) -> None:
    assert client_options()["use_env_settings"] is False
    assert client_options()["connection_timeout"] == 5


def test_a_proxy_in_the_environment_keeps_the_sdk_default(no_proxy_env: pytest.MonkeyPatch) -> None:
    no_proxy_env.setenv("HTTPS_PROXY", "http://proxy.corp.example:8080")
    assert "use_env_settings" not in client_options()


async def test_calls_go_straight_to_storage_when_no_proxy_is_set(
    no_proxy_env: pytest.MonkeyPatch, recorders: tuple[Recorder, Recorder]
) -> None:
    storage, proxy = recorders
    async with queue_client(_connection(storage.url), "requests") as queue:
        with pytest.raises(HttpResponseError):
            await queue.send_message("{}")
    assert storage.targets == ["/acct/requests/messages"]
    assert proxy.targets == []


async def test_calls_go_through_the_proxy_the_environment_names(
    no_proxy_env: pytest.MonkeyPatch, recorders: tuple[Recorder, Recorder]
) -> None:
    storage, proxy = recorders
    no_proxy_env.setenv("HTTP_PROXY", proxy.url)
    async with queue_client(_connection(storage.url), "requests") as queue:
        with pytest.raises(HttpResponseError):
            await queue.send_message("{}")
    async with table_client(_connection(storage.url), "Status") as table:
        with pytest.raises(HttpResponseError):
            await table.get_entity("p", "r")
    assert storage.targets == []
    assert proxy.targets == [
        f"{storage.url}/acct/requests/messages",
        f"{storage.url}/acct/Status(PartitionKey='p',RowKey='r')",
    ]
