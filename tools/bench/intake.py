"""HTTP intake costs no more than the storage work it must do (issue 3's speed goals).

Azurite is the ceiling here (about 500 queue sends/s with 16-64 concurrent async sends), so each
figure is compared with raw async SDK calls doing the same storage work in the same run: for
every request, one table insert (its Accepted record: the very entity intake writes, built
before the clock starts) and one queue send (its very message), with the SDK clients configured
as the app configures them (``shared.storage.client_options``).

1. A 1,000-request batch ``POST /api/resets`` through the local runner vs the same 1,000 table
   inserts and queue sends with the async SDKs at the intake's own concurrency (32): ≤ 1.3x.
2. Single-request intake with 16 concurrent HTTP clients vs the same work by 16 concurrent raw
   workers: the rate stays within 1.5x (raw rate / intake rate).

Each side gets fresh queue and table names (Azurite slows down as queues deepen), and the two
sides alternate, best of three each (quick: two). The HTTP load comes from an aiohttp client: everything shares
two cores, and httpx took ~1.5 ms of CPU per request from the processes being measured, aiohttp
~0.3 ms.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient

from shared.api.intake import CONCURRENCY
from shared.platform.storage import client_options
from shared.reset.contract import ResetRequest, canonical_json
from shared.reset.status import Status, StatusRecord, _to_entity
from tools.azurite import AzuriteEndpoints, running_azurite
from tools.bench.common import BenchResult, Row, guest_id
from tools.devhost import running_devhost
from tools.graph_emulator.runner import EmulatorHandle

BATCH_GOAL = 1.3
SINGLE_GOAL = 1.5
CLIENTS = 16
REPO_ROOT = Path(__file__).resolve().parents[2]


def _names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return {"queue": f"bench-{suffix}", "table": f"Bench{suffix}"}


def _request(index: int, tag: str) -> dict[str, str]:
    return {"userId": guest_id(index), "requestId": f"{tag}-{index}", "ticketId": f"BENCH-{index}"}


async def _gather_limited(count: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> float:
    """Run work(0..count-1) with ``concurrency`` workers; return wall seconds."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await work(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def _storage_work(count: int) -> list[tuple[dict[str, object], str]]:
    """What intake writes for each request: its Accepted status entity and its queue message."""
    work = []
    for index in range(count):
        body = _request(index, f"raw-{uuid.uuid4().hex[:6]}")
        request = ResetRequest.model_validate(body, by_alias=True, by_name=False)
        record = StatusRecord.for_request(request, body["requestId"], Status.ACCEPTED)
        entity = _to_entity(replace(record, history=record.with_event("accepted")))
        work.append((entity, canonical_json(request, requestId=body["requestId"])))
    return work


async def _raw(azurite: AzuriteEndpoints, count: int, concurrency: int) -> float:
    """The storage work alone (entities and messages built beforehand), async SDKs configured as the app's."""
    names, items = _names(), _storage_work(count)
    conn, options = azurite.connection_string, client_options()
    async with (
        TableClient.from_connection_string(conn, names["table"], **options) as table,
        QueueClient.from_connection_string(conn, names["queue"], **options) as queue,
    ):
        await table.create_table()
        await queue.create_queue()

        async def work(index: int) -> None:
            entity, message = items[index]
            await table.create_entity(entity)
            await queue.send_message(message)

        return await _gather_limited(count, concurrency, work)


async def _post(client: aiohttp.ClientSession, url: str, body: object) -> tuple[int, bytes]:
    async with client.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.read()


async def _batch_via_api(client: aiohttp.ClientSession, url: str, count: int) -> float:
    body = {"requests": [_request(i, f"batch-{uuid.uuid4().hex[:6]}") for i in range(count)]}
    started = time.perf_counter()
    status, answer = await _post(client, url, body)
    elapsed = time.perf_counter() - started
    if status != 202 or len(json.loads(answer)["accepted"]) != count:
        raise RuntimeError(f"batch intake answered {status}: {answer[:300]!r}")
    return elapsed


