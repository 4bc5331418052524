"""Goal 1: CPU per reset through ``ResetService.run`` and the msgraph-sdk gateway is at most 2x
that of plain httpx doing the same Graph calls.

Both sides run against the same emulator (latency 0, no write budget) with concurrency 8 and
reset the same N freshly loaded guests once each: GET user, GET directory roles, POST
/invitations, GET user (verify). The figure is ``time.process_time`` of this process, so the
emulator's own CPU is not counted. Each side is warmed up first (the SDK path imports on its
first call), then the sides alternate (A B C, C B A) and the best run of each counts.

A third, informational side runs ``ResetService`` over a plain-httpx gateway: it splits our
overhead into the service's share (policy, models, status saves) and the SDK's share.
The status store is an in-memory fake, so storage is not part of any figure.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import json
import pstats
import site
from collections.abc import Awaitable, Callable
from typing import Any

from shared.reset.service import ResetService
from tools.bench.common import (
    BenchResult,
    Job,
    MemoryStatusStore,
    PlainGraphGateway,
    Row,
    RunStats,
    bench_settings,
    make_guests,
    make_jobs,
    plain_client,
    plain_reset,
    run_concurrently,
    sdk_gateway,
    service_work,
)
from tools.graph_emulator.runner import EmulatorHandle

GOAL = 2.0
CONCURRENCY = 8
WARMUP = 30
ROUNDS = 2  # runs per side, alternating A B C, C B A; the best of each counts
SDK = "SDK gateway + ResetService"
PLAIN = "plain httpx calls"
PLAIN_SERVICE = "plain-httpx gateway + ResetService"


async def _measure(emulator: EmulatorHandle, count: int, profile: bool) -> tuple[dict[str, list[RunStats]], bool, str]:
    control = emulator.control
    control.reset()
    control.set_latency(0)
    control.set_write_budget(None)
    guests = make_guests(count)
    settings = bench_settings(emulator.base_url, writes_per_second=10_000)

    gateway = sdk_gateway(settings, writes_per_second=10_000)
    plain = plain_client(settings)
    plain_gateway = PlainGraphGateway(settings, plain_client(settings))
    sdk_service = ResetService(settings, gateway, MemoryStatusStore())
    plain_service = ResetService(settings, plain_gateway, MemoryStatusStore())

    async def plain_work(job: Job) -> None:
        await plain_reset(plain, settings, job.request.user_id or "")

    sides: dict[str, Callable[[Job], Awaitable[object]]] = {
        SDK: service_work(sdk_service),
        PLAIN: plain_work,
        PLAIN_SERVICE: service_work(plain_service),
    }
    jobs = make_jobs(count, "cpu")
    runs: dict[str, list[RunStats]] = {name: [] for name in sides}
    requests: dict[str, list[str]] = {}
    profile_text = ""
    try:
        control.set_users(guests)
        for work in sides.values():  # warm-up: imports, connection pools, caches
            await run_concurrently(jobs[:WARMUP], work, CONCURRENCY)
        order = list(sides)
        for name in (order + order[::-1]) * (ROUNDS // 2) + order * (ROUNDS % 2):
            control.set_users(guests)
            control.clear_journal()
            gc.collect()
            stats = await run_concurrently(jobs, sides[name], CONCURRENCY)
            journal = control.journal()
            stats.requests = len(journal)
            requests.setdefault(name, sorted(_signature(entry) for entry in journal))
            runs[name].append(stats)
        if profile:
            control.set_users(guests)
            profiler = cProfile.Profile()
            profiler.enable()
            await run_concurrently(jobs, sides[SDK], CONCURRENCY)
            profiler.disable()
            out = io.StringIO()
            stats_view = pstats.Stats(profiler, stream=out)
            stats_view.sort_stats("tottime").print_stats(25)
            stats_view.sort_stats("cumulative").print_stats(40)
            profile_text = out.getvalue().replace(site.getsitepackages()[0] + "/", "")
    finally:
        await gateway.aclose()
        await plain.aclose()
        await plain_gateway.aclose()
    same = requests[SDK] == requests[PLAIN] == requests[PLAIN_SERVICE]
    return runs, same, profile_text


def _signature(entry: dict[str, Any]) -> str:
    """What the emulator saw of one request, for the check that every side sends the same."""
    return json.dumps(
        [entry["method"], entry["rawPath"], entry["query"], entry["body"], entry["authorization"]],
        sort_keys=True,
    )


def run(emulator: EmulatorHandle, *, quick: bool, profile: bool = False) -> BenchResult:
    count = 60 if quick else 300
    runs, same_requests, profile_text = asyncio.run(_measure(emulator, count, profile))
    best = {name: min(r.cpu for r in stats) for name, stats in runs.items()}
    per_reset = {name: best[name] / count * 1000 for name in best}
    ratio = best[SDK] / best[PLAIN]
    failures = sum(len(r.failures) for stats in runs.values() for r in stats)
    result = BenchResult("cpu", f"CPU per reset, {count} resets, concurrency {CONCURRENCY}, emulator latency 0")
    result.rows.append(
        Row(
            f"{SDK} (ms CPU/reset)",
            f"{per_reset[SDK]:.2f}",
            f"{per_reset[PLAIN]:.2f}",
            f"{ratio:.2f}x",
            f"<= {GOAL:.1f}x",
            ratio <= GOAL,
        )
    )
    result.rows.append(
        Row(
            f"{PLAIN_SERVICE} (info)",
            f"{per_reset[PLAIN_SERVICE]:.2f}",
            f"{per_reset[PLAIN]:.2f}",
            f"{best[PLAIN_SERVICE] / best[PLAIN]:.2f}x",
        )
    )
    result.rows.append(
        Row(
            "SDK gateway vs plain-httpx gateway, both via ResetService (info)",
            f"{per_reset[SDK]:.2f}",
            f"{per_reset[PLAIN_SERVICE]:.2f}",
            f"{best[SDK] / best[PLAIN_SERVICE]:.2f}x",
        )
    )
    result.rows.append(
        Row(
            "same Graph requests on every side (method, path, query, body, auth)",
            "yes" if same_requests else "NO",
            goal="yes",
            passed=same_requests,
        )
    )
    result.rows.append(Row("failed resets (all runs)", str(failures), goal="0", passed=failures == 0))
    for name, stats in runs.items():
        detail = ", ".join(
            f"{r.cpu / count * 1000:.2f} ms CPU, {r.wall:.2f} s wall, {r.requests / count:.1f} req/reset" for r in stats
        )
        result.notes.append(f"{name}: {detail}")
    for stats in runs.values():
        for r in stats:
            result.notes.extend(r.failures[:3])
    result.notes.append(
        f"CPU is time.process_time() of this process (the emulator runs in its own); best of {ROUNDS} "
        "alternating runs per side after a warm-up."
    )
    result.notes.append(
        "Status store: an in-memory fake (dataclasses.replace) on both ResetService sides; storage "
        "costs the same with or without the SDK and is not part of these ratios."
    )
    if profile_text:
        result.notes.append("cProfile of one more SDK run:\n" + profile_text)
    return result
