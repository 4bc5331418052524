"""The scheduled bulk job: CSV files dropped in ``<BULK_CONTAINER>/incoming/`` are validated,
enqueued, reported on and moved.

Per file: a validation pass streams the blob; a file with any invalid row is rejected whole
(``rejected/<name>`` plus ``rejected/<name>.errors.csv``), nothing is sent. A valid file is
streamed a second time and sent through ``bulk_enqueue`` (resumable, sends nothing twice),
then moved to ``processed/<name>``. Either way ``reports/<name>.report.csv`` lists every row.
The source is deleted last, so a run that dies half-way simply does the file again next time.

While a run works on a file it holds a lease on the source blob (``LEASE_SECONDS``, renewed as it
goes): a second run at the same time (the timer's own runs never overlap, but an admin may start
one by hand) leaves that file alone, and a run that dies lets its lease lapse, so the next run
resumes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from shared.bulk.enqueue import (
    enqueue,
    record_rejection,
    rows_to_send,
    start_progress,
    storage_failure,
)
from shared.bulk.reader import BulkCsvReader, BulkRow, CsvProblem, file_id_of, summary_of
from shared.bulk.repeats import RepeatCheck
from shared.bulk.spreadsheet import safe_cell
from shared.platform.errors import BulkFileChangedError, ResetError, TransientError
from shared.platform.logs import app_logger
from shared.reset.runtime import Runtime, get_runtime

if TYPE_CHECKING:
    from azure.storage.blob.aio import BlobClient, BlobLeaseClient, ContainerClient

log = app_logger()

INCOMING, PROCESSED, REJECTED, REPORTS = "incoming/", "processed/", "rejected/", "reports/"
REPORT_COLUMNS = ("row", "line", "requestId", "result", "errors")
ERROR_COLUMNS = ("line", "column", "field", "row", "message")
_SPOOL_BYTES = 4 * 1024 * 1024  # reports stay in memory up to this size, then go to a temp file
LEASE_SECONDS = 60  # a blob lease lasts 15-60 s
RENEW_SECONDS = LEASE_SECONDS / 3  # renewed this often while the file is worked on


@dataclass(frozen=True)
class FileOutcome:
    """What the job did with one file."""

    name: str
    result: str  # processed | rejected | failed | busy (another run holds the file)
    rows: int = 0
    sent: int = 0
    problems: int = 0
    report: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "result": self.result,
            "rows": self.rows,
            "sent": self.sent,
            "problems": self.problems,
            "report": self.report,
            "error": self.error,
        }


class _CsvSpool:
    """A CSV file written row by row into a spooled temporary file (flat memory for any size)."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, mode="w+b")  # noqa: SIM115
        self._line = io.StringIO()
        self._writer = csv.writer(self._line, lineterminator="\r\n")
        self.write(columns)

    def write(self, values: tuple[Any, ...] | list[Any]) -> None:
        self._writer.writerow([safe_cell(value) for value in values])
        self.file.write(self._line.getvalue().encode("utf-8"))
        self._line.seek(0)
        self._line.truncate()

    def rewind(self) -> tuple[IO[bytes], int]:
        length = self.file.tell()
        self.file.seek(0)
        return self.file, length

    def close(self) -> None:
        self.file.close()


def _problems_text(row: BulkRow) -> str:
    return "; ".join(f"column {p.column}{f' ({p.field})' if p.field else ''}: {p.message}" for p in row.problems)


async def run_bulk_job() -> list[FileOutcome]:
    """Process every file waiting in incoming/, oldest name first; raise if one could not be finished."""
    from azure.core.exceptions import AzureError, ResourceExistsError

    from shared.platform.storage import container_client

    runtime = await get_runtime()
    container = container_client(runtime.settings.storage, runtime.settings.bulk_container)
    outcomes: list[FileOutcome] = []
    async with container:
        try:
            with contextlib.suppress(ResourceExistsError):
                await container.create_container()
            names = [blob.name async for blob in container.list_blobs(name_starts_with=INCOMING)]
        except AzureError as error:
            raise storage_failure(f"listing {runtime.settings.bulk_container}/{INCOMING}", error) from error
        for blob_name in sorted(n for n in names if not n.endswith("/")):
            outcome = await process_file(runtime, container, blob_name)
            outcomes.append(outcome)
    failed = [o for o in outcomes if o.result == "failed"]
    counts = Counter(o.result for o in outcomes)
    log.info(
        "bulk job: %d file(s), %d processed, %d rejected, %d failed, %d busy in another run",
        len(outcomes),
        counts["processed"],
        counts["rejected"],
        len(failed),
        counts["busy"],
    )
    if failed:
        # The invocation shows as failed; the files stay in incoming/ and the next run resumes them.
        raise TransientError(
            "bulk job could not finish " + ", ".join(f"{o.name} ({o.error})" for o in failed),
            code="BulkJobIncomplete",
        )
    return outcomes


