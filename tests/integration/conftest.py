"""Integration fixtures: the Graph emulator, and an app wired to it and to Azurite with fresh names."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from shared.platform.settings import get_settings, reset_settings
from shared.reset.runtime import close_runtime, reset_runtime
from tests.factories import isolated_env
from tests.integration.support import App
from tools.azurite import AzuriteEndpoints
from tools.graph_emulator.runner import EmulatorHandle


@pytest.fixture
async def app(
    azurite: AzuriteEndpoints, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    """A fresh app: unique queues and table, a reset emulator, fast retry delays."""
    env = isolated_env(azurite.connection_string, emulator.base_url)
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
