"""Sending a validated bulk file to the request queue: concurrently, resumably, and only once.

How far a file got lives in one entity per file in the status table (PartitionKey
``bulkfile-<file id>``, RowKey ``progress``). ``RowsSent`` counts only rows whose message the
queue confirmed, from the first row on without a gap. It is written before each chunk of
``CHUNK_ROWS`` rows starts and again once the chunk is confirmed, so a run that dies resumes at
its last unfinished chunk. Rows of that chunk which had already gone out are sent a second time;
the worker's claim on the requestId makes the second message a no-op, so no guest gets two
invitations. No status record is written per row: the worker creates it when it claims the
request, and until then ``status`` reports the requestId as Queued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.bulk.reader import BulkCsvReader, BulkRow, dry_run_file_id, request_id_for
from shared.platform.errors import BulkFileChangedError, ResetError, TransientError
from shared.platform.logs import app_logger
from shared.platform.settings import Settings
from shared.reset.contract import canonical_json
from shared.reset.status import StatusStore, iso_time, parse_iso_time, utcnow

log = app_logger()

CHUNK_ROWS = 500
CONCURRENCY = 64  # messages in flight: enough to hide storage latency, few enough for Azurite
PROGRESS_ROW_KEY = "progress"
PROGRESS_PREFIX = "bulkfile-"


class FileState(StrEnum):
    ENQUEUING = "Enqueuing"
    DONE = "Done"
    REJECTED = "Rejected"


@dataclass(frozen=True)
class FileProgress:
    """How far one file (by content) got; ``rows_sent`` rows from the first are on the queue."""

    file_id: str
    sha256: str
    file_name: str
    state: FileState
    rows_total: int
    rows_sent: int = 0
    sending_through: int = 0  # the last row of the chunk being sent when this was written
    runs: int = 0
    problem_count: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def partition_key(self) -> str:
        return f"{PROGRESS_PREFIX}{self.file_id}"

    @property
    def done(self) -> bool:
        return self.state is FileState.DONE and self.rows_sent >= self.rows_total

    def to_entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": self.partition_key,
            "RowKey": PROGRESS_ROW_KEY,
            "Sha256": self.sha256,
            "FileName": self.file_name[:1024],
            "State": str(self.state),
            "RowsTotal": self.rows_total,
            "RowsSent": self.rows_sent,
            "SendingThrough": self.sending_through,
            "Runs": self.runs,
            "ProblemCount": self.problem_count,
            "CreatedAt": iso_time(self.created_at),
            "UpdatedAt": iso_time(self.updated_at),
            "FinishedAt": iso_time(self.finished_at),
        }
        return {k: v for k, v in entity.items() if v is not None}

    @classmethod
    def from_entity(cls, entity: dict[str, Any]) -> FileProgress:
        return cls(
            file_id=str(entity["PartitionKey"]).removeprefix(PROGRESS_PREFIX),
            sha256=str(entity.get("Sha256", "")),
            file_name=str(entity.get("FileName", "")),
            state=FileState(entity.get("State", FileState.ENQUEUING)),
            rows_total=int(entity.get("RowsTotal", 0)),
            rows_sent=int(entity.get("RowsSent", 0)),
            sending_through=int(entity.get("SendingThrough", 0)),
            runs=int(entity.get("Runs", 0)),
            problem_count=int(entity.get("ProblemCount", 0)),
            created_at=parse_iso_time(entity.get("CreatedAt")),
            updated_at=parse_iso_time(entity.get("UpdatedAt")),
            finished_at=parse_iso_time(entity.get("FinishedAt")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "fileId": self.file_id,
            "sha256": self.sha256,
            "fileName": self.file_name,
            "state": str(self.state),
            "rowsTotal": self.rows_total,
            "rowsSent": self.rows_sent,
            "runs": self.runs,
            "createdAt": iso_time(self.created_at),
            "updatedAt": iso_time(self.updated_at),
            "finishedAt": iso_time(self.finished_at),
        }


async def load_progress(store: StatusStore, file_id: str) -> FileProgress | None:
    entity = await store.read_entity(f"{PROGRESS_PREFIX}{file_id}", PROGRESS_ROW_KEY)
    return FileProgress.from_entity(entity) if entity is not None else None


async def save_progress(store: StatusStore, progress: FileProgress) -> FileProgress:
    now = utcnow()
    saved = replace(progress, updated_at=now, created_at=progress.created_at or now)
    await store.write_entity(saved.to_entity())
    return saved


class _Checkpoints:
    """The low-water mark of confirmed rows, and the progress writes that record it (in order)."""

    def __init__(self, store: StatusStore, progress: FileProgress, chunk_rows: int) -> None:
        self.store = store
        self.progress = progress
        self.chunk_rows = chunk_rows
        self.watermark = progress.rows_sent  # rows 1..watermark are all confirmed
        self._confirmed: set[int] = set()  # confirmed rows above the watermark
        self._lock = asyncio.Lock()

    def confirm(self, row: int) -> bool:
        """Note a confirmed row; True when the watermark just passed the end of a chunk."""
        if row != self.watermark + 1:
            self._confirmed.add(row)
            return False
        before = self.watermark
        self.watermark = row
        while self.watermark + 1 in self._confirmed:
            self._confirmed.remove(self.watermark + 1)
            self.watermark += 1
        return self.watermark // self.chunk_rows > before // self.chunk_rows

    async def write(self, *, sending_through: int | None = None, **changes: Any) -> None:
        # One write at a time, each with the latest watermark: RowsSent never goes backwards.
        async with self._lock:
            through = max(self.progress.sending_through, sending_through or 0, self.watermark)
            self.progress = await save_progress(
                self.store, replace(self.progress, rows_sent=self.watermark, sending_through=through, **changes)
            )


Send = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class EnqueueResult:
    """The final progress, messages sent by this run, and rows it found already claimed."""

    progress: FileProgress
    sent: int
    claimed: int


async def _claimed_in_flight(store: StatusStore, progress: FileProgress) -> set[int]:
    """Rows of the chunk a dead run was sending that the worker has already picked up.

    Their message went out and was received (the worker wrote their status record), so they
    are not sent again. A row whose message still waits on the queue cannot be seen from
    here: it is sent a second time, and the worker's claim makes that second message a no-op.
    """
    window = range(progress.rows_sent + 1, min(progress.sending_through, progress.rows_total) + 1)
    if not window:
        return set()
    gate = asyncio.Semaphore(32)

    async def has_record(row: int) -> bool:
        async with gate:
            return await store.get(request_id_for(progress.file_id, row)) is not None

    found = await asyncio.gather(*(has_record(row) for row in window))
    return {row for row, claimed in zip(window, found, strict=True) if claimed}


async def enqueue(
    rows: AsyncIterator[tuple[int, str]],
    *,
    progress: FileProgress,
    store: StatusStore,
    send: Send,
    concurrency: int = CONCURRENCY,
    chunk_rows: int = CHUNK_ROWS,
    on_sent: Callable[[int], None] | None = None,
) -> EnqueueResult:
    """Send every (row, body) that ``rows`` yields (rows after ``progress.rows_sent``, in order).

    Returns the final progress (state Done). On a failed send or a failed checkpoint the
    progress keeps what was confirmed and the error is raised; running again resumes.
    """
    claimed = await _claimed_in_flight(store, progress) if progress.runs else set()
    checkpoints = _Checkpoints(store, progress, chunk_rows)
    await checkpoints.write(state=FileState.ENQUEUING, runs=progress.runs + 1, finished_at=None)
    queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue(maxsize=concurrency * 2)
    sent = 0

    async def produce() -> None:
        async for row, body in rows:
            if (row - 1) % chunk_rows == 0 or row == progress.rows_sent + 1:
                # Before the chunk: how far this run may get is on record before it goes out.
                chunk_end = min((row - 1) // chunk_rows * chunk_rows + chunk_rows, progress.rows_total)
                await checkpoints.write(sending_through=chunk_end)
            if row in claimed:
                if checkpoints.confirm(row):
                    await checkpoints.write()
                continue
            await queue.put((row, body))
        for _ in range(concurrency):
            await queue.put(None)

    async def work() -> None:
        nonlocal sent
        while (item := await queue.get()) is not None:
            row, body = item
            await send(body)
            sent += 1
            if on_sent is not None:
                on_sent(1)
            if checkpoints.confirm(row):
                await checkpoints.write()  # after the chunk: it is confirmed

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(concurrency):
                group.create_task(work())
    except BaseExceptionGroup as failure:
        with contextlib.suppress(ResetError):
            await checkpoints.write()
        log.warning(
            "bulk file %s stopped after %d of %d rows", progress.file_id, checkpoints.watermark, progress.rows_total
        )
        first = next((e for e in failure.exceptions if isinstance(e, ResetError)), failure.exceptions[0])
        raise first from None
    await checkpoints.write(state=FileState.DONE, finished_at=utcnow())
    return EnqueueResult(checkpoints.progress, sent, len(claimed))


async def rows_to_send(
    chunks: AsyncIterator[bytes],
    *,
    sha256: str,
    settings: Settings | None,
    start_row: int = 1,
    source: str | None = None,
    requested_by: str | None = None,
    on_row: Callable[[BulkRow, str], None] | None = None,
    dry_run: bool = False,
) -> AsyncIterator[tuple[int, str]]:
    """Parse the file again and yield (row, queue message) from ``start_row`` on.

    Rows before ``start_row`` were sent by an earlier run: they are counted, not validated.
    ``on_row`` sees every row with its requestId (reports). The bytes must be those that were
    validated: a row that turns invalid, or a different hash at the end, raises
    BulkFileChangedError. With ``dry_run`` every message asks for a dry run, under the dry
    run's own requestIds (``dry_run_file_id``).
    """
    file_id = dry_run_file_id(sha256[:16]) if dry_run else sha256[:16]
    overrides = {"dryRun": True} if dry_run else {}
    reader = BulkCsvReader(settings=settings, source=source, requested_by=requested_by, validate_from=start_row)

    def one(row: BulkRow) -> tuple[int, str] | None:
        request_id = request_id_for(file_id, row.row)
        if on_row is not None:
            on_row(row, request_id)
        if row.row < start_row:
            return None
        if row.request is None:
            raise BulkFileChangedError(f"row {row.row} (line {row.line}) changed since the file was validated")
        return row.row, canonical_json(row.request, requestId=request_id, **overrides)

    async for chunk in chunks:
        for row in reader.feed(chunk):
            if (item := one(row)) is not None:
                yield item
    for row in reader.close():
        if (item := one(row)) is not None:
            yield item
    if reader.sha256 != sha256:
        raise BulkFileChangedError("the file changed while it was being sent; submit it again")


async def start_progress(
    store: StatusStore, *, sha256: str, file_name: str, rows: int, dry_run: bool = False
) -> FileProgress:
    """The file's progress (its dry run's, with ``dry_run``): what an earlier run left, or a new record."""
    file_id = dry_run_file_id(sha256[:16]) if dry_run else sha256[:16]
    existing = await load_progress(store, file_id)
    if existing is not None and existing.state is not FileState.REJECTED:
        return replace(existing, rows_total=rows, file_name=existing.file_name or file_name)
    return FileProgress(file_id, sha256, file_name, FileState.ENQUEUING, rows)


async def record_rejection(store: StatusStore, *, sha256: str, file_name: str, rows: int, problems: int) -> None:
    """Note that this content was refused (a file with an invalid row never sends anything)."""
    await save_progress(
        store,
        FileProgress(
            sha256[:16], sha256, file_name, FileState.REJECTED, rows, problem_count=problems, finished_at=utcnow()
        ),
    )


def storage_failure(action: str, error: Exception) -> TransientError:
    return TransientError(f"storage unavailable while {action}: {type(error).__name__}", code="StorageUnavailable")
