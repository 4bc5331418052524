"""What the backlog timer reads every five minutes: poisoned messages waiting, requests that stopped moving.

Both become gauges (the workbook charts them, two alerts watch them) and one log line; the timer
also reads the invitation breaker, so its gauge has a value while nothing is delivered. A request
is stuck when it is Accepted or Processing and its record has not changed for ``STUCK_AFTER``:
its message was lost, or every delivery dies before it can record anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from shared.platform import telemetry
from shared.platform.logs import app_logger
from shared.reset.runtime import get_runtime
from shared.reset.status import ROW_KEY, Status, iso_time, utcnow

log = app_logger()

STUCK_AFTER = timedelta(minutes=30)
# Counting stops here: past a thousand the number no longer changes what an operator does.
STUCK_COUNT_LIMIT = 1000


@dataclass(frozen=True)
class Backlog:
    poison_depth: int
    stuck: int


async def observe_backlog() -> Backlog:
    """Measure, record the gauges, log one line (a warning when anything waits)."""
    runtime = await get_runtime()
    depth = await runtime.publisher.poison_depth()
    cutoff = iso_time(utcnow() - STUCK_AFTER)
    # The SDK substitutes @name only when a space follows it, hence "@processing )".
    stuck = await runtime.status.query(
        "RowKey eq @row and (Status eq @accepted or Status eq @processing ) and UpdatedAt lt @cutoff",
        {"row": ROW_KEY, "accepted": str(Status.ACCEPTED), "processing": str(Status.PROCESSING), "cutoff": cutoff},
        STUCK_COUNT_LIMIT,
    )
    await runtime.gate.state()  # sets the breaker's gauge
    telemetry.gauge("guest_reset.poison.depth", depth)
    telemetry.gauge("guest_reset.stuck", len(stuck))
    level = log.warning if depth or stuck else log.info
    level(
        "backlog: %d poisoned message(s) waiting, %d request(s) stuck for over %d minutes%s",
        depth,
        len(stuck),
        STUCK_AFTER.total_seconds() // 60,
        f" (first: {', '.join(r.request_id for r in stuck[:5])})" if stuck else "",
    )
    return Backlog(depth, len(stuck))