async def _singles_via_api(client: aiohttp.ClientSession, url: str, count: int) -> float:
    tag = f"single-{uuid.uuid4().hex[:6]}"

    async def work(index: int) -> None:
        status, answer = await _post(client, url, _request(index, tag))
        if status != 202:
            raise RuntimeError(f"intake answered {status}: {answer[:300]!r}")

    return await _gather_limited(count, CLIENTS, work)


def _env(azurite: AzuriteEndpoints, emulator: EmulatorHandle) -> dict[str, str]:
    names = _names()
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "GRAPH_BASE_URL": emulator.base_url,
        "RESET_REQUEST_QUEUE": names["queue"],
        "RESET_RESULT_QUEUE": f"{names['queue']}-res",
        "RESET_STATUS_TABLE": names["table"],
        # Intake only: the workers stay off, so nothing competes with intake for Azurite.
        "AzureWebJobs.process_reset.Disabled": "true",
        "AzureWebJobs.record_poisoned_reset.Disabled": "true",
    }


async def _measure(azurite: AzuriteEndpoints, base_url: str, batch: int, singles: int, rounds: int) -> dict[str, float]:
    best: dict[str, float] = {}
    url = f"{base_url}/api/resets"
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:
        # Warm-up: the runtime, its clients, queue and table creation, and all 16 connections.
        await _batch_via_api(client, url, 10)
        await _singles_via_api(client, url, 2 * CLIENTS)
        sides: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("raw_batch", lambda: _raw(azurite, batch, CONCURRENCY)),
            ("api_batch", lambda: _batch_via_api(client, url, batch)),
            ("raw_single", lambda: _raw(azurite, singles, CLIENTS)),
            ("api_single", lambda: _singles_via_api(client, url, singles)),
        ]
        for _ in range(rounds):
            for key, side in sides:
                seconds = await side()
                best[key] = min(best.get(key, seconds), seconds)
    return best


def run(emulator: EmulatorHandle, *, quick: bool) -> BenchResult:
    batch = 300 if quick else 1000
    singles = 200 if quick else 1000
    rounds = 2 if quick else 3
    with running_azurite() as azurite, running_devhost(REPO_ROOT, env=_env(azurite, emulator)) as host:
        best = asyncio.run(_measure(azurite, host.base_url, batch, singles, rounds))
    batch_ratio = best["api_batch"] / best["raw_batch"]
    raw_rate, api_rate = singles / best["raw_single"], singles / best["api_single"]
    single_ratio = raw_rate / api_rate
    result = BenchResult("intake", f"through the local runner on a fresh Azurite; best of {rounds}, alternating")
    result.rows.append(
        Row(
            f"{batch}-request batch accepted, s",
            f"{best['api_batch']:.2f}",
            f"{best['raw_batch']:.2f}",
            f"{batch_ratio:.2f}x",
            f"<= {BATCH_GOAL}x",
            batch_ratio <= BATCH_GOAL,
        )
    )
    result.rows.append(
        Row(
            f"single requests, {CLIENTS} clients, requests/s",
            f"{api_rate:.0f}",
            f"{raw_rate:.0f}",
            f"{single_ratio:.2f}x",
            f"<= {SINGLE_GOAL}x",
            single_ratio <= SINGLE_GOAL,
        )
    )
    result.rows.append(
        Row(
            "batch intake rate, requests/s (info)",
            f"{batch / best['api_batch']:.0f}",
            f"{batch / best['raw_batch']:.0f}",
        )
    )
    result.notes.append(
        "Baseline: raw async azure-data-tables + azure-storage-queue calls, one insert (the Accepted entity "
        f"intake writes) and one send (its message) per request, at the same concurrency (batch {CONCURRENCY}, "
        f"singles {CLIENTS}), clients configured as the app's. HTTP load from an aiohttp client."
    )
    return result
