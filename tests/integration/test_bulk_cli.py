"""The guest-reset command line against real Azurite and the Graph emulator (and the local runner for the API)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue.aio import QueueClient

from shared.bulk.enqueue import CHUNK_ROWS, FileProgress, FileState, save_progress
from shared.platform import storage
from shared.platform.errors import TransientError
from shared.reset.breaker import InvitationGate
from shared.reset.queues import Publisher
from shared.reset.runtime import get_runtime
from shared.reset.status import LEASE_ROW_KEY, StatusRecord, StatusStore
from tests.factories import isolated_env
from tests.integration.support import ADELE, LEE, MEGAN, App
from tools.azurite import AzuriteEndpoints
from tools.cli import main as cli
from tools.devhost import DevHostProcess, running_devhost
from tools.graph_emulator.runner import EmulatorHandle

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "samples" / "bulk-resets.sample.csv"
SUBMIT_KEYS = {"file", "sha256", "fileId", "rows", "via", "state", "sent", "alreadySent", "receipt", "valid", "dryRun"}
INVALID_KEYS = {"file", "valid", "sha256", "fileId", "rows", "invalidRows", "problemCount", "problems", "sent"}
STATUS_KEYS = {"total", "terminal", "allTerminal", "failed", "byStatus", "byErrorCode", "timedOut", "requests"}
OUTCOME_KEYS = {"row", "requestId", "status", "errorCode", "errorMessage", "updatedAt"}


async def run(*argv: str) -> tuple[int, Any, str]:
    """Run the CLI in this event loop; returns (exit code, parsed JSON or text, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = await cli.run(list(argv), stdout=out, stderr=err)
    text = out.getvalue()
    return code, (json.loads(text) if "--json" in argv and text else text), err.getvalue()


def guests(count: int) -> list[dict[str, Any]]:
    """Plain redeemed guests for the emulator, ids g0000000-...-<n>."""
    return [
        {
            "id": guest_id(i),
            "userPrincipalName": f"g{i}_x.example#EXT#@fabrikam.onmicrosoft.com",
            "mail": f"g{i}@x.example",
            "otherMails": [f"g{i}@x.example"],
            "userType": "Guest",
            "externalUserState": "Accepted",
            "creationType": "Invitation",
        }
        for i in range(count)
    ]


def guest_id(index: int) -> str:
    return f"c0000000-0000-4000-8000-{index:012d}"


def csv_of(user_ids: list[str], path: Path) -> Path:
    path.write_text("userId,ticketId\n" + "".join(f"{u},T-{i}\n" for i, u in enumerate(user_ids)), encoding="utf-8")
    return path


async def queued(app: App) -> list[dict[str, Any]]:
    """Every message on the request queue (received and made invisible, not deleted)."""
    found: list[dict[str, Any]] = []
    async with QueueClient.from_connection_string(app.connection_string, app.settings.request_queue) as queue:
        while batch := [m async for m in queue.receive_messages(max_messages=32, visibility_timeout=300)]:
            found += [json.loads(m.content) for m in batch]
    return found


async def drain(app: App) -> list[Any]:
    """Receive and delete every request message, 32 at a time (before any processing: Azurite's
    receive slows down with the number of visible messages, and more so under load)."""
    messages: list[Any] = []
    async with QueueClient.from_connection_string(app.connection_string, app.settings.request_queue) as queue:
        while batch := [m async for m in queue.receive_messages(max_messages=32, visibility_timeout=300)]:
            await asyncio.gather(*(queue.delete_message(m) for m in batch))
            messages += batch
    return messages


async def process_bodies(app: App, bodies: list[str], *, concurrency: int = 32) -> int:
    """Run the queue trigger's handler on each body, 32 at a time, redelivering a transient
    failure as the host would; then the poison handler on whatever got poisoned."""
    await get_runtime()  # built once here, not by 32 deliveries racing to build their own
    gate = asyncio.Semaphore(concurrency)

    store = (await get_runtime()).status

    async def deliver(index: int, body: str) -> None:
        async with gate:
            for dequeue_count in range(1, 4):
                try:
                    await app.deliver(body.encode(), message_id=f"m-{index}", dequeue_count=dequeue_count)
                    return
                except TransientError:  # e.g. Azurite dropping a busy keep-alive connection
                    # The host redelivers later; by then a claim the failed delivery could not
                    # release has lapsed (here: is dropped), so the redelivery is not held.
                    with contextlib.suppress(Exception):
                        await store._table.delete_entity(json.loads(body)["requestId"], LEASE_ROW_KEY)
                    continue
            raise AssertionError(f"message {index} failed on every delivery")

    await asyncio.gather(*(deliver(i, b) for i, b in enumerate(bodies)))
    await app.run_poison_handler()
    return len(bodies)


async def drop_claims(app: App, bodies: list[str]) -> None:
    """The claims these requests' earlier deliveries held, lapsed (the time a held copy waits)."""
    store = (await get_runtime()).status
    for body in bodies:
        with contextlib.suppress(Exception):
            await store._table.delete_entity(json.loads(body)["requestId"], LEASE_ROW_KEY)


async def process_queue(app: App) -> int:
    """Receive every queued request message (deleting it) and run the worker on it."""
    bodies: list[str] = []
    async with QueueClient.from_connection_string(app.connection_string, app.settings.request_queue) as queue:
        while batch := [m async for m in queue.receive_messages(max_messages=32, visibility_timeout=300)]:
            await asyncio.gather(*(queue.delete_message(m) for m in batch))
            bodies += [m.content for m in batch]
    return await process_bodies(app, bodies)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return Path(shutil.copy(SAMPLE, tmp_path / "guests.csv"))


async def test_submit_enqueues_every_row_with_derived_request_ids(app: App, sample: Path) -> None:
    """Each row becomes one queue message whose requestId is bulk-<file id>-<row>; a receipt lists them."""
    code, body, _ = await run("submit", str(sample), "--json")
    assert code == 0 and set(body) == SUBMIT_KEYS
    assert body["rows"] == 5 and body["sent"] == 5 and body["state"] == "Done" and body["via"] == "queue"
    messages = await queued(app)
    assert sorted(m["requestId"] for m in messages) == [f"bulk-{body['fileId']}-{n}" for n in range(1, 6)]
    brian = next(m for m in messages if m["requestId"].endswith("-2"))
    assert brian["newEmail"] == "brian.j@tailspin.example" and brian["source"] == "bulk:guests.csv"
    receipt = json.loads(await asyncio.to_thread(Path(body["receipt"]).read_text))
    assert receipt["sha256"] == body["sha256"] and len(receipt["requests"]) == 5
    assert receipt["requests"][1] == {"row": 2, "line": 3, "requestId": f"bulk-{body['fileId']}-2"}


async def test_resubmitting_the_same_file_sends_nothing(app: App, sample: Path) -> None:
    """A second submit of the same bytes finds the file's progress and sends no message."""
    first = await run("submit", str(sample), "--json")
    again = await run("submit", str(sample), "--json")
    assert first[0] == again[0] == 0
    assert again[1]["sent"] == 0 and again[1]["alreadySent"] == 5 and again[1]["fileId"] == first[1]["fileId"]
    assert len(await queued(app)) == 5


async def test_invalid_file_sends_nothing_and_lists_every_problem(app: App, tmp_path: Path) -> None:
    """Exit 1, every bad row with line and column, and not one message on the queue."""
    path = tmp_path / "bad.csv"
    path.write_text(f"userId,newEmail\n{ADELE},ok@x.example\nnot-a-guid,\n{LEE},bad-address\n", encoding="utf-8")
    code, body, _ = await run("submit", str(path), "--json")
    assert code == 1 and set(body) == INVALID_KEYS and body["valid"] is False
    assert [(p["line"], p["column"], p["field"]) for p in body["problems"]] == [(3, 1, "userId"), (4, 2, "newEmail")]
    assert body["invalidRows"] == 2 and body["sent"] == 0
    assert await queued(app) == []
    code, text, _ = await run("submit", str(path))
    assert code == 1 and "line 4, column 2 (newEmail)" in text and "nothing was sent" in text


async def test_a_file_that_names_a_guest_twice_sends_nothing(app: App, tmp_path: Path) -> None:
    """Two rows for one guest would reset them twice: exit 1, the repeat's line, nothing queued."""
    path = tmp_path / "twice.csv"
    path.write_text(f"userId,newEmail\n{ADELE},a@x.example\n{LEE},\n{ADELE},b@x.example\n", encoding="utf-8")
    code, body, _ = await run("submit", str(path), "--json")
    assert code == 1 and body["valid"] is False and body["sent"] == 0
    assert [(p["line"], p["column"], p["field"]) for p in body["problems"]] == [(4, 1, "userId")]
    assert "the same user as line 2" in body["problems"][0]["message"]
    assert await queued(app) == []


async def test_interrupted_submission_resumes_at_the_unfinished_chunk(app: App, tmp_path: Path) -> None:
    """With progress left at a chunk boundary, a resubmit sends only the rows after it."""
    path = csv_of([guest_id(i) for i in range(CHUNK_ROWS + 40)], tmp_path / "big.csv")
    code, body, _ = await run("submit", str(path), "--json", "--receipt", str(tmp_path / "dry.json"))
    assert code == 0
    # Forget the messages and pretend the run died after the first chunk was confirmed.
    async with QueueClient.from_connection_string(app.connection_string, app.settings.request_queue) as queue:
        await queue.clear_messages()
    runtime = await get_runtime()
    await save_progress(
        runtime.status,
        FileProgress(
            body["fileId"],
            body["sha256"],
            "big.csv",
            FileState.ENQUEUING,
            CHUNK_ROWS + 40,
            rows_sent=CHUNK_ROWS,
            sending_through=CHUNK_ROWS + 40,
            runs=1,
        ),
    )
    code, body, _ = await run("submit", str(path), "--json")
    assert code == 0 and body["sent"] == 40 and body["alreadySent"] == CHUNK_ROWS
    rows = sorted(int(m["requestId"].rsplit("-", 1)[1]) for m in await queued(app))
    assert rows == list(range(CHUNK_ROWS + 1, CHUNK_ROWS + 41))


async def test_status_counts_queued_then_outcomes_by_status_and_error_code(app: App, sample: Path) -> None:
    """Before the worker: Queued; after: Succeeded/Failed with a summary by error code, exit 1 on failure."""
    with sample.open("a", encoding="utf-8") as handle:
        handle.write(f"{MEGAN},,,,,,,INC-2006,identity-team\n")  # a member: refused
    code, submitted, _ = await run("submit", str(sample), "--json")
    receipt = submitted["receipt"]
    code, body, _ = await run("status", receipt, "--json")
    assert code == 0 and set(body) == STATUS_KEYS and body["byStatus"] == {"Queued": 6}
    assert set(body["requests"][0]) == OUTCOME_KEYS and body["requests"][0]["row"] == 1
    assert await process_queue(app) == 6
    code, body, _ = await run("status", receipt, "--json")
    assert code == 1 and body["allTerminal"] and body["byStatus"] == {"Failed": 1, "Succeeded": 5}
    assert body["byErrorCode"] == {"NotAGuest": 1} and body["failed"] == 1
    [failed] = [r for r in body["requests"] if r["status"] == "Failed"]
    assert failed["row"] == 6 and failed["errorCode"] == "NotAGuest"
    code, text, _ = await run("status", receipt)
    assert code == 1 and "6 request(s): Failed 1, Succeeded 5" in text and "NotAGuest 1" in text


async def _keep_runtime() -> None:
    """Stands in for close_runtime while a test's worker shares the command line's process."""


async def test_status_wait_follows_until_every_request_has_ended(
    app: App, sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--wait polls until all are terminal (exit 0), while the worker catches up in the background."""
    _, submitted, _ = await run("submit", str(sample), "--json")
    # The command line closes its storage clients when it ends; in its own process (as in real use)
    # those are not the worker's, here they are: the worker may still be releasing its claims.
    monkeypatch.setattr("shared.reset.runtime.close_runtime", _keep_runtime)

    async def later() -> int:
        await asyncio.sleep(0.5)
        return await process_queue(app)

    worker = asyncio.create_task(later())
    code, body, _ = await run("status", submitted["receipt"], "--wait", "--interval", "0.2", "--json")
    assert await worker == 5
    assert code == 0 and body["allTerminal"] and body["byStatus"] == {"Succeeded": 5} and not body["timedOut"]


async def test_status_wait_gives_up_at_the_timeout_with_exit_1(app: App, sample: Path) -> None:
    """Nothing processes the queue: --wait --timeout stops and says so."""
    _, submitted, _ = await run("submit", str(sample), "--json")
    code, body, _ = await run(
        "status", submitted["receipt"], "--wait", "--interval", "0.1", "--timeout", "0.3", "--json"
    )
    assert code == 1 and body["timedOut"] is True and body["byStatus"] == {"Queued": 5}
    code, body, _ = await run("status", "--request-id", "no-such-request", "--json")
    assert code == 0 and body["requests"][0]["status"] == "Queued"


async def test_report_exports_outcomes_without_progress_entities(app: App, sample: Path, tmp_path: Path) -> None:
    """report --since writes the public fields of every outcome in the window, nothing else."""
    await run("submit", str(sample), "--json")
    await process_queue(app)
    output = tmp_path / "outcomes.csv"
    code, body, _ = await run("report", "--since", "10m", "--output", str(output), "--json")
    assert code == 0 and body["rows"] == 5 and body["output"] == str(output)
    rows = list(csv.DictReader(output.open(encoding="utf-8")))
    assert {r["status"] for r in rows} == {"Succeeded"} and all(r["requestId"].startswith("bulk-") for r in rows)
    assert "redeemUrl" not in rows[0] and rows[0]["maskedEmail"].count("***") == 1
    code, body, _ = await run("report", "--since", "2999-01-01", "--output", str(output), "--json")
    assert code == 0 and body["rows"] == 0
    code, _, err = await run("report", "--since", "yesterday")
    assert code == 2 and "is not a time" in err


async def test_report_cells_never_run_as_spreadsheet_formulas(app: App, tmp_path: Path) -> None:
    """A ticket id or requester from a file that looks like a formula is written as text."""
    path = tmp_path / "formulas.csv"
    path.write_text(f'userId,ticketId,requestedBy\n{ADELE},=1+1,"@SUM(A1:A2)"\n{LEE},INC-7,ops\n', encoding="utf-8")
    assert (await run("submit", str(path), "--json"))[0] == 0
    await process_queue(app)
    output = tmp_path / "outcomes.csv"
    assert (await run("report", "--since", "10m", "--output", str(output), "--json"))[0] == 0
    rows = {r["ticketId"]: r for r in csv.DictReader(output.open(encoding="utf-8"))}
    assert rows["'=1+1"]["requestedBy"] == "'@SUM(A1:A2)"
    assert rows["INC-7"]["requestedBy"] == "ops"


async def test_poison_list_and_replay_are_the_admin_endpoints(app: App) -> None:
    """poison list shows the failed request; replay needs a filter and moves it back to the queue."""
    await app.deliver({"userId": MEGAN, "requestId": "cli-member"})
    await app.run_poison_handler()
    code, body, _ = await run("poison", "list", "--json")
    assert code == 0 and [(i["requestId"], i["errorCode"]) for i in body["items"]] == [("cli-member", "NotAGuest")]
    code, _, err = await run("poison", "replay")
    assert code == 2 and "--all" in err
    code, body, _ = await run("poison", "replay", "--request-id", "cli-member", "--json")
    assert code == 0 and body == {"moved": ["cli-member"], "movedCount": 1, "skipped": []}
    assert [m["requestId"] for m in await queued(app)] == ["cli-member"]


async def test_reset_runs_the_worker_pipeline_in_process(app: App) -> None:
    """reset: Succeeded with one invitation; a member is refused (exit 1); a dry run sends nothing."""
    code, body, _ = await run("reset", "--user-id", ADELE, "--ticket-id", "INC-9", "--json")
    assert code == 0 and body["status"] == "Succeeded" and body["verified"] is True and body["ticketId"] == "INC-9"
    assert len(app.graph.invitations()) == 1
    code, body, _ = await run("reset", "--user-id", MEGAN, "--json")
    assert code == 1 and body["status"] == "Failed" and body["errorCode"] == "NotAGuest"
    code, text, _ = await run("reset", "--email", "lee.gu@contoso.com", "--dry-run")
    assert code == 0 and text.startswith("DryRunPassed") and len(app.graph.invitations()) == 1
    code, body, _ = await run("reset", "--email", "not an email", "--json")
    assert code == 1 and body["error"]["code"] == "InvalidRequest"


# 300 rows in `make test`; BULK_ROUND_TRIP_ROWS=2000 for the full-size run (about 2.5 minutes).
ROUND_TRIP_ROWS = int(os.environ.get("BULK_ROUND_TRIP_ROWS", "300"))


async def test_many_rows_round_trip_to_a_full_report(app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk file of many rows: submitted, reset by the worker, every outcome in status and in the report.

    The worker runs on the bodies exactly as they were sent (a sample is checked against the
    queue): receiving 2,000 messages back from Azurite would cost more than the whole pipeline.
    """
    count = ROUND_TRIP_ROWS
    app.graph.set_users(guests(count))
    monkeypatch.setenv("GRAPH_WRITES_PER_SECOND", "1000")
    sent: list[str] = []
    send = Publisher.send_request

    async def recording(self: Publisher, body: dict[str, Any] | str, *, delay: float = 0) -> None:
        await send(self, body, delay=delay)
        sent.append(str(body))

    async def unpaced(self: InvitationGate, record: StatusRecord, status: StatusStore) -> StatusRecord:
        return record

    # This test measures the pipeline at bulk scale; the invitation pace has tests of its own.
    monkeypatch.setattr(InvitationGate, "pace", unpaced)

    monkeypatch.setattr(Publisher, "send_request", recording)
    path = csv_of([guest_id(i) for i in range(count)], tmp_path / "many.csv")
    code, body, _ = await run("submit", str(path), "--json")
    assert code == 0 and body["sent"] == count and len(sent) == count
    async with QueueClient.from_connection_string(app.connection_string, app.settings.request_queue) as queue:
        assert (await queue.get_queue_properties()).approximate_message_count == count
        sample = [m.content async for m in queue.receive_messages(max_messages=32)]
        assert len(sample) == 32 and set(sample) <= set(sent)
        await queue.clear_messages()
    done = len(sent)
    assert await process_bodies(app, sent[:done], concurrency=16) == count
    # A delivery that met another's claim (a storage stall let it lapse) put a held copy back on
    # the queue; the host delivers it once visible, when every claim of this pass has ended.
    for _ in range(5):
        if len(sent) == done:
            break
        held, done = sent[done:], len(sent)
        await drop_claims(app, held)
        await process_bodies(app, held, concurrency=16)
    code, status, _ = await run("status", body["receipt"], "--json")
    assert code == 0 and status["byStatus"] == {"Succeeded": count} and status["allTerminal"]
    output = tmp_path / "report.csv"
    code, report, _ = await run("report", "--since", "1h", "--output", str(output), "--json")
    assert code == 0 and report["rows"] == count
    rows = list(csv.DictReader(output.open(encoding="utf-8")))
    assert {r["requestId"] for r in rows} == {f"bulk-{body['fileId']}-{n}" for n in range(1, count + 1)}
    assert {r["status"] for r in rows} == {"Succeeded"} and {r["verified"] for r in rows} == {"true"}
    assert len(app.graph.invitations()) == count
    # 2,000 result messages would slow down every later receive on the shared Azurite.
    async with QueueClient.from_connection_string(app.connection_string, app.settings.result_queue) as results:
        await results.clear_messages()


async def test_usage_and_settings_errors_exit_2(app: App, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Bad options, a missing file or missing settings: exit 2, with a JSON error under --json."""
    assert (await run())[0] == 2
    assert (await run("submit", "--bogus", "x.csv"))[0] == 2
    code, body, _ = await run("submit", str(tmp_path / "missing.csv"), "--json")
    assert code == 2 and body["error"]["code"] == "Usage" and body["error"]["exitCode"] == 2
    monkeypatch.delenv("AzureWebJobsStorage")
    code, body, _ = await run("status", "--request-id", "x", "--json")
    assert code == 2 and body["error"]["code"] == "Settings" and "AzureWebJobsStorage" in body["error"]["message"]
    assert (await run("--help"))[0] == 0


async def test_unreachable_storage_and_api_exit_3(
    app: App, monkeypatch: pytest.MonkeyPatch, sample: Path, tmp_path: Path
) -> None:
    """Storage or API down: exit 3 and a message that says so (nothing half-sent to worry about)."""
    monkeypatch.setattr(storage, "_TIMEOUTS", {**storage._TIMEOUTS, "retry_total": 0, "connection_timeout": 1})
    monkeypatch.setenv("AzureWebJobsStorage", app.connection_string.replace("127.0.0.1", "127.0.0.1:1#"))
    dead = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        + "a" * 88
        + ";"
        + "".join(f"{kind}Endpoint=http://127.0.0.1:9/devstoreaccount1;" for kind in ("Blob", "Queue", "Table"))
    )
    monkeypatch.setenv("AzureWebJobsStorage", dead)
    code, body, _ = await run("status", "--request-id", "x", "--json")
    assert code == 3 and body["error"]["code"] == "StorageUnavailable"
    monkeypatch.setattr("tools.cli.api_client.RETRY_DELAYS", (0.01,))
    code, body, _ = await run(
        "submit", str(sample), "--api-url", "http://127.0.0.1:9", "--json", "--receipt", str(tmp_path / "r.json")
    )
    assert code == 3 and body["error"]["code"] == "ApiUnavailable"


# --- through the HTTP API, served by the local runner ----------------------------------------


@pytest.fixture(scope="module")
def api_host(azurite: AzuriteEndpoints, emulator: EmulatorHandle) -> Iterator[DevHostProcess]:
    env = isolated_env(azurite.connection_string, emulator.base_url, BULK_CONTAINER=f"bulk-{uuid.uuid4().hex[:8]}")
    with running_devhost(REPO_ROOT, env=env, max_polling_interval=0.2) as host:
        yield host


async def test_submit_through_the_api_is_idempotent_and_status_follows_it(
    api_host: DevHostProcess, emulator: EmulatorHandle, sample: Path
) -> None:
    """--api-url posts batches to /api/resets; a resubmission is all duplicates; status reads the API."""
    emulator.control.reset()
    code, body, _ = await run("submit", str(sample), "--api-url", api_host.base_url, "--api-key", "k", "--json")
    assert code == 0 and body["via"] == "api" and body["sent"] == 5 and body["alreadySent"] == 0
    code, again, _ = await run("submit", str(sample), "--api-url", api_host.base_url, "--json")
    assert code == 0 and again["sent"] == 0 and again["alreadySent"] == 5
    code, status, _ = await run(
        "status",
        body["receipt"],
        "--api-url",
        api_host.base_url,
        "--wait",
        "--interval",
        "0.2",
        "--timeout",
        "30",
        "--json",
    )
    assert code == 0 and status["byStatus"] == {"Succeeded": 5}
    assert len(emulator.control.invitations()) == 5  # one per row, although the file went in twice
