"""The app-wide budget across real processes: three local runners on one queue, one Azurite, the emulator's quota."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tools import metrics
from tools.azurite import AzuriteEndpoints
from tools.bench import fleet
from tools.bench.common import make_guests
from tools.graph_emulator.runner import EmulatorHandle

WRITES = {"POST", "PATCH", "PUT", "DELETE"}


def test_three_runners_share_one_budget_and_one_pause(azurite: AzuriteEndpoints, emulator: EmulatorHandle) -> None:
    """No second above the quota and no quota 429 with three workers; a 429 seen by one holds the others' writes.

    The emulator allows 20 writes/s (burst 20); the app's budget is 18/s (burst 15), shared. Once
    the run is under way one invitation is answered 429 with Retry-After 5 s: every runner's writes
    stop until it has passed, except on slots granted before the pause reached them: granted at
    most a horizon (1 s) ahead, void half a second after their time, and on a busy 2-core host a
    storage round trip can take most of a second.
    """
    count = 120  # more than two runners take at once (batchSize 32 each), so all three work
    control = emulator.control
    control.reset()
    control.set_users(make_guests(count))
    control.set_latency(50)
    control.set_write_budget(20, burst=20)
    names = fleet.names_for("e2e")
    results = fleet.result_queue(azurite, names)
    with fleet.runners(3, fleet.runner_env(azurite, emulator, names)) as hosts:
        control.clear_journal()
        asyncio.run(fleet.enqueue(azurite.connection_string, names["RESET_REQUEST_QUEUE"], fleet.bodies(0, count, "e")))
        deadline = time.monotonic() + 60
        while len(control.invitations()) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        control.add_fault(method="POST", path="^/invitations$", status=429, retry_after="5", times=1)
        fleet.wait_for_results(results, count, timeout=120)
        journal = control.journal()
        statuses = fleet.drain_statuses(results)
    assert statuses == {"Succeeded": count}
    per_runner = [metrics.total(metrics.load(h.metrics_path or Path("-")), "guest_reset.resets") for h in hosts]
    assert all(n > 0 for n in per_runner), f"every runner took part: {per_runner}"

    quota_429s = [e for e in journal if e["status"] == 429 and (e["fault"] or {}).get("source") == "writeBudget"]
    assert quota_429s == []
    writes = sorted(e["ts"] for e in journal if e["method"] in WRITES and e["status"] != 429)
    assert fleet.most_in_any_window(writes) <= 20 + 20
    [throttled] = [e["ts"] for e in journal if e["status"] == 429]
    during_pause = [round(t - throttled, 2) for t in writes if throttled + 2.5 < t < throttled + 4.9]
    resumed = min((t for t in writes if t > throttled + 2.5), default=float("nan")) - throttled
    print(
        f"\n{count} resets on 3 runners ({' / '.join(f'{n:.0f}' for n in per_runner)}): at most "
        f"{fleet.most_in_any_window(writes)} writes in any second (quota + burst 40), {len(quota_429s)} quota 429s; "
        f"after one runner's 429 (Retry-After 5 s), {len(during_pause)} writes from 2.5 to 4.9 s, "
        f"the next at {resumed:.2f} s"
    )
    assert during_pause == [], f"writes this many seconds after another runner's 429: {during_pause}"
    assert any(t >= throttled + 5 for t in writes), "work went on after the pause"
