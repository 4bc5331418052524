"""Goal 2: under a Graph write quota, resets run at the quota's pace without being throttled.

The emulator answers after 100 ms and allows 20 writes/s (burst 20, then 429). Our gateway's
``WriteBudget`` is set to the same 20 writes/s, and N resets run with concurrency 32 through
``ResetService`` and the msgraph-sdk gateway (in-memory status store). Each reset without
newEmail makes exactly one write (``POST /invitations``), so the budget-limited ideal is
``writes / 20`` seconds; the run must finish within 1.15x of it with no failure and no 429 in
the emulator's journal.
"""

from __future__ import annotations

import asyncio
import gc

from shared.reset.service import ResetService
from tools.bench.common import (
    BenchResult,
    MemoryStatusStore,
    Row,
    RunStats,
    bench_settings,
    make_guests,
    make_jobs,
    run_concurrently,
    sdk_gateway,
    service_work,
)
from tools.graph_emulator.runner import EmulatorHandle

GOAL = 1.15
RATE = 20.0
LATENCY_MS = 100
CONCURRENCY = 32
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}


async def _measure(emulator: EmulatorHandle, count: int) -> tuple[RunStats, int, int, int]:
    control = emulator.control
    control.reset()
    guests = make_guests(count)
    control.set_users(guests)
    settings = bench_settings(emulator.base_url, writes_per_second=RATE)
    gateway = sdk_gateway(settings, writes_per_second=RATE)
    service = ResetService(settings, gateway, MemoryStatusStore())
    jobs = make_jobs(count, "throughput")
    try:
        # Warm-up without a write: the first SDK call builds the adapter and imports kiota.
        await gateway.read_user(jobs[0].request.user_id or "")
        control.set_latency(LATENCY_MS)
        control.set_write_budget(RATE, burst=RATE)
        control.clear_journal()
        gc.collect()
        stats = await run_concurrently(jobs, service_work(service), CONCURRENCY)
    finally:
        await gateway.aclose()
    journal = control.journal()
    stats.requests = len(journal)
    writes = sum(1 for entry in journal if entry["method"] in WRITE_METHODS)
    throttled = sum(1 for entry in journal if entry["status"] == 429 or entry["throttled"])
    invitations = len(control.invitations())
    control.set_write_budget(None)
    control.set_latency(0)
    return stats, writes, throttled, invitations


def run(emulator: EmulatorHandle, *, quick: bool) -> BenchResult:
    count = 100 if quick else 500
    stats, writes, throttled, invitations = asyncio.run(_measure(emulator, count))
    ideal = writes / RATE
    ratio = stats.wall / ideal if ideal else float("inf")
    result = BenchResult(
        "throughput",
        f"{count} resets, concurrency {CONCURRENCY}, emulator latency {LATENCY_MS} ms and "
        f"write quota {RATE:g}/s (burst {RATE:g}), WriteBudget {RATE:g}/s",
    )
    result.rows.append(
        Row(
            "elapsed vs budget-limited ideal (s)",
            f"{stats.wall:.2f}",
            f"{ideal:.2f}",
            f"{ratio:.3f}x",
            f"<= {GOAL:.2f}x",
            ratio <= GOAL,
        )
    )
    result.rows.append(Row("resets completed", str(stats.done), str(count), passed=stats.done == count))
    result.rows.append(Row("failed resets", str(len(stats.failures)), goal="0", passed=not stats.failures))
    result.rows.append(Row("429s in the emulator journal", str(throttled), goal="0", passed=throttled == 0))
    result.rows.append(
        Row(
            "writes (journal) / invitations created",
            f"{writes} / {invitations}",
            str(count),
            passed=writes == count == invitations,
        )
    )
    result.rows.append(Row("achieved writes/s (info)", f"{writes / stats.wall:.2f}", f"{RATE:g}"))
    result.rows.append(Row("client CPU per reset, ms (info)", f"{stats.cpu / count * 1000:.2f}"))
    result.notes.append(
        f"ideal = writes / {RATE:g} per second; {stats.requests} Graph requests in all "
        f"({stats.requests / count:.1f} per reset)."
    )
    result.notes.extend(stats.failures[:3])
    return result
