"""The sweeper (a timer trigger): requests that stalled go back on the queue, so none waits for ever.

A request is stalled when it is ``Accepted``, ``Processing`` or ``Held``, nobody holds a live claim on it,
it is not held on purpose (``held_until``), and its record shows no sign of life for
``SWEEP_GRACE_SECONDS``. That happens when a message is lost (an intake send and its clean-up
both failed; an operator cleared the queue) or when the host keeps a dead worker's message
invisible for its ten-minute lease. The sweeper notes ``swept`` on the record (which also
restarts its clock, so one sweep per grace period at most) and re-enqueues the stored request;
the claim makes a second message for the same request harmless, and a request whose invitation
may be in flight is resolved by evidence on that delivery. A request whose body was too large to
keep cannot be re-enqueued and ends ``Failed`` with ``StalledUnrecoverable``.

Each stalled request is logged at warning level with the stable code ``StalledRequest`` (in the
text and in the ``code`` field), so an alert can fire on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.platform.errors import ResetError
from shared.platform.logs import app_logger, bind_request
from shared.reset.callbacks import queue_callback
from shared.reset.runtime import Runtime, get_runtime
from shared.reset.status import ROW_KEY, Status, StatusRecord, iso_time, utcnow

log = app_logger()

STALLED = "StalledRequest"
UNRECOVERABLE = "StalledUnrecoverable"
# One run looks at this many candidates at most; the next run takes the rest.
MAX_PER_RUN = 500


@dataclass
class SweepReport:
    """What one run found and did."""

    examined: int = 0
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    alive: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"examined": self.examined, "requeued": self.requeued, "failed": self.failed, "alive": self.alive}


async def sweep(runtime: Runtime | None = None, *, now: datetime | None = None) -> SweepReport:
    """Re-enqueue (or, without a stored body, fail) every stalled request; never raises on one record."""
    runtime = runtime or await get_runtime()
    now = now or utcnow()
    cutoff = now - timedelta(seconds=runtime.settings.sweep_grace_seconds)
    # The SDK substitutes "@name" only when a space follows it.
    odata = (
        "RowKey eq @row and ( Status eq @accepted or Status eq @processing or Status eq @held ) "
        "and UpdatedAt lt @cutoff"
    )
    params = {
        "row": ROW_KEY,
        "accepted": str(Status.ACCEPTED),
        "processing": str(Status.PROCESSING),
        "held": str(Status.HELD),
        "cutoff": iso_time(cutoff),
    }
    report = SweepReport()
    for record in await runtime.status.query(odata, params, MAX_PER_RUN):
        report.examined += 1
        if record.held_until is not None and record.held_until > cutoff:
            continue  # held on purpose; its copy is due back by then
        with bind_request(requestId=record.request_id, ticketId=record.ticket_id, code=STALLED):
            try:
                await _sweep_one(runtime, record, report)
            except ResetError as error:
                log.warning("%s: could not sweep the request this time: %s", STALLED, error.message)
    if report.requeued or report.failed:
        log.warning(
            "%s: %d stalled request(s) re-enqueued, %d failed as unrecoverable",
            STALLED,
            len(report.requeued),
            len(report.failed),
        )
    else:
        log.info("sweep found no stalled request (%d examined)", report.examined)
    return report


async def _sweep_one(runtime: Runtime, record: StatusRecord, report: SweepReport) -> None:
    claim = await runtime.status.read_lease(record.request_id)
    if claim is not None and claim.live():
        report.alive += 1  # a delivery is working on it and renewing its claim
        return
    quiet = (utcnow() - record.updated_at).total_seconds() if record.updated_at else None
    if record.request_json is None:
        final = await runtime.status.save(
            record,
            status=Status.FAILED,
            finished_at=utcnow(),
            error_code=UNRECOVERABLE,
            error_message=(
                f"the request stalled in {record.status} and its body was too large to keep for a re-run; "
                "submit it again (check the guest first: an invitation may have gone out)"
            ),
            history=record.with_event("swept", outcome="failed"),
        )
        report.failed.append(record.request_id)
        log.warning("%s: stalled in %s and cannot be re-run; recorded Failed", STALLED, record.status)
        await runtime.publisher.send_result(final.public())
        await queue_callback(runtime, final)
        return
    # Noted first: if another writer touched the record meanwhile (ETag) it is alive, and the
    # save fails before anything is sent; if the send then fails, the next sweep tries again.
    await runtime.status.note(record, "swept", quietSeconds=int(quiet) if quiet is not None else None)
    await runtime.publisher.send_request(record.request_json)
    report.requeued.append(record.request_id)
    log.warning(
        "%s: %s with no sign of life for %ss and no live claim; re-enqueued",
        STALLED,
        record.status,
        int(quiet) if quiet is not None else "?",
    )
