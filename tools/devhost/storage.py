"""Queue clients for binding connections: connection strings (incl. Azurite) or identity-based settings."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from tools.devhost.settings import StartupError

log = logging.getLogger("devhost")

# Azurite can stall under load; the SDK's 300 s default read timeout would hang the listener.
CLIENT_OPTIONS: dict[str, Any] = {"connection_timeout": 5, "read_timeout": 30, "retry_total": 3}
# Azurite 3.35 rejects the SDK's newest API version unless started with --skipApiVersionCheck.
AZURITE_API_VERSION = "2025-11-05"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class QueueClients:
    """One service client per connection setting, created on first use and closed together."""

    def __init__(self, settings: Mapping[str, str]) -> None:
        self._settings = settings
        self._services: dict[str, QueueServiceClient] = {}
        self._credentials: list[Any] = []

    def _lookup(self, connection: str, suffix: str = "") -> str | None:
        # The host also accepts the setting with an "AzureWebJobs" prefix.
        for name in (connection, f"AzureWebJobs{connection}"):
            value = self._settings.get(name + suffix)
            if value:
                return value
        return None

    def service(self, connection: str) -> QueueServiceClient:
        """The QueueServiceClient for a binding's `connection` setting name."""
        if connection in self._services:
            return self._services[connection]
        value = self._lookup(connection)
        if value:
            # Parse once to learn the endpoint (no I/O happens before the first request).
            probe = QueueServiceClient.from_connection_string(value)
            options = dict(CLIENT_OPTIONS)
            if (urlparse(probe.url).hostname or "") in _LOOPBACK:
                options["api_version"] = AZURITE_API_VERSION
            client = QueueServiceClient.from_connection_string(value, **options)
        else:
            client = self._identity_client(connection)
        self._services[connection] = client
        return client

    def _identity_client(self, connection: str) -> QueueServiceClient:
        uri = self._lookup(connection, "__queueServiceUri") or self._lookup(connection, "__serviceUri")
        account = self._lookup(connection, "__accountName")
        if not uri and account:
            uri = f"https://{account}.queue.core.windows.net"
        if not uri:
            raise StartupError(
                f"connection '{connection}': set '{connection}' to a connection string "
                f"or '{connection}__queueServiceUri' for an identity-based connection"
            )
        # Imported here so connection-string users never load azure.identity.
        from azure.identity.aio import DefaultAzureCredential

        client_id = self._lookup(connection, "__clientId")
        credential = DefaultAzureCredential(managed_identity_client_id=client_id)
        self._credentials.append(credential)
        return QueueServiceClient(uri, credential=credential, **CLIENT_OPTIONS)

    def queue(self, connection: str, name: str) -> QueueClient:
        return self.service(connection).get_queue_client(name)

    async def close(self) -> None:
        for client in self._services.values():
            await client.close()
        for credential in self._credentials:
            await credential.close()
        self._services.clear()
        self._credentials.clear()


async def ensure_queue(queue: QueueClient) -> None:
    """Create the queue unless it exists (the host would only wait for it; creating is friendlier)."""
    with contextlib.suppress(ResourceExistsError):
        await queue.create_queue()
