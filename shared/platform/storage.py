"""Storage clients built from the settings: a connection string locally, managed identity in Azure."""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING, Any

from shared.platform.errors import SettingsError
from shared.platform.settings import StorageConnection

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient
    from azure.storage.blob.aio import ContainerClient
    from azure.storage.queue.aio import QueueClient

# Short, explicit network limits: a stalled storage call should fail and be retried, not hang.
_TIMEOUTS: dict[str, Any] = {"connection_timeout": 5, "read_timeout": 30}
# Blob downloads come in ranges of this size (the SDK's first GET would otherwise take 32 MB),
# so a large CSV file is streamed through a small, fixed amount of memory.
BLOB_CHUNK_BYTES = 1024 * 1024


def client_options() -> dict[str, Any]:
    """Keyword arguments every storage client gets: network limits, and proxy lookups only if needed.

    With ``use_env_settings`` on (the SDK default) the aiohttp transport looks for proxy variables
    and ``~/.netrc`` in a worker thread on every request: two thread hops per call, about a third
    of the client-side CPU of a queue send (``python -m tools.bench bulk`` prints both rates).
    When the environment names a proxy (the same ``urllib.request.getproxies()`` that aiohttp
    reads), the lookups stay on and the proxy, with its ``NO_PROXY`` exceptions, is honoured.
    """
    proxies = {scheme for scheme in urllib.request.getproxies() if scheme != "no"}
    return dict(_TIMEOUTS) if proxies else {**_TIMEOUTS, "use_env_settings": False}


def _credential(storage: StorageConnection) -> Any:
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=storage.client_id)


def queue_client(storage: StorageConnection, name: str) -> QueueClient:
    """An async queue client; messages are plain text, matching host.json's messageEncoding none."""
    from azure.storage.queue.aio import QueueClient

    if storage.connection_string:
        return QueueClient.from_connection_string(storage.connection_string, name, **client_options())
    return QueueClient(storage.queue_service_uri or "", name, credential=_credential(storage), **client_options())


def table_client(storage: StorageConnection, name: str) -> TableClient:
    from azure.data.tables.aio import TableClient

    if storage.connection_string:
        return TableClient.from_connection_string(storage.connection_string, name, **client_options())
    return TableClient(storage.table_service_uri or "", name, credential=_credential(storage), **client_options())


def container_client(storage: StorageConnection, name: str) -> ContainerClient:
    """An async blob container client that downloads in ``BLOB_CHUNK_BYTES`` ranges."""
    from azure.storage.blob.aio import ContainerClient

    chunks: dict[str, Any] = {"max_single_get_size": BLOB_CHUNK_BYTES, "max_chunk_get_size": BLOB_CHUNK_BYTES}
    if storage.connection_string:
        return ContainerClient.from_connection_string(storage.connection_string, name, **client_options(), **chunks)
    if not storage.blob_service_uri:
        raise SettingsError(
            ["AzureWebJobsStorage__blobServiceUri is not set: the bulk job reads CSV files from blob storage"]
        )
    return ContainerClient(
        storage.blob_service_uri, name, credential=_credential(storage), **client_options(), **chunks
    )
