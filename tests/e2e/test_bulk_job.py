"""The scheduled bulk job of function_app.py, run by the local runner's admin endpoint against Azurite."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient
from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient

from shared.bulk.enqueue import CHUNK_ROWS
from shared.bulk.reader import request_id_for
from tests.factories import isolated_env
from tools.azurite import AzuriteEndpoints
from tools.devhost import DevHostProcess, running_devhost
from tools.graph_emulator.runner import EmulatorHandle

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "samples" / "bulk-resets.sample.csv"
TERMINAL = {"Succeeded", "Failed", "DryRunPassed"}


@dataclass
class Bulk:
    """The bulk container, the request queue and the status table, as an operator sees them."""

    host: DevHostProcess
    container: ContainerClient
    requests: QueueClient
    table: TableClient

    def drop(self, name: str, data: bytes) -> None:
        self.container.upload_blob(f"incoming/{name}", data, overwrite=True)

    def run_job(self, timeout: float = 60) -> None:
        """POST /admin/functions/bulk_reset_job (202, runs in the background), wait for it to end."""
        done = "Executed 'Functions.bulk_reset_job'"
        before = self.host.log_text().count(done)
        response = httpx.post(f"{self.host.base_url}/admin/functions/bulk_reset_job", json={"input": ""}, timeout=10)
        assert response.status_code == 202
        deadline = time.monotonic() + timeout
        while self.host.log_text().count(done) == before:
            assert time.monotonic() < deadline, "the bulk job did not finish"
            time.sleep(0.1)
        assert "Executed 'Functions.bulk_reset_job' (Succeeded" in self.host.log_text()

    def names(self) -> list[str]:
        return sorted(blob.name for blob in self.container.list_blobs())

    def csv_rows(self, name: str) -> list[dict[str, str]]:
        text = self.container.download_blob(name).readall().decode("utf-8")
        return list(csv.DictReader(io.StringIO(text)))

    def queued_request_ids(self) -> Counter[str]:
        found: Counter[str] = Counter()
        while batch := list(self.requests.receive_messages(max_messages=32, visibility_timeout=300)):
            found.update(json.loads(m.content)["requestId"] for m in batch)
        return found

    def records(self, file_id: str) -> dict[str, dict[str, Any]]:
        prefix = f"bulk-{file_id}-"
        query = "PartitionKey ge @low and PartitionKey lt @high and RowKey eq 'status'"
        entities = self.table.query_entities(query, parameters={"low": prefix, "high": prefix[:-1] + "."})
        return {e["PartitionKey"]: dict(e) for e in entities}

    def progress(self, file_id: str) -> dict[str, Any]:
        return dict(self.table.get_entity(f"bulkfile-{file_id}", "progress"))

    def wait_for_outcomes(self, file_id: str, count: int, timeout: float = 45) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records(file_id)
            if len(records) == count and all(r["Status"] in TERMINAL for r in records.values()):
                return records
            time.sleep(0.3)
        raise AssertionError(f"the {count} requests of {file_id} did not all end within {timeout} s")


def _bulk(azurite: AzuriteEndpoints, emulator: EmulatorHandle, **overrides: str) -> Iterator[Bulk]:
    env = isolated_env(
        azurite.connection_string, emulator.base_url, BULK_CONTAINER=f"bulk-{uuid.uuid4().hex[:10]}", **overrides
    )
    conn = azurite.connection_string
    with running_devhost(REPO_ROOT, env=env, max_polling_interval=0.2) as host:
        # What the deployment creates up front (infra/app/storage.bicep): the container, the table, the queue.
        bulk = Bulk(
            host,
            ContainerClient.from_connection_string(conn, env["BULK_CONTAINER"]),
            QueueClient.from_connection_string(conn, env["RESET_REQUEST_QUEUE"]),
            TableClient.from_connection_string(conn, env["RESET_STATUS_TABLE"]),
        )
        for create in (bulk.container.create_container, bulk.table.create_table, bulk.requests.create_queue):
            with contextlib.suppress(ResourceExistsError):
                create()
        yield bulk


@pytest.fixture(scope="module")
def bulk(azurite: AzuriteEndpoints, emulator: EmulatorHandle) -> Iterator[Bulk]:
    """The whole app: the job enqueues, the queue trigger resets through the emulator."""
    yield from _bulk(azurite, emulator)


@pytest.fixture(scope="module")
def bulk_without_worker(azurite: AzuriteEndpoints, emulator: EmulatorHandle) -> Iterator[Bulk]:
    """The job alone: the queue triggers are switched off, so every message it sends stays countable."""
    yield from _bulk(
        azurite,
        emulator,
        **{"AzureWebJobs.process_reset.Disabled": "true", "AzureWebJobs.record_poisoned_reset.Disabled": "true"},
    )


def file_id_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def test_accepted_file_is_enqueued_reported_and_moved(bulk: Bulk, emulator: EmulatorHandle) -> None:
    """A valid file: every row reset once, a report row per request, the file in processed/."""
    emulator.control.reset()
    data = SAMPLE.read_bytes()
    file_id = file_id_of(data)
    bulk.drop("guests.csv", data)
    bulk.run_job()
    assert bulk.names() == ["processed/guests.csv", "reports/guests.csv.report.csv"]
    assert bulk.container.download_blob("processed/guests.csv").readall() == data
    report = bulk.csv_rows("reports/guests.csv.report.csv")
    assert [(r["row"], r["line"], r["result"]) for r in report] == [
        (str(n), str(n + 1), "accepted") for n in range(1, 6)
    ]
    assert [r["requestId"] for r in report] == [request_id_for(file_id, n) for n in range(1, 6)]
    records = bulk.wait_for_outcomes(file_id, 5)
    assert {r["Status"] for r in records.values()} == {"Succeeded"}
    assert bulk.progress(file_id)["State"] == "Done"
    assert len(emulator.control.invitations()) == 5


def test_dropping_the_same_file_again_sends_nothing(bulk: Bulk, emulator: EmulatorHandle) -> None:
    """The same bytes dropped a second time are reported as already accepted; no message, no invitation."""
    data = SAMPLE.read_bytes()
    bulk.drop("guests.csv", data)
    invitations = len(emulator.control.invitations())
    bulk.run_job()
    assert bulk.names() == ["processed/guests.csv", "reports/guests.csv.report.csv"]
    assert {r["result"] for r in bulk.csv_rows("reports/guests.csv.report.csv")} == {"alreadyAccepted"}
    time.sleep(1)  # the queue trigger would have picked up anything sent by now
    assert len(emulator.control.invitations()) == invitations
    assert bulk.progress(file_id_of(data))["Runs"] == 1


def test_rejected_file_goes_to_rejected_with_its_errors(bulk: Bulk) -> None:
    """A file with a bad row is sent nowhere; rejected/ gets it and its line/column errors."""
    data = (
        b"userId,tiketId,newEmail\n5e0c1d2a-0001-4a5b-9c3d-000000000001,T-1,ok@x.example\n"
        b"5e0c1d2a-0008-4a5b-9c3d-000000000008,T-2,not-an-email\n"
    )
    bulk.drop("typos.csv", data)
    bulk.run_job()
    names = bulk.names()
    assert {"rejected/typos.csv", "rejected/typos.csv.errors.csv", "reports/typos.csv.report.csv"} <= set(names)
    assert "incoming/typos.csv" not in names
    errors = bulk.csv_rows("rejected/typos.csv.errors.csv")
    assert [(e["line"], e["column"], e["field"]) for e in errors] == [("1", "2", "tiketId"), ("3", "3", "newEmail")]
    assert "did you mean 'ticketId'" in errors[0]["message"]
    report = bulk.csv_rows("reports/typos.csv.report.csv")
    assert [(r["row"], r["result"], r["requestId"]) for r in report] == [("1", "notSent", ""), ("2", "rejected", "")]
    file_id = file_id_of(data)
    assert bulk.records(file_id) == {} and bulk.progress(file_id)["State"] == "Rejected"


def test_file_that_names_a_guest_twice_is_rejected_with_the_repeat(bulk_without_worker: Bulk) -> None:
    """The second reading finds the repeat: its line in the errors, the row marked rejected in the report."""
    adele, lee = "5e0c1d2a-0001-4a5b-9c3d-000000000001", "5e0c1d2a-0008-4a5b-9c3d-000000000008"
    data = f"userId,ticketId\n{adele},T-1\n{lee},T-2\n{adele.upper()},T-3\n".encode()
    bulk_without_worker.drop("twice.csv", data)
    bulk_without_worker.run_job()
    names = bulk_without_worker.names()
    assert {"rejected/twice.csv", "rejected/twice.csv.errors.csv", "reports/twice.csv.report.csv"} <= set(names)
    [error] = bulk_without_worker.csv_rows("rejected/twice.csv.errors.csv")
    assert (error["line"], error["column"], error["field"], error["row"]) == ("4", "1", "userId", "3")
    assert "the same user as line 2" in error["message"]
    report = bulk_without_worker.csv_rows("reports/twice.csv.report.csv")
    assert [(r["row"], r["result"]) for r in report] == [("1", "notSent"), ("2", "notSent"), ("3", "rejected")]
    assert bulk_without_worker.progress(file_id_of(data))["State"] == "Rejected"


def test_error_list_cells_never_run_as_spreadsheet_formulas(bulk_without_worker: Bulk) -> None:
    """A column named like a formula is refused, and rejected/*.errors.csv shows its name as text."""
    bulk_without_worker.drop(
        "formula.csv", b'userId,"=HYPERLINK(""http://x.example"")"\n5e0c1d2a-0001-4a5b-9c3d-000000000001,1\n'
    )
    bulk_without_worker.run_job()
    [error] = bulk_without_worker.csv_rows("rejected/formula.csv.errors.csv")
    assert (error["line"], error["column"]) == ("1", "2")
    assert error["field"] == '\'=HYPERLINK("http://x.example")'


def test_file_held_by_another_run_is_left_to_it(bulk_without_worker: Bulk) -> None:
    """A run that finds the source leased (another run is on it) sends nothing; once free, the file is done."""
    data = b"userId,ticketId\n5e0c1d2a-0001-4a5b-9c3d-000000000001,T-1\n5e0c1d2a-0008-4a5b-9c3d-000000000008,T-2\n"
    bulk_without_worker.drop("held.csv", data)
    other_run = bulk_without_worker.container.get_blob_client("incoming/held.csv").acquire_lease(lease_duration=60)
    bulk_without_worker.run_job()
    assert "incoming/held.csv" in bulk_without_worker.names()
    assert not any(name.startswith(("reports/held", "processed/held")) for name in bulk_without_worker.names())
    assert bulk_without_worker.queued_request_ids() == Counter()
    assert "held.csv is being processed by another run" in bulk_without_worker.host.log_text()
    other_run.release()
    bulk_without_worker.run_job()
    names = bulk_without_worker.names()
    assert "processed/held.csv" in names and "incoming/held.csv" not in names
    file_id = file_id_of(data)
    assert bulk_without_worker.queued_request_ids() == Counter(
        {request_id_for(file_id, 1): 1, request_id_for(file_id, 2): 1}
    )


def test_crashed_run_resumes_without_sending_any_row_twice(bulk_without_worker: Bulk) -> None:
    """Progress left mid-file by a dead run: the job sends only what is missing, once, and finishes the file.

    As the dead run left it: the first chunk confirmed (RowsSent = 500), rows 1-450 already
    processed by the worker (status records), rows 451-500 still waiting on the queue, and
    rows 501-510 of the chunk in flight processed too. Afterwards each row must have exactly
    one message or one record.
    """
    bulk = bulk_without_worker
    total = CHUNK_ROWS + 40
    users = [f"d0000000-0000-4000-8000-{i:012d}" for i in range(total)]
    data = ("userId,ticketId\n" + "".join(f"{u},T-{i}\n" for i, u in enumerate(users))).encode()
    file_id = file_id_of(data)
    rid = [""] + [request_id_for(file_id, n) for n in range(1, total + 1)]  # rid[n] is row n's requestId
    bulk.table.upsert_entity(
        {
            "PartitionKey": f"bulkfile-{file_id}",
            "RowKey": "progress",
            "Sha256": hashlib.sha256(data).hexdigest(),
            "FileName": "big.csv",
            "State": "Enqueuing",
            "RowsTotal": total,
            "RowsSent": CHUNK_ROWS,
            "SendingThrough": total,
            "Runs": 1,
        }
    )
    for n in [*range(1, 451), *range(CHUNK_ROWS + 1, CHUNK_ROWS + 11)]:
        bulk.table.upsert_entity({"PartitionKey": rid[n], "RowKey": "status", "Status": "Succeeded", "Attempts": 1})
    for n in range(451, CHUNK_ROWS + 1):
        bulk.requests.send_message(json.dumps({"userId": users[n - 1], "requestId": rid[n]}))
    bulk.drop("big.csv", data)

    bulk.run_job()

    messages = bulk.queued_request_ids()
    records = bulk.records(file_id)
    per_row = {n: messages[rid[n]] + (rid[n] in records) for n in range(1, total + 1)}
    assert {n: c for n, c in per_row.items() if c != 1} == {}
    assert sum(messages.values()) == 50 + 30  # the dead run's 50, and rows 511-540 sent now
    progress = bulk.progress(file_id)
    assert (progress["State"], progress["RowsSent"], progress["Runs"]) == ("Done", total, 2)
    assert "processed/big.csv" in bulk.names() and "incoming/big.csv" not in bulk.names()
    report = bulk.csv_rows("reports/big.csv.report.csv")
    assert Counter(r["result"] for r in report) == {"alreadyAccepted": CHUNK_ROWS, "accepted": 40}


def test_file_that_is_not_csv_is_rejected_with_a_reason(bulk_without_worker: Bulk) -> None:
    """Anything but a .csv file goes to rejected/ with an errors file that says why."""
    bulk_without_worker.drop("notes.txt", b"hello")
    bulk_without_worker.run_job()
    names = bulk_without_worker.names()
    assert "rejected/notes.txt" in names and "incoming/notes.txt" not in names
    [error] = bulk_without_worker.csv_rows("rejected/notes.txt.errors.csv")
    assert "only .csv files" in error["message"]
    with pytest.raises(ResourceNotFoundError):
        bulk_without_worker.container.get_blob_client("reports/notes.txt.report.csv").get_blob_properties()