async def process_file(runtime: Runtime, container: ContainerClient, blob_name: str) -> FileOutcome:
    """One file from incoming/ to processed/ or rejected/, with its report. Never half-sends."""
    from azure.core.exceptions import AzureError

    name = blob_name.removeprefix(INCOMING)
    try:
        async with _file_lease(container.get_blob_client(blob_name)) as lease:
            if lease is None:
                log.info("bulk file %s is being processed by another run; left to it", name)
                return FileOutcome(name, "busy")
            return await _process(runtime, container, blob_name, name, lease)
    except ResetError as error:
        log.warning("bulk file %s not finished: %s", name, error.message)
        return FileOutcome(name, "failed", error=error.message)
    except AzureError as error:
        failure = storage_failure(f"processing {name}", error)
        log.warning("bulk file %s not finished: %s", name, failure.message)
        return FileOutcome(name, "failed", error=failure.message)


@asynccontextmanager
async def _file_lease(blob: BlobClient) -> AsyncIterator[BlobLeaseClient | None]:
    """A lease on the source file for as long as the block runs; None when another run holds one."""
    from azure.core.exceptions import AzureError, HttpResponseError

    try:
        lease = await blob.acquire_lease(lease_duration=LEASE_SECONDS)
    except HttpResponseError as error:
        if error.status_code != 409:  # 409 LeaseAlreadyPresent: another run has the file
            raise
        yield None
        return

    async def renew() -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                await lease.renew()
            except AzureError as error:  # the file may be done and gone; else another run may take it over
                log.warning("bulk file lease not renewed: %s", type(error).__name__)
                return

    renewing = asyncio.create_task(renew())
    try:
        yield lease
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        with contextlib.suppress(AzureError):  # gone with the moved file, or already lapsed
            await lease.release()


async def _chunks(blob: BlobClient, etag: str) -> AsyncIterator[bytes]:
    """The blob's bytes in ranges; fails if the blob is replaced meanwhile (ETag)."""
    from azure.core import MatchConditions
    from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError

    try:
        downloader = await blob.download_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
        async for chunk in downloader.chunks():
            yield chunk
    except (ResourceModifiedError, ResourceNotFoundError):
        raise BulkFileChangedError(
            f"{blob.blob_name} was replaced or removed while being read; it is taken up again at the next run"
        ) from None
    except AzureError as error:
        raise storage_failure(f"reading {blob.blob_name}", error) from error


async def _validate(
    blob: BlobClient, etag: str, errors: _CsvSpool, rejection: _CsvSpool, **options: Any
) -> BulkCsvReader:
    """Read the whole blob through a reader made with ``options``: problems to ``errors``, rows to ``rejection``."""

    def problem(p: CsvProblem) -> None:
        errors.write((p.line, p.column, p.field or "", p.row or "", p.message))

    def note(row: BulkRow) -> None:
        result = "rejected" if row.problems else "notSent"
        rejection.write((row.row, row.line, "", result, _problems_text(row) or "the file has invalid rows"))

    reader = BulkCsvReader(on_problem=problem, **options)
    async for chunk in _chunks(blob, etag):
        for row in reader.feed(chunk):
            note(row)
    for row in reader.close():
        note(row)
    return reader


