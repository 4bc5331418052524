"""Session-wide fixtures: one fresh in-memory Azurite for every test that needs storage."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools.azurite import AzuriteEndpoints, running_azurite


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteEndpoints]:
    """A fresh in-memory Azurite shared by the session; tests use unique queue/table names."""
    with running_azurite() as endpoints:
        yield endpoints
