"""The HTTP API over real HTTP: the local runner serving function_app.py, Azurite, the Graph emulator."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.factories import isolated_env
from tools.azurite import AzuriteEndpoints
from tools.devhost import running_devhost
from tools.graph_emulator.runner import EmulatorHandle

REPO_ROOT = Path(__file__).resolve().parents[2]
ADELE = "5e0c1d2a-0001-4a5b-9c3d-000000000001"


@pytest.fixture(scope="module")
def api(azurite: AzuriteEndpoints, emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    env = isolated_env(azurite.connection_string, emulator.base_url)
    with (
        running_devhost(REPO_ROOT, env=env, max_polling_interval=0.2) as host,
        httpx.Client(base_url=host.base_url, timeout=30) as client,
    ):
        yield client


def test_submit_and_poll_until_done(api: httpx.Client, emulator: EmulatorHandle) -> None:
    """A flow's view: POST → 202 + Location; poll the Location until 200 with the outcome."""
    emulator.control.reset()
    response = api.post("/api/resets", json={"userId": ADELE, "requestId": f"flow-{uuid.uuid4().hex[:6]}"})
    assert response.status_code == 202
    location = response.headers["location"]
    statuses = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        polled = api.get(location)
        statuses.append(polled.status_code)
        if polled.status_code == 200:
            break
        assert polled.status_code == 202 and int(polled.headers["retry-after"]) > 0
        time.sleep(0.2)
    assert statuses[-1] == 200 and polled.json()["status"] == "Succeeded"
    assert len(emulator.control.invitations()) == 1


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "expected"),
    [
        ("POST", "/api/resets", {"json": {"userId": "bad"}}, 400),
        ("POST", "/api/resets", {"content": b"a=b", "headers": {"content-type": "text/plain"}}, 415),
        (
            "POST",
            "/api/resets",
            {"content": b"{" + b" " * (1024 * 1024) + b"}", "headers": {"content-type": "application/json"}},
            413,
        ),
        ("DELETE", "/api/resets", {}, 405),
        ("GET", "/api/resets/does-not-exist", {}, 404),
        ("GET", "/api/health", {}, 200),
        ("GET", "/api/openapi.json", {}, 200),
        ("GET", "/api/poison", {}, 200),
        ("POST", "/api/poison/replay", {"json": {"max": 5000}}, 400),
    ],
)
def test_status_codes_over_http(
    api: httpx.Client, method: str, path: str, kwargs: dict[str, object], expected: int
) -> None:
    response = api.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == expected
    if expected >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")