async def _process(
    runtime: Runtime, container: ContainerClient, blob_name: str, name: str, lease: BlobLeaseClient
) -> FileOutcome:
    settings = runtime.settings
    blob = container.get_blob_client(blob_name)
    properties = await blob.get_blob_properties()
    etag = str(properties.etag)
    source = f"bulk:{name}"[:256]
    if not name.lower().endswith(".csv"):
        problem = CsvProblem(1, 1, "only .csv files are processed: save the file as 'CSV UTF-8' with a .csv name")
        return await _reject(runtime, container, blob, lease, name, etag, "", 0, [problem], None)

    # Pass 1: validate everything, keep only the problems and a report for the rejection case.
    # When a user may be named twice, the file is read again to find the repeats (bulk_repeats);
    # that reading reports every problem again, so its errors and report replace the first ones.
    errors = _CsvSpool(ERROR_COLUMNS)
    rejection = _CsvSpool(REPORT_COLUMNS)
    try:
        reader = await _validate(blob, etag, errors, rejection, settings=settings, source=source, find_repeats=True)
        if reader.repeat_candidates:
            errors.close()
            rejection.close()
            errors, rejection = _CsvSpool(ERROR_COLUMNS), _CsvSpool(REPORT_COLUMNS)
            check = RepeatCheck(reader.repeat_candidates)
            reader = await _validate(
                blob, etag, errors, rejection, settings=settings, source=source, repeat_check=check
            )
        summary = summary_of(reader)
        if not summary.valid:
            await record_rejection(
                runtime.status, sha256=summary.sha256, file_name=name, rows=summary.rows, problems=summary.problem_count
            )
            return await _reject(
                runtime,
                container,
                blob,
                lease,
                name,
                etag,
                summary.sha256,
                summary.rows,
                summary.problems,
                (errors, rejection),
                summary.problem_count,
            )
    finally:
        errors.close()
        rejection.close()

    # Pass 2: send what an earlier run has not, writing the report as rows go by.
    progress = await start_progress(runtime.status, sha256=summary.sha256, file_name=name, rows=summary.rows)
    start_row = progress.rows_sent + 1
    report = _CsvSpool(REPORT_COLUMNS)
    try:

        def accepted(row: BulkRow, request_id: str) -> None:
            report.write((row.row, row.line, request_id, "accepted" if row.row >= start_row else "alreadyAccepted", ""))

        rows = rows_to_send(
            _chunks(blob, etag),
            sha256=summary.sha256,
            settings=settings,
            start_row=start_row,
            source=source,
            on_row=accepted,
        )
        sent = 0
        if progress.done:
            async for _ in rows:  # a copy of a file already sent: the report only
                pass
        else:
            if start_row > 1:
                log.info("bulk file %s resumes at row %d of %d", name, start_row, summary.rows)
            outcome = await enqueue(rows, progress=progress, store=runtime.status, send=runtime.publisher.send_request)
            sent = outcome.sent
        report_name = await _upload(container, REPORTS, f"{name}.report.csv", summary.sha256, report)
    finally:
        report.close()
    await _move(container, blob, lease, etag, PROCESSED, name, summary.sha256)
    log.info("bulk file %s processed: %d rows, %d sent now", name, summary.rows, sent)
    return FileOutcome(name, "processed", rows=summary.rows, sent=sent, report=report_name)


async def _reject(
    runtime: Runtime,
    container: ContainerClient,
    blob: BlobClient,
    lease: BlobLeaseClient,
    name: str,
    etag: str,
    sha256: str,
    rows: int,
    problems: list[CsvProblem],
    spools: tuple[_CsvSpool, _CsvSpool] | None,
    problem_count: int | None = None,
) -> FileOutcome:
    if spools is None:
        errors = _CsvSpool(ERROR_COLUMNS)
        for p in problems:
            errors.write((p.line, p.column, p.field or "", p.row or "", p.message))
        report = None
    else:
        errors, report = spools
    await _upload(container, REJECTED, f"{name}.errors.csv", sha256, errors)
    report_name = await _upload(container, REPORTS, f"{name}.report.csv", sha256, report) if report else None
    await _move(container, blob, lease, etag, REJECTED, name, sha256)
    count = problem_count if problem_count is not None else len(problems)
    log.warning("bulk file %s rejected: %d problem(s), first: %s", name, count, problems[0] if problems else "-")
    return FileOutcome(
        name, "rejected", rows=rows, problems=count, report=report_name, error=str(problems[0]) if problems else None
    )


async def _target(container: ContainerClient, folder: str, name: str, sha256: str) -> str:
    """``folder/name``, unless a different file already has that name: then the file id goes in too."""
    from azure.core.exceptions import ResourceNotFoundError

    target = folder + name
    try:
        existing = await container.get_blob_client(target).get_blob_properties()
    except ResourceNotFoundError:
        return target
    if (existing.metadata or {}).get("sourcesha256") == sha256:
        return target  # the same file again (a re-run after a crash): replace it
    stem, dot, extension = name.rpartition(".")
    return f"{folder}{stem}.{file_id_of(sha256) or 'x'}{dot}{extension}" if stem else f"{target}.{file_id_of(sha256)}"


async def _upload(container: ContainerClient, folder: str, name: str, sha256: str, spool: _CsvSpool) -> str:
    target = await _target(container, folder, name, sha256)
    data, length = spool.rewind()
    await container.upload_blob(target, data, length=length, overwrite=True, metadata={"sourcesha256": sha256})
    return target


async def _move(
    container: ContainerClient, blob: BlobClient, lease: BlobLeaseClient, etag: str, folder: str, name: str, sha256: str
) -> None:
    """Copy by streaming (works the same with keys and with managed identity), then delete the source."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

    target = await _target(container, folder, name, sha256)
    await container.upload_blob(target, _chunks(blob, etag), overwrite=True, metadata={"sourcesha256": sha256})
    try:
        await blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified, lease=lease)
    except (ResourceModifiedError, ResourceNotFoundError):
        log.warning("bulk file %s changed after it was processed; the new content is taken up next run", name)
