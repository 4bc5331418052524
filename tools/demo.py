"""`make demo`: run the whole app locally on the embedded defaults and show what happened.

Starts a fresh Azurite, the Graph emulator and the local runner (which loads function_app.py),
enqueues a few typical requests, waits for each to end, prints their outcomes, stops everything,
and ends with a summary from the app's own metrics: the instruments operators chart in Azure.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from azure.data.tables import TableClient
from azure.storage.queue import QueueClient
from rich.console import Console
from rich.table import Table

from shared.platform.settings import DEFAULTS
from tools import metrics
from tools.azurite import running_azurite
from tools.devhost import running_devhost
from tools.graph_emulator.runner import running_emulator

REPO_ROOT = Path(__file__).resolve().parent.parent
LEE = "5e0c1d2a-0008-4a5b-9c3d-000000000008"

SAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("reset by id", {"userId": "5e0c1d2a-0001-4a5b-9c3d-000000000001", "ticketId": "INC-1001"}),
    (
        "by email, new address",
        {"email": "brian.j@tailspin.example", "newEmail": "brian@new.example", "ticketId": "INC-1002"},
    ),
    ("a member (refused)", {"userId": "5e0c1d2a-0003-4a5b-9c3d-000000000003", "ticketId": "INC-1003"}),
    ("unknown user", {"email": "nobody@nowhere.example", "ticketId": "INC-1004"}),
    ("meets a 429 first", {"userId": LEE, "ticketId": "INC-1005"}),
    ("dry run", {"userId": "5e0c1d2a-0009-4a5b-9c3d-000000000009", "dryRun": True, "ticketId": "INC-1006"}),
]


def main() -> int:
    console = Console(width=140)
    logging.basicConfig(level=logging.WARNING)
    with running_azurite() as azurite, running_emulator() as graph:
        console.print(f"Azurite on ports {azurite.queue_port}/{azurite.table_port}, Graph emulator at {graph.base_url}")
        # The 429 sample: Graph throttles the first read of that user for 1 s.
        graph.control.add_fault(method="GET", path=f"^/users/{LEE}$", status=429, retry_after="1", times=1)
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GRAPH_BASE_URL": graph.base_url,
            "FUNCTIONS_WORKER_RUNTIME": "python",
            # Least power: the queue may switch addresses only because the operator says so.
            "QUEUE_CAPABILITIES": "Reset.Submit,Reset.SwitchEmail",
            # The production pace (6 a minute) would make the demo wait for its invitation slots.
            "INVITATIONS_PER_MINUTE": "600",
        }
        with running_devhost(REPO_ROOT, env=env, metrics=True) as host:
            console.print(f"local runner at {host.base_url} (function_app.py)")
            queue = QueueClient.from_connection_string(azurite.connection_string, DEFAULTS["RESET_REQUEST_QUEUE"])
            ids: dict[str, str] = {}
            for label, body in SAMPLES:
                request_id = f"demo-{uuid.uuid4().hex[:8]}"
                ids[label] = request_id
                queue.send_message(json.dumps({**body, "requestId": request_id}))
            console.print(f"enqueued {len(SAMPLES)} requests on {queue.queue_name}; waiting for outcomes…")
            table = TableClient.from_connection_string(azurite.connection_string, DEFAULTS["RESET_STATUS_TABLE"])
            outcomes = _wait(table, ids, timeout=60)
            invitations = len(graph.control.invitations())
            throttled = {e["path"].split("/")[2] for e in graph.control.journal() if e["status"] == 429}
    _print(console, outcomes, invitations, throttled)
    _print_metrics(console, metrics.load(host.metrics_path or Path("-")))
    finished = all(o.get("Status") in {"Succeeded", "Failed", "DryRunPassed"} for o in outcomes.values())
    return 0 if finished else 1


def _wait(table: TableClient, ids: dict[str, str], *, timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    outcomes: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for label, request_id in ids.items():
            try:
                outcomes[label] = dict(table.get_entity(request_id, "status"))
            except Exception:
                outcomes[label] = {}
        if all(o.get("Status") in {"Succeeded", "Failed", "DryRunPassed"} for o in outcomes.values()):
            break
        time.sleep(0.5)
    return outcomes


def _print(console: Console, outcomes: dict[str, dict[str, Any]], invitations: int, throttled: set[str]) -> None:
    table = Table(title="Guest Redemption Reset — demo outcomes")
    for column in ("request", "status", "code", "attempts", "where it ended", "note"):
        table.add_column(column)
    for label, entity in outcomes.items():
        note = "Graph answered 429 first; waited Retry-After" if entity.get("UserId") in throttled else ""
        status = entity.get("Status", "(none yet)")
        where = {
            "Succeeded": "reset sent, result queue",
            "DryRunPassed": "checks only, result queue",
            "Failed": "poison queue → Failed, result queue",
        }.get(status, "still queued")
        table.add_row(label, status, entity.get("ErrorCode") or "", str(entity.get("Attempts", "")), where, note)
    console.print(table)
    console.print(f"invitations the Graph emulator received: {invitations}")


def _print_metrics(console: Console, points: list[metrics.Point]) -> None:
    """What Application Insights would show for this run, from the same instruments."""
    table = Table(title="What operators see (the app's OpenTelemetry metrics)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for outcome, count in sorted(metrics.by(points, "guest_reset.resets", "outcome").items()):
        table.add_row(f"resets, outcome {outcome}", f"{count:.0f}")
    failed = [p for p in points if p.name == "guest_reset.resets" and p.attributes.get("outcome") == "Failed"]
    for code, count in sorted(metrics.by(failed, "guest_reset.resets", "code").items()):
        table.add_row(f"  Failed with code {code}", f"{count:.0f}")
    for status, count in sorted(metrics.by(points, "guest_reset.graph.duration", "status").items()):
        table.add_row(f"Graph calls answered {status}", f"{count:.0f}")
    table.add_row("Graph 429s", f"{metrics.total(points, 'guest_reset.graph.throttled'):.0f}")
    waited = metrics.histogram_sum(points, "guest_reset.budget.wait")
    table.add_row(
        "Graph writes (seconds waited for the budget)",
        f"{metrics.total(points, 'guest_reset.budget.wait'):.0f} ({waited:.2f} s)",
    )
    table.add_row(
        "storage operations on shared state (budget, pace, breaker)",
        f"{metrics.total(points, 'guest_reset.fleet.storage_ops'):.0f}",
    )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
