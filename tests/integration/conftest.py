"""Integration fixtures: the Graph emulator, and an app wired to it and to Azurite with fresh names."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from shared.runtime import close_runtime, reset_runtime
from shared.settings import get_settings, reset_settings
from tests.integration.support import App
from tools.azurite import AzuriteEndpoints
from tools.graph_emulator.runner import EmulatorHandle


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
