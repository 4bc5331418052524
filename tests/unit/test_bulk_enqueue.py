"""Sending a bulk file: progress checkpoints around every chunk, and resuming after a failure."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.bulk.enqueue import CHUNK_ROWS, FileProgress, FileState, enqueue, load_progress
from shared.platform.errors import TransientError
from shared.reset.status import Status, StatusRecord, StatusStore


class MemoryStore(StatusStore):
    """The two calls bulk progress makes, in a dict; every write is kept in order."""

    def __init__(self) -> None:
        self.entities: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[dict[str, Any]] = []
        self.records: set[str] = set()

    async def read_entity(self, partition_key: str, row_key: str) -> dict[str, Any] | None:
        return self.entities.get((partition_key, row_key))

    async def write_entity(self, entity: dict[str, Any]) -> None:
        self.entities[(entity["PartitionKey"], entity["RowKey"])] = dict(entity)
        self.writes.append(dict(entity))

    async def get(self, request_id: str) -> StatusRecord | None:
        return StatusRecord(request_id, Status.SUCCEEDED) if request_id in self.records else None


class Queue:
    """Records every message; can fail the n-th send like an unreachable storage account."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[int] = []
        self.calls = 0
        self.fail_at = fail_at

    async def send(self, body: str) -> None:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise TransientError("queue unavailable", code="StorageUnavailable")
        self.sent.append(int(body))


async def numbered(first: int, last: int) -> AsyncIterator[tuple[int, str]]:
    for row in range(first, last + 1):
        yield row, str(row)


def fresh(total: int) -> FileProgress:
    return FileProgress("0123456789abcdef", "0123456789abcdef" + "0" * 48, "f.csv", FileState.ENQUEUING, total)


async def test_every_row_is_sent_once_and_the_file_ends_done() -> None:
    """A run without trouble sends each row exactly once and records Done with every row counted."""
    store, queue = MemoryStore(), Queue()
    result = await enqueue(numbered(1, 1234), progress=fresh(1234), store=store, send=queue.send)
    assert sorted(queue.sent) == list(range(1, 1235))
    assert (result.progress.state, result.progress.rows_sent, result.sent) == (FileState.DONE, 1234, 1234)
    saved = await load_progress(store, "0123456789abcdef")
    assert saved is not None and saved.done and saved.runs == 1


async def test_each_chunk_is_checkpointed_before_it_starts_and_after_it_is_confirmed() -> None:
    """Before a chunk's first message the record says how far the run may get; after it, RowsSent covers it."""
    store, queue = MemoryStore(), Queue()
    total = 2 * CHUNK_ROWS + 7
    await enqueue(numbered(1, total), progress=fresh(total), store=store, send=queue.send, concurrency=8)
    through = [w["SendingThrough"] for w in store.writes]
    sent = [w["RowsSent"] for w in store.writes]
    for end in (CHUNK_ROWS, 2 * CHUNK_ROWS, total):
        assert end in through, f"no write announced the chunk ending at row {end}"
    assert CHUNK_ROWS in sent and 2 * CHUNK_ROWS in sent and sent[-1] == total
    assert sent == sorted(sent), "RowsSent never goes backwards"


async def test_a_failure_keeps_only_confirmed_rows_and_the_resume_sends_the_rest() -> None:
    """Storage fails mid-file: RowsSent stops at rows the queue confirmed; a second run finishes the file."""
    store, queue = MemoryStore(), Queue(fail_at=CHUNK_ROWS + 150)
    total = 2 * CHUNK_ROWS + 40
    with pytest.raises(TransientError):
        await enqueue(numbered(1, total), progress=fresh(total), store=store, send=queue.send)
    stopped = await load_progress(store, "0123456789abcdef")
    assert stopped is not None and stopped.state is FileState.ENQUEUING
    assert CHUNK_ROWS <= stopped.rows_sent < CHUNK_ROWS + 150
    assert set(range(1, stopped.rows_sent + 1)) <= set(queue.sent), "RowsSent counts only confirmed rows"

    queue.fail_at = None
    result = await enqueue(numbered(stopped.rows_sent + 1, total), progress=stopped, store=store, send=queue.send)
    counts = Counter(queue.sent)
    assert set(counts) == set(range(1, total + 1)) and result.progress.done and result.progress.runs == 2
    assert all(counts[row] == 1 for row in range(1, stopped.rows_sent + 1)), "nothing before the checkpoint twice"
    assert sum(c - 1 for c in counts.values()) < CHUNK_ROWS, "at most the chunk in flight is sent again"


async def test_rows_the_worker_already_picked_up_are_not_sent_again() -> None:
    """On resume, rows of the chunk in flight that have a status record are skipped."""
    store = MemoryStore()
    total = CHUNK_ROWS + 20
    progress = FileProgress(
        "0123456789abcdef",
        "x" * 64,
        "f.csv",
        FileState.ENQUEUING,
        total,
        rows_sent=CHUNK_ROWS,
        sending_through=total,
        runs=1,
    )
    store.records = {f"bulk-0123456789abcdef-{row}" for row in range(CHUNK_ROWS + 1, CHUNK_ROWS + 6)}
    queue = Queue()
    result = await enqueue(numbered(CHUNK_ROWS + 1, total), progress=progress, store=store, send=queue.send)
    assert sorted(queue.sent) == list(range(CHUNK_ROWS + 6, total + 1))
    assert (result.sent, result.claimed, result.progress.rows_sent) == (15, 5, total)
