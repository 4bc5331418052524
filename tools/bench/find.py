"""``guest-reset find`` (issue 11's speed goals): an unmanaged-tenant scan of a generated tenant.

1. Wall time: ``find_guests`` over ``GraphGuestDirectory`` (the CLI's path: criteria, paging with
   read-ahead, one userrealm lookup per domain, the CSV streamed to a file) for 20,000 guests
   (quick: 10,000) at 100 ms emulator latency, vs a plain-httpx loop reading the same pages
   (same ``$filter``/``$select``/``$top``, following ``@odata.nextLink``) and starting the same
   userrealm lookups (one per new domain, at the same concurrency) as it goes: <= 1.2x. Graph's
   paging is sequential, so both are bound by page count x latency plus the last lookups.
2. Memory: peak traced allocation (tracemalloc) of the same run at 20,000 vs 5,000 guests
   (quick: 10,000 vs 5,000), latency off: flat, <= 1.2x. Pages are the same size whatever the
   tenant; only a couple are held at a time, and the domain pool does not grow with the tenant.
3. userrealm calls: the emulator's journal holds exactly one lookup per distinct domain among
   the guests that need one (ExternalAzureAD guests with a mail).

Sides alternate, best of three each; both read from one emulator process, which
serves the generated tenant from memory.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from shared.bulk.directory import GUEST_SELECT, GraphGuestDirectory
from shared.bulk.discovery import ENTRA_ISSUER, REALM_CONCURRENCY, CsvSink, FindCriteria, FindSummary, find_guests
from shared.platform.settings import Settings
from shared.reset.throttle import RetryPolicy
from tools.bench.common import BenchResult, Row, bench_settings, plain_client
from tools.graph_emulator.runner import EmulatorHandle

WALL_GOAL = 1.2
MEMORY_GOAL = 1.2
LATENCY_MS = 100
DOMAINS = 100
CRITERIA = FindCriteria(unmanaged=True)


def _directory(settings: Settings) -> GraphGuestDirectory:
    policy = RetryPolicy(settings.graph_retry_delays, settings.graph_max_attempts)
    return GraphGuestDirectory(settings, gateway=None, policy=policy)  # type: ignore[arg-type]  # no lookups by address


async def _find(settings: Settings, folder: Path) -> tuple[float, FindSummary]:
    """The app's path, timed from the first request to the last row on disk."""
    directory = _directory(settings)
    try:
        with (
            (folder / "found.csv").open("w", encoding="utf-8", newline="") as found,
            (folder / "conflicts.csv").open("w", encoding="utf-8", newline="") as conflicts,
        ):
            started = time.perf_counter()
            summary = await find_guests(directory, CRITERIA, CsvSink(found, conflicts))
            return time.perf_counter() - started, summary
    finally:
        await directory.aclose()


async def _plain(settings: Settings) -> tuple[float, int, int]:
    """The baseline: the same pages and lookups with nothing but httpx; returns (seconds, guests, lookups)."""
    query = CRITERIA.query()
    params = {"$filter": query.odata_filter, "$select": ",".join(GUEST_SELECT), "$top": str(query.page_size)}
    url: str | None = f"{settings.graph_base_url}/users?" + "&".join(
        f"{k}={quote(v, safe=',')}" for k, v in params.items()
    )
    login = settings.login_base_url
    gate = asyncio.Semaphore(REALM_CONCURRENCY)
    lookups: dict[str, asyncio.Task[Any]] = {}
    read = 0
    async with plain_client(settings) as graph, httpx.AsyncClient() as realm_client:

        async def realm(address: str) -> Any:
            async with gate:
                response = await realm_client.get(f"{login}/common/userrealm/{address}", params={"api-version": "2.1"})
                return response.json()

        started = time.perf_counter()
        while url is not None:
            body = (await graph.get(url)).json()
            for user in body["value"]:
                read += 1
                mail = user.get("mail")
                issuers = {i.get("issuer") for i in user.get("identities") or ()}
                if mail and ENTRA_ISSUER in issuers:
                    domain = mail.rsplit("@", 1)[1].lower()
                    if domain not in lookups:
                        lookups[domain] = asyncio.create_task(realm(mail))
            url = body.get("@odata.nextLink")
        await asyncio.gather(*lookups.values())
        return time.perf_counter() - started, read, len(lookups)


