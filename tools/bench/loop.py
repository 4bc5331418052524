"""Goal 3: the concurrent worker is at least 5x faster than a one-at-a-time loop doing the same calls.

The baseline works the way the PowerShell cmdlets do, one user after the other, but makes the
same Graph calls we make (read the user, check its roles, ``POST /invitations``, read it
back) in plain httpx. Our side is ``ResetService`` through the msgraph-sdk gateway with
concurrency 32 and a ``WriteBudget`` of 20 writes/s. The emulator answers every request after
100 ms and enforces no write quota.

Arithmetic to keep in mind: the loop needs four round trips per user (about 0.4 s), i.e.
about 2.5 users/s, while a 20 writes/s budget caps us at 20 users/s: at most 8x. Two
informational rows: the cmdlet's own loop (read + invite only, 2 round trips: at most 4x
at this budget) and our run with a 100 writes/s budget, where the budget is not the limit.
"""

from __future__ import annotations

import asyncio
import gc
import time

from shared.reset.service import ResetService
from tools.bench.common import (
    BenchResult,
    MemoryStatusStore,
    Row,
    RunStats,
    bench_settings,
    invitation_json,
    make_guests,
    make_jobs,
    plain_client,
    plain_get_user,
    plain_invite,
    plain_reset,
    run_concurrently,
    sdk_gateway,
    service_work,
)
from tools.graph_emulator.runner import EmulatorHandle

GOAL = 5.0
RATE = 20.0
UNCAPPED_RATE = 100.0
LATENCY_MS = 100
CONCURRENCY = 32


async def _ours(emulator: EmulatorHandle, count: int, rate: float) -> RunStats:
    control = emulator.control
    control.set_users(make_guests(count))
    settings = bench_settings(emulator.base_url, writes_per_second=rate)
    gateway = sdk_gateway(settings, writes_per_second=rate)
    service = ResetService(settings, gateway, MemoryStatusStore())
    jobs = make_jobs(count, "loop")
    try:
        control.set_latency(0)
        await gateway.read_user(jobs[0].request.user_id or "")  # warm-up: adapter, imports
        control.set_latency(LATENCY_MS)
        control.clear_journal()
        gc.collect()
        stats = await run_concurrently(jobs, service_work(service), CONCURRENCY)
    finally:
        await gateway.aclose()
    stats.requests = len(control.journal())
    return stats


async def _one_at_a_time(emulator: EmulatorHandle, count: int, *, same_calls: bool) -> RunStats:
    control = emulator.control
    control.set_users(make_guests(count))
    settings = bench_settings(emulator.base_url, writes_per_second=RATE)
    base = settings.graph_base_url
    failures: list[str] = []
    async with plain_client(settings) as client:
        control.set_latency(0)
        await plain_get_user(client, base, make_guests(1)[0]["id"])  # warm-up: connection
        control.set_latency(LATENCY_MS)
        control.clear_journal()
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for guest in make_guests(count):
            try:
                if same_calls:
                    await plain_reset(client, settings, guest["id"])
                else:
                    user = await plain_get_user(client, base, guest["id"])
                    await plain_invite(client, base, invitation_json(user, settings))
            except RuntimeError as error:
                failures.append(str(error))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stats = RunStats(wall, cpu, count - len(failures), failures)
    stats.requests = len(control.journal())
    return stats


async def _measure(emulator: EmulatorHandle, count: int) -> tuple[RunStats, RunStats, RunStats, RunStats]:
    emulator.control.reset()
    try:
        ours = await _ours(emulator, count, RATE)
        loop = await _one_at_a_time(emulator, count, same_calls=True)
        cmdlet = await _one_at_a_time(emulator, count, same_calls=False)
        uncapped = await _ours(emulator, count, UNCAPPED_RATE)
    finally:
        emulator.control.set_latency(0)
    return ours, loop, cmdlet, uncapped


def run(emulator: EmulatorHandle, *, quick: bool) -> BenchResult:
    count = 30 if quick else 200
    ours, loop, cmdlet, uncapped = asyncio.run(_measure(emulator, count))
    speedup = loop.wall / ours.wall
    ceiling = loop.wall / (count / RATE)
    result = BenchResult(
        "loop",
        f"{count} resets, emulator latency {LATENCY_MS} ms, no emulator write quota",
    )
    result.rows.append(
        Row(
            f"ours (concurrency {CONCURRENCY}, WriteBudget {RATE:g}/s) vs one-at-a-time loop, s",
            f"{ours.wall:.2f}",
            f"{loop.wall:.2f}",
            f"{speedup:.2f}x",
            f">= {GOAL:.1f}x",
            speedup >= GOAL,
        )
    )
    result.rows.append(
        Row(
            f"best possible speed-up at {RATE:g} writes/s (info)",
            f"{count / RATE:.2f}",
            f"{loop.wall:.2f}",
            f"{ceiling:.2f}x",
        )
    )
    result.rows.append(
        Row(
            "ours vs the cmdlet's loop (read + invite only) (info)",
            f"{ours.wall:.2f}",
            f"{cmdlet.wall:.2f}",
            f"{cmdlet.wall / ours.wall:.2f}x",
        )
    )
    result.rows.append(
        Row(
            f"ours with WriteBudget {UNCAPPED_RATE:g}/s (info)",
            f"{uncapped.wall:.2f}",
            f"{loop.wall:.2f}",
            f"{loop.wall / uncapped.wall:.2f}x",
        )
    )
    failures = sum(len(s.failures) for s in (ours, loop, cmdlet, uncapped))
    result.rows.append(Row("failed resets (all runs)", str(failures), goal="0", passed=failures == 0))
    result.notes.append(
        f"Graph requests per user: ours {ours.requests / count:.1f} (find, roles, invite, verify), "
        f"same-calls loop {loop.requests / count:.1f}, cmdlet loop {cmdlet.requests / count:.1f} (read, invite)."
    )
    if ceiling < GOAL:
        result.notes.append(
            f"At {RATE:g} writes/s our run cannot be shorter than {count / RATE:.1f} s while the loop "
            f"takes about 4 x {LATENCY_MS} ms per user, so {GOAL:g}x is out of reach at this budget "
            f"whatever the implementation; the {UNCAPPED_RATE:g}/s row shows concurrency is not the limit."
        )
    for stats in (ours, loop, cmdlet, uncapped):
        result.notes.extend(stats.failures[:3])
    return result
