"""Submitting a local CSV file (the CLI's ``submit``): validate it all, then send it, and write a receipt.

Straight to the queue, progress is kept in the status table (``bulk_enqueue``), so submitting the
same file again sends only what an earlier run did not. Through the HTTP API, the API's own
requestId idempotency does the same: a requestId it has seen is answered ``duplicate`` and
not enqueued again.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shared.bulk.enqueue import (
    CONCURRENCY,
    FileState,
    enqueue,
    rows_to_send,
    start_progress,
)
from shared.bulk.reader import BulkRow, ValidationSummary, validate_chunks
from shared.platform.errors import BulkFileChangedError
from shared.platform.logs import app_logger
from shared.platform.settings import Settings
from shared.reset.runtime import Runtime
from shared.reset.status import utcnow
from tools.cli.api_client import ApiClient

log = app_logger()

READ_BYTES = 1024 * 1024
API_BATCH_ROWS = 1000  # the API's batch limit
API_BATCH_BYTES = 900 * 1024  # under the API's 1 MB body limit
API_CONCURRENCY = 4
RECEIPT_KIND = "guest-reset bulk receipt"


@dataclass
class SubmitResult:
    """What ``submit`` did; ``sent`` counts messages this run enqueued."""

    file: str
    sha256: str
    rows: int
    via: str
    state: str
    sent: int = 0
    already_sent: int = 0
    receipt: str | None = None
    validation: ValidationSummary | None = None
    dry_run: bool = False

    @property
    def file_id(self) -> str:
        return self.sha256[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "fileId": self.file_id,
            "rows": self.rows,
            "via": self.via,
            "state": self.state,
            "sent": self.sent,
            "alreadySent": self.already_sent,
            "receipt": self.receipt,
            "dryRun": self.dry_run,
        }


def _read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(READ_BYTES):
            yield chunk


async def _read_async(path: Path) -> AsyncIterator[bytes]:
    for chunk in _read(path):
        yield chunk


def validate_file(
    path: Path, *, settings: Settings | None, source: str | None = None, requested_by: str | None = None
) -> ValidationSummary:
    """Stream the whole file through the reader; only the problems are kept."""
    return validate_chunks(lambda: _read(path), settings=settings, source=source, requested_by=requested_by)


def default_source(path: Path) -> str:
    return f"bulk:{path.name}"[:256]


class _Receipt:
    """The receipt file, written as rows go by: {"requests": [...], then the summary fields}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        self._file: IO[str] = self._partial.open("w", encoding="utf-8")
        self._file.write('{"requests": [\n')
        self._first = True

    def add(self, row: BulkRow, request_id: str) -> None:
        separator = "" if self._first else ",\n"
        self._first = False
        self._file.write(f'{separator}  {{"row": {row.row}, "line": {row.line}, "requestId": "{request_id}"}}')

    def finish(self, summary: dict[str, Any]) -> None:
        fields = json.dumps({"kind": RECEIPT_KIND, "version": 1, **summary}, indent=2)[1:]
        self._file.write("\n],\n" + fields + "\n")
        self._file.close()
        os.replace(self._partial, self.path)


