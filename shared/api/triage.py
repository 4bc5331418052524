"""Operator triage of failed (poisoned) requests: list them, replay them onto the request queue.

The poison trigger records every poisoned request as Failed, with its original request kept in
the status table, so the status table (not the poison queue, which the trigger drains) is
where poisoned requests are found and replayed from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.reset.runtime import Runtime
from shared.reset.status import Status, StatusRecord

MAX_LIST = 1000


def _filter(request_ids: list[str] | None, error_code: str | None) -> tuple[str, dict[str, Any]]:
    clauses = ["Status eq @failed"]
    params: dict[str, Any] = {"failed": str(Status.FAILED)}
    if error_code:
        clauses.append("ErrorCode eq @code")
        params["code"] = error_code
    if request_ids:
        ids = []
        for index, request_id in enumerate(request_ids[:100]):
            params[f"id{index}"] = request_id
            ids.append(f"PartitionKey eq @id{index}")
        clauses.append("( " + " or ".join(ids) + " )")  # the SDK needs @name followed by a space
    return " and ".join(clauses), params


def describe(record: StatusRecord) -> dict[str, Any]:
    return {
        "requestId": record.request_id,
        "errorCode": record.error_code,
        "errorMessage": record.error_message,
        "attempts": record.attempts,
        "replays": record.replays,
        "ticketId": record.ticket_id,
        "finishedAt": record.finished_at.isoformat() if record.finished_at else None,
        "replayable": record.request_json is not None,
    }


async def list_failed(
    runtime: Runtime, *, request_ids: list[str] | None = None, error_code: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    odata, params = _filter(request_ids, error_code)
    records = await runtime.status.query(odata, params, min(max(limit, 1), MAX_LIST))
    return [describe(r) for r in records]


@dataclass
class ReplayReport:
    moved: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"moved": self.moved, "movedCount": len(self.moved), "skipped": self.skipped}


async def replay(
    runtime: Runtime, *, request_ids: list[str] | None = None, error_code: str | None = None, maximum: int = 100
) -> ReplayReport:
    """Put failed requests back on the request queue (status Accepted, replay count +1)."""
    odata, params = _filter(request_ids, error_code)
    report = ReplayReport()
    for record in await runtime.status.query(odata, params, min(max(maximum, 1), MAX_LIST)):
        if record.request_json is None:
            report.skipped.append({"requestId": record.request_id, "reason": "original request not kept"})
            continue
        await runtime.status.save(
            record,
            status=Status.ACCEPTED,
            replays=record.replays + 1,
            finished_at=None,
            error_code=None,
            error_message=None,
            phase=None,
            history=record.with_event("replayed", previousCode=record.error_code),
        )
        await runtime.publisher.send_request(record.request_json)
        report.moved.append(record.request_id)
    return report
