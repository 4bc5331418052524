"""The bulk job's hold on a source file: renewed while it works, given back when done."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob.aio import ContainerClient

from shared.bulk import job as bulk_job
from tools.azurite import AzuriteEndpoints


async def test_lease_is_renewed_past_its_duration_and_released_at_the_end(
    azurite: AzuriteEndpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_job, "LEASE_SECONDS", 15)  # the shortest lease Azure allows
    monkeypatch.setattr(bulk_job, "RENEW_SECONDS", 1.0)
    async with ContainerClient.from_connection_string(azurite.connection_string, f"lease-{uuid.uuid4().hex[:8]}") as c:
        await c.create_container()
        await c.upload_blob("incoming/a.csv", b"userId\n")
        blob = c.get_blob_client("incoming/a.csv")
        async with bulk_job._file_lease(blob) as held:
            assert held is not None
            async with bulk_job._file_lease(blob) as second:
                assert second is None  # another run now leaves the file alone
            await asyncio.sleep(17)  # longer than the lease: only renewals keep it
            with pytest.raises(HttpResponseError) as taken:
                await blob.acquire_lease(lease_duration=15)
            assert taken.value.status_code == 409
        lease = await blob.acquire_lease(lease_duration=15)  # given back at the end of the block
        await lease.release()