def read_receipt(path: Path) -> dict[str, Any]:
    """A receipt written by ``submit``; ValueError says what is wrong with another file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable receipt: {error}") from None
    if not isinstance(data, dict) or data.get("kind") != RECEIPT_KIND or not isinstance(data.get("requests"), list):
        raise ValueError(f"{path} is not a receipt written by `guest-reset submit`")
    return data


async def submit_file(
    path: Path,
    *,
    receipt_path: Path,
    settings: Settings | None,
    runtime: Runtime | None = None,
    api: ApiClient | None = None,
    requested_by: str | None = None,
    concurrency: int = CONCURRENCY,
    on_start: Callable[[int, int], None] | None = None,
    on_sent: Callable[[int], None] | None = None,
    dry_run: bool = False,
) -> SubmitResult:
    """Validate ``path`` whole; if valid, send it (to the queue via ``runtime``, or through ``api``).

    An invalid file returns state "Invalid" with its problems and sends nothing. ``on_start``
    gets (rows to send now, rows in the file) before the first message. With ``dry_run`` every
    row goes as a dry run under requestIds of its own: the worker checks it and sends nothing,
    and submitting the file for real afterwards is not mistaken for a repeat.
    """
    source = default_source(path)
    before = await asyncio.to_thread(path.stat)
    summary = await asyncio.to_thread(validate_file, path, settings=settings, source=source, requested_by=requested_by)
    via = "api" if api is not None else "queue"
    result = SubmitResult(str(path), summary.sha256, summary.rows, via, "Invalid", validation=summary, dry_run=dry_run)
    if not summary.valid:
        return result
    after = await asyncio.to_thread(path.stat)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise BulkFileChangedError(f"{path} changed while it was being validated; submit it again")

    receipt = _Receipt(receipt_path)
    started = utcnow()
    try:
        if api is not None:
            await _send_through_api(
                path, summary, api, settings, source, requested_by, receipt, result, on_start, on_sent, dry_run
            )
        else:
            assert runtime is not None, "submit needs a runtime (queue) or an API client"
            await _send_to_queue(
                path,
                summary,
                runtime,
                settings,
                source,
                requested_by,
                receipt,
                result,
                concurrency,
                on_start,
                on_sent,
                dry_run,
            )
    finally:
        result.receipt = str(receipt_path)
        receipt.finish({**result.to_dict(), "submittedAt": started.isoformat(), "finishedAt": utcnow().isoformat()})
    return result


async def _send_to_queue(
    path: Path,
    summary: ValidationSummary,
    runtime: Runtime,
    settings: Settings | None,
    source: str,
    requested_by: str | None,
    receipt: _Receipt,
    result: SubmitResult,
    concurrency: int,
    on_start: Callable[[int, int], None] | None,
    on_sent: Callable[[int], None] | None,
    dry_run: bool,
) -> None:
    progress = await start_progress(
        runtime.status, sha256=summary.sha256, file_name=path.name, rows=summary.rows, dry_run=dry_run
    )
    start_row = progress.rows_sent + 1
    result.already_sent = progress.rows_sent if not progress.done else summary.rows
    result.state = str(progress.state)
    rows = rows_to_send(
        _read_async(path),
        sha256=summary.sha256,
        settings=settings,
        start_row=start_row,
        source=source,
        requested_by=requested_by,
        on_row=receipt.add,
        dry_run=dry_run,
    )
    if progress.done:
        async for _ in rows:  # the receipt still lists every row
            pass
        result.state = str(FileState.DONE)
        return
    if on_start is not None:
        on_start(summary.rows - progress.rows_sent, summary.rows)
    if start_row > 1:
        log.info("file %s resumes at row %d of %d", summary.file_id, start_row, summary.rows)

    def sent(count: int) -> None:  # counted as they go: a receipt written after a failure is right too
        result.sent += count
        if on_sent is not None:
            on_sent(count)

    outcome = await enqueue(
        rows,
        progress=progress,
        store=runtime.status,
        send=runtime.publisher.send_request,
        concurrency=concurrency,
        on_sent=sent,
    )
    result.already_sent += outcome.claimed
    result.state = str(outcome.progress.state)


async def _send_through_api(
    path: Path,
    summary: ValidationSummary,
    api: ApiClient,
    settings: Settings | None,
    source: str,
    requested_by: str | None,
    receipt: _Receipt,
    result: SubmitResult,
    on_start: Callable[[int, int], None] | None,
    on_sent: Callable[[int], None] | None,
    dry_run: bool,
) -> None:
    result.state = str(FileState.ENQUEUING)
    if on_start is not None:
        on_start(summary.rows, summary.rows)
    gate = asyncio.Semaphore(API_CONCURRENCY)  # taken before a batch is built: memory stays bounded

    async def post(bodies: list[str]) -> None:
        try:
            items = await api.submit(('{"requests":[' + ",".join(bodies) + "]}").encode("utf-8"))
        finally:
            gate.release()
        duplicates = sum(1 for item in items if item.get("duplicate"))
        result.sent += len(items) - duplicates
        result.already_sent += duplicates
        if on_sent is not None:
            on_sent(len(items))

    batch: list[str] = []
    size = 0
    try:
        async with asyncio.TaskGroup() as group:
            rows = rows_to_send(
                _read_async(path),
                sha256=summary.sha256,
                settings=settings,
                source=source,
                requested_by=requested_by,
                on_row=receipt.add,
                dry_run=dry_run,
            )
            async for _row, body in rows:
                if batch and (len(batch) >= API_BATCH_ROWS or size + len(body) > API_BATCH_BYTES):
                    await gate.acquire()
                    group.create_task(post(batch))
                    batch, size = [], 0
                batch.append(body)
                size += len(body) + 1
            if batch:
                await gate.acquire()
                group.create_task(post(batch))
    except BaseExceptionGroup as failure:
        raise failure.exceptions[0] from None
    result.state = str(FileState.DONE)
