"""Sample app for the devhost tests: every invocation is recorded in the queue `<SAMPLE_QUEUE>-seen`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

import azure.functions as func
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient
from azure.storage.queue.aio import QueueClient as AsyncQueueClient

# The binding names this setting; the records below reuse it.
CONNECTION = "AzureWebJobsStorage"

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _record_queue() -> str:
    return f"{os.environ['SAMPLE_QUEUE']}-seen"


async def record(entry: dict[str, Any]) -> None:
    """Append one JSON record (created on first use) for the test to peek at."""
    conn = os.environ[CONNECTION]
    async with AsyncQueueClient.from_connection_string(conn, _record_queue()) as queue:
        with contextlib.suppress(ResourceExistsError):
            await queue.create_queue()
        await queue.send_message(json.dumps(entry))


def record_sync(entry: dict[str, Any]) -> None:
    conn = os.environ[CONNECTION]
    with QueueClient.from_connection_string(conn, _record_queue()) as queue:
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()
        queue.send_message(json.dumps(entry))


@app.queue_trigger(arg_name="msg", queue_name="%SAMPLE_QUEUE%", connection="AzureWebJobsStorage")
async def main(msg: func.QueueMessage) -> None:
    """Behaviour chosen by the body: ok records, fail raises, slow sleeps then records."""
    body = msg.get_json()
    entry = {
        "fn": "main",
        "do": body.get("do"),
        "tag": body.get("tag"),
        "dequeue_count": msg.dequeue_count,
        "started": time.time(),
    }
    if body.get("do") == "slow":
        await record({**entry, "phase": "start"})
        await asyncio.sleep(float(body.get("seconds", 1)))
    entry["ended"] = time.time()
    await record(entry)
    if body.get("do") == "fail":
        raise RuntimeError("sample failure (expected by the test)")


@app.queue_trigger(arg_name="msg", queue_name="%SAMPLE_QUEUE%-poison", connection="AzureWebJobsStorage")
def poison(msg: func.QueueMessage) -> None:
    """A plain def (runs in the thread pool) that records what reached the poison queue."""
    record_sync({"fn": "poison", "dequeue_count": msg.dequeue_count, "body": msg.get_body().decode("utf-8", "replace")})


@app.route(route="hello/{name}", methods=["GET"])
def hello(req: func.HttpRequest) -> func.HttpResponse:
    payload = {"name": req.route_params.get("name"), "query": dict(req.params), "url": req.url}
    return func.HttpResponse(json.dumps(payload), mimetype="application/json")


@app.route(route="echo", methods=["POST"])
@app.queue_output(arg_name="out", queue_name="%SAMPLE_QUEUE%-out", connection="AzureWebJobsStorage")
async def echo(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
    """Echo the body back and also enqueue it through a queue output binding."""
    out.set(req.get_body().decode("utf-8"))
    return func.HttpResponse(req.get_body(), status_code=201, headers={"X-Echo": "1"}, mimetype="text/plain")


@app.timer_trigger(arg_name="timer", schedule="0 0 3 * * *", run_on_startup=False)
async def nightly(timer: func.TimerRequest) -> None:
    await record({"fn": "nightly", "past_due": timer.past_due})
