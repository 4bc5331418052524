"""Session-wide fixtures: one fresh in-memory Azurite and one Graph emulator for the run.

The in-memory app of the unit tests (``make_app``) comes with the factories module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools.azurite import AzuriteEndpoints, running_azurite
from tools.graph_emulator.runner import EmulatorHandle, running_emulator

pytest_plugins = ["tests.factories"]


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteEndpoints]:
    """A fresh in-memory Azurite shared by the session; tests use unique queue/table names."""
    with running_azurite() as endpoints:
        yield endpoints


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator() as handle:
        yield handle