def _peak(settings: Settings, folder: Path) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        asyncio.run(_find(settings, folder))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _expected_lookups(emulator: EmulatorHandle) -> int:
    domains = set()
    for user in emulator.control.users():
        issuers = {i.get("issuer") for i in user.get("identities") or ()}
        if user.get("userType") == "Guest" and user.get("mail") and ENTRA_ISSUER in issuers:
            domains.add(user["mail"].rsplit("@", 1)[1].lower())
    return len(domains)


def run(emulator: EmulatorHandle, *, quick: bool) -> BenchResult:
    guests = 10_000 if quick else 20_000
    small = 5_000  # above the pages a run holds at once (about five), so the comparison means something
    rounds = 3
    control = emulator.control
    settings = bench_settings(emulator.base_url, writes_per_second=10)
    best_find, best_plain = float("inf"), float("inf")
    with tempfile.TemporaryDirectory(prefix="bench-find-") as tmp:
        folder = Path(tmp)
        control.reset()
        control.generate_tenant(guests, seed=1, domains=DOMAINS, keep_fixture=False)
        expected_lookups = _expected_lookups(emulator)
        asyncio.run(_plain(settings))  # warm-up of both sides: imports, first-use caches, the emulator's paths
        asyncio.run(_find(settings, folder))
        control.set_latency(LATENCY_MS)
        summary = FindSummary()
        lookups_seen = plain_lookups = plain_read = 0
        for _ in range(rounds):
            before = len(control.realm_lookups())
            elapsed, summary = asyncio.run(_find(settings, folder))
            lookups_seen = len(control.realm_lookups()) - before
            best_find = min(best_find, elapsed)
            elapsed, plain_read, plain_lookups = asyncio.run(_plain(settings))
            best_plain = min(best_plain, elapsed)
        control.set_latency(0)
        peaks = {guests: _peak(settings, folder)}
        control.generate_tenant(small, seed=1, domains=DOMAINS, keep_fixture=False)
        peaks[small] = _peak(settings, folder)
        control.reset()

    ratio = best_find / best_plain
    memory = peaks[guests] / peaks[small]
    pages = summary.pages
    result = BenchResult(
        "find",
        f"find --unmanaged over {guests:,} generated guests ({DOMAINS} partner domains), emulator latency "
        f"{LATENCY_MS} ms, realm lookups {REALM_CONCURRENCY} at a time",
    )
    result.rows.append(
        Row(
            "wall time vs plain-httpx paging (s)",
            f"{best_find:.2f}",
            f"{best_plain:.2f}",
            f"{ratio:.3f}x",
            f"<= {WALL_GOAL:.1f}x",
            ratio <= WALL_GOAL,
        )
    )
    result.rows.append(
        Row(
            f"peak memory at {guests:,} vs {small:,} guests (MiB)",
            f"{peaks[guests] / 2**20:.2f}",
            f"{peaks[small] / 2**20:.2f}",
            f"{memory:.3f}x",
            f"<= {MEMORY_GOAL:.1f}x",
            memory <= MEMORY_GOAL,
        )
    )
    result.rows.append(
        Row(
            "userrealm calls vs distinct domains",
            str(lookups_seen),
            str(expected_lookups),
            goal="equal",
            passed=lookups_seen == expected_lookups == summary.realm_lookups,
        )
    )
    result.rows.append(
        Row(
            "guests read (find / plain)",
            f"{summary.read:,}",
            f"{plain_read:,}",
            passed=summary.read == plain_read == guests,
        )
    )
    result.rows.append(Row("pages x latency (s, info)", f"{pages * LATENCY_MS / 1000:.2f}", f"{pages} pages"))
    result.rows.append(
        Row("unmanaged guests found (info)", f"{summary.matched:,}", f"{plain_lookups} domains looked up")
    )
    return result
