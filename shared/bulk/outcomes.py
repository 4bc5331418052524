"""Outcomes of many requests at once: look them up, summarise them, export them as CSV.

A bulk submission writes no status record per row (the worker creates it when it claims the
request), so a requestId without a record is reported as ``Queued``.
"""

from __future__ import annotations

import asyncio
import csv
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from shared.bulk.spreadsheet import safe_cell
from shared.reset.status import ROW_KEY, Status, StatusRecord, StatusStore

QUEUED = "Queued"
TERMINAL = frozenset(str(s) for s in Status if s.terminal)
LOOKUP_CONCURRENCY = 32
# The columns of `report`: exactly the public fields of a status record, in their order.
REPORT_COLUMNS = tuple(StatusRecord(request_id="", status=Status.ACCEPTED).public())


@dataclass(frozen=True)
class Outcome:
    """Where one request stands (the public status fields, or just Queued)."""

    request_id: str
    status: str
    row: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    updated_at: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_public(cls, body: dict[str, Any] | None, request_id: str, row: int | None) -> Outcome:
        if body is None:
            return cls(request_id, QUEUED, row)
        return cls(
            request_id,
            str(body.get("status")),
            row,
            body.get("errorCode"),
            body.get("errorMessage"),
            body.get("updatedAt"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "requestId": self.request_id,
            "status": self.status,
            "errorCode": self.error_code,
            "errorMessage": self.error_message,
            "updatedAt": self.updated_at,
        }


@dataclass(frozen=True)
class Tracked:
    """A request to look up; ``row`` is its row in a bulk file, when it came from one."""

    request_id: str
    row: int | None = None


async def _each(items: Sequence[Tracked], look: Callable[[str], Awaitable[dict[str, Any] | None]]) -> list[Outcome]:
    gate = asyncio.Semaphore(LOOKUP_CONCURRENCY)

    async def one(item: Tracked) -> Outcome:
        async with gate:
            return Outcome.from_public(await look(item.request_id), item.request_id, item.row)

    return list(await asyncio.gather(*(one(item) for item in items)))


async def outcomes_from_table(store: StatusStore, items: Sequence[Tracked]) -> list[Outcome]:
    """Outcomes read from the status table: one range query per bulk file, else one read per id."""
    prefixes = {item.request_id.rsplit("-", 1)[0] + "-" for item in items if item.request_id.startswith("bulk-")}
    if len(items) > LOOKUP_CONCURRENCY and len(prefixes) == 1:
        prefix = prefixes.pop()
        found: dict[str, dict[str, Any]] = {}
        # "-" + 1 is ".": every PartitionKey that starts with the prefix sorts between the two.
        odata = "PartitionKey ge @low and PartitionKey lt @high and RowKey eq @row"
        async for record in store.scan(odata, {"low": prefix, "high": prefix[:-1] + ".", "row": ROW_KEY}):
            found[record.request_id] = record.public()
        return [Outcome.from_public(found.get(item.request_id), item.request_id, item.row) for item in items]

    async def look(request_id: str) -> dict[str, Any] | None:
        record = await store.get(request_id)
        return record.public() if record is not None else None

    return await _each(items, look)


async def outcomes_from_lookup(
    look: Callable[[str], Awaitable[dict[str, Any] | None]], items: Sequence[Tracked]
) -> list[Outcome]:
    """Outcomes through a lookup of one request's public fields (None: not recorded yet, Queued)."""
    return await _each(items, look)


@dataclass(frozen=True)
class Summary:
    total: int
    by_status: dict[str, int]
    by_error_code: dict[str, int]
    terminal: int

    @property
    def all_terminal(self) -> bool:
        return self.terminal == self.total

    @property
    def failed(self) -> int:
        return self.by_status.get(str(Status.FAILED), 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "terminal": self.terminal,
            "allTerminal": self.all_terminal,
            "failed": self.failed,
            "byStatus": self.by_status,
            "byErrorCode": self.by_error_code,
        }


def summarize(outcomes: Sequence[Outcome]) -> Summary:
    by_status = Counter(o.status for o in outcomes)
    by_code = Counter(o.error_code for o in outcomes if o.error_code and o.status == str(Status.FAILED))
    return Summary(
        total=len(outcomes),
        by_status=dict(sorted(by_status.items())),
        by_error_code=dict(sorted(by_code.items(), key=lambda kv: (-kv[1], kv[0]))),
        terminal=sum(1 for o in outcomes if o.terminal),
    )


def _table_time(value: datetime) -> str:
    """The form status.py stores timestamps in (UTC, microseconds), so string order is time order."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


async def export_report(store: StatusStore, out: TextIO, *, since: datetime, until: datetime | None = None) -> int:
    """Write every outcome updated in [since, until) as CSV (public fields only); returns the row count.

    Timestamps are ISO strings in UTC in the table, so the comparison is a string one.
    Bulk progress entities have another RowKey and never show up here.
    """
    clauses = ["RowKey eq @row", "UpdatedAt ge @since"]
    params: dict[str, Any] = {"row": ROW_KEY, "since": _table_time(since)}
    if until is not None:
        clauses.append("UpdatedAt lt @until")
        params["until"] = _table_time(until)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    count = 0
    async for record in store.scan(" and ".join(clauses), params):
        public = record.public()
        writer.writerow([safe_cell(public.get(column)) for column in REPORT_COLUMNS])
        count += 1
    return count
