"""End-to-end tests of tools.devhost: the sample app run as a subprocess against Azurite."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from tools.azurite import AzuriteEndpoints
from tools.devhost import DevHostError, DevHostProcess, running_devhost
from tools.devhost.functions import FunctionSpec
from tools.devhost.hostconfig import apply_overrides, parse_queues, parse_timespan
from tools.devhost.http import compile_route

pytestmark = pytest.mark.timeout(60)

SAMPLE_APP = Path(__file__).parent / "sample_app"
T = TypeVar("T")


def unique_queue() -> str:
    return "t" + uuid.uuid4().hex[:12]


def queue_client(azurite: AzuriteEndpoints, name: str) -> QueueClient:
    return QueueClient.from_connection_string(azurite.connection_string, name, connection_timeout=5, read_timeout=30)


def records(azurite: AzuriteEndpoints, queue: str) -> list[dict[str, Any]]:
    """What the sample app recorded for this test's queue (peeked, so nothing is consumed)."""
    try:
        peeked = queue_client(azurite, f"{queue}-seen").peek_messages(max_messages=32)
    except ResourceNotFoundError:
        return []
    return [json.loads(m.content) for m in peeked]


def message_count(azurite: AzuriteEndpoints, queue: str) -> int:
    """Messages in the queue, visible or not."""
    return queue_client(azurite, queue).get_queue_properties().approximate_message_count or 0


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    """Poll check() until it returns something truthy, failing after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@contextmanager
def devhost(azurite: AzuriteEndpoints, queue: str, **env: str) -> Iterator[DevHostProcess]:
    """The sample app on its own queue; asserts it shut down cleanly (exit 0) on SIGTERM."""
    settings = {"AzureWebJobsStorage": azurite.connection_string, "SAMPLE_QUEUE": queue, **env}
    with running_devhost(SAMPLE_APP, env=settings, max_polling_interval=0.2) as handle:
        yield handle
    assert handle.returncode == 0, handle.log_text()


def at_least(count: int, found: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    return found if len(found) >= count else None


def main_runs(azurite: AzuriteEndpoints, queue: str) -> list[dict[str, Any]]:
    return [r for r in records(azurite, queue) if r["fn"] == "main" and r.get("phase") != "start"]


def poison_runs(azurite: AzuriteEndpoints, queue: str) -> list[dict[str, Any]]:
    return [r for r in records(azurite, queue) if r["fn"] == "poison"]


def test_success_deletes_message_after_one_attempt(azurite: AzuriteEndpoints) -> None:
    """A message the function handles is deleted, and the function saw dequeue_count 1."""
    queue = unique_queue()
    with devhost(azurite, queue):
        queue_client(azurite, queue).send_message(json.dumps({"do": "ok"}))
        runs = wait_for(lambda: main_runs(azurite, queue), "the function to run")
        wait_for(lambda: message_count(azurite, queue) == 0, "the message to be deleted")
    assert [r["dequeue_count"] for r in runs] == [1]


def test_failure_retries_max_dequeue_count_then_poison(azurite: AzuriteEndpoints) -> None:
    """A failing message runs exactly maxDequeueCount (3) times, then the poison function gets it."""
    queue = unique_queue()
    with devhost(azurite, queue):
        queue_client(azurite, queue).send_message(json.dumps({"do": "fail"}))
        poisoned = wait_for(lambda: poison_runs(azurite, queue), "the poison function")
        assert message_count(azurite, queue) == 0
    assert [r["dequeue_count"] for r in main_runs(azurite, queue)] == [1, 2, 3]
    assert json.loads(poisoned[0]["body"]) == {"do": "fail"}


def test_max_dequeue_count_override_from_environment(azurite: AzuriteEndpoints) -> None:
    """AzureFunctionsJobHost__extensions__queues__maxDequeueCount=2 overrides host.json's 3."""
    queue = unique_queue()
    override = {"AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "2"}
    with devhost(azurite, queue, **override):
        queue_client(azurite, queue).send_message(json.dumps({"do": "fail"}))
        wait_for(lambda: poison_runs(azurite, queue), "the poison function")
    assert [r["dequeue_count"] for r in main_runs(azurite, queue)] == [1, 2]


def test_message_past_the_limit_is_poisoned_without_running(azurite: AzuriteEndpoints) -> None:
    """A message already dequeued maxDequeueCount times goes to poison before any invocation."""
    queue = unique_queue()
    client = queue_client(azurite, queue)
    client.create_queue()
    client.send_message(json.dumps({"do": "ok", "tag": "stale"}))
    for _ in range(3):  # as if three hosts crashed mid-run
        message = client.receive_message(visibility_timeout=30)
        assert message is not None
        client.update_message(message.id, message.pop_receipt, visibility_timeout=0)
    with devhost(azurite, queue):
        poisoned = wait_for(lambda: poison_runs(azurite, queue), "the poison function")
        assert message_count(azurite, queue) == 0
    assert main_runs(azurite, queue) == []
    assert json.loads(poisoned[0]["body"])["tag"] == "stale"


def test_base64_encoding_decodes_or_poisons(azurite: AzuriteEndpoints) -> None:
    """With messageEncoding=base64, base64 bodies are decoded; plain JSON goes to poison unrun."""
    queue = unique_queue()
    override = {"AzureFunctionsJobHost__extensions__queues__messageEncoding": "base64"}
    with devhost(azurite, queue, **override) as handle:
        client = queue_client(azurite, queue)
        client.send_message(json.dumps({"do": "ok", "tag": "plain"}))
        client.send_message(base64.b64encode(b'{"do": "ok", "tag": "b64"}').decode())
        runs = wait_for(lambda: main_runs(azurite, queue), "the base64 message to run")
        wait_for(lambda: message_count(azurite, f"{queue}-poison") == 1, "the plain message in poison")
        wait_for(lambda: message_count(azurite, queue) == 0, "the trigger queue to drain")
        # The poison queue is base64 too, so its function cannot decode the copy either.
        wait_for(lambda: handle.log_text().count("failed base64 decoding") == 2, "both decode failures")
    assert [(r["tag"], r["dequeue_count"]) for r in runs] == [("b64", 1)]
    assert poison_runs(azurite, queue) == []


def test_http_routes_round_trip(azurite: AzuriteEndpoints) -> None:
    """Route params, query and body reach the function; wrong method is 405, unknown route 404."""
    queue = unique_queue()
    with devhost(azurite, queue) as handle, httpx.Client(base_url=handle.base_url, timeout=10) as http:
        hello = http.get("/api/hello/world", params={"x": "1", "y": "two"})
        assert hello.status_code == 200
        assert hello.headers["content-type"] == "application/json"
        payload = hello.json()
        assert payload["name"] == "world"
        assert payload["query"] == {"x": "1", "y": "two"}
        assert payload["url"] == f"{handle.base_url}/api/hello/world?x=1&y=two"
        echo = http.post("/api/echo", content=b"hi there")
        assert (echo.status_code, echo.content, echo.headers["x-echo"]) == (201, b"hi there", "1")
        assert echo.headers["content-type"] == "text/plain; charset=utf-8"
        assert http.post("/api/hello/world").status_code == 405
        assert http.get("/api/echo").status_code == 405
        assert http.get("/api/nothing/here").status_code == 404
        out = queue_client(azurite, f"{queue}-out")
        sent = wait_for(lambda: out.peek_messages(), "the queue output binding")
    assert [m.content for m in sent] == ["hi there"]


def test_admin_endpoint_runs_queue_and_timer_functions(azurite: AzuriteEndpoints) -> None:
    """POST /admin/functions/<name> answers 202 and runs it; unknown is 404, HTTP functions 400."""
    queue = unique_queue()
    with devhost(azurite, queue) as handle, httpx.Client(base_url=handle.base_url, timeout=10) as http:
        status = http.get("/admin/host/status").json()
        assert status == {"state": "Running", "functions": ["echo", "hello", "main", "nightly", "poison"]}
        body = json.dumps({"do": "ok", "tag": "admin"})
        assert http.post("/admin/functions/main", json={"input": body}).status_code == 202
        assert http.post("/admin/functions/nightly", json={"input": ""}).status_code == 202
        assert http.post("/admin/functions/nope", json={"input": ""}).status_code == 404
        assert http.post("/admin/functions/hello", json={"input": ""}).status_code == 400
        seen = wait_for(lambda: at_least(2, records(azurite, queue)), "both runs")
    by_fn = {r["fn"]: r for r in seen}
    assert (by_fn["main"]["tag"], by_fn["main"]["dequeue_count"]) == ("admin", 1)
    assert by_fn["nightly"]["past_due"] is False


def test_batch_runs_messages_concurrently(azurite: AzuriteEndpoints) -> None:
    """Four 1-second messages (batchSize 4) run side by side, well under 4 s in total."""
    queue = unique_queue()
    client = queue_client(azurite, queue)
    client.create_queue()
    for index in range(4):
        client.send_message(json.dumps({"do": "slow", "seconds": 1, "tag": str(index)}))
    with devhost(azurite, queue):
        runs = wait_for(lambda: at_least(4, main_runs(azurite, queue)), "4 runs")
    span = max(r["ended"] for r in runs) - min(r["started"] for r in runs)
    assert span < 2.0, f"4 x 1 s took {span:.2f} s: not concurrent"


def test_sigterm_waits_for_in_flight_invocation(azurite: AzuriteEndpoints) -> None:
    """SIGTERM stops polling but lets a running invocation finish and delete its message (exit 0)."""
    queue = unique_queue()
    with devhost(azurite, queue):
        queue_client(azurite, queue).send_message(json.dumps({"do": "slow", "seconds": 2}))
        wait_for(lambda: any(r.get("phase") == "start" for r in records(azurite, queue)), "the start")
    assert [r["dequeue_count"] for r in main_runs(azurite, queue)] == [1]
    assert message_count(azurite, queue) == 0


def test_unresolved_setting_is_a_startup_error(azurite: AzuriteEndpoints) -> None:
    """A %TOKEN% with no app setting stops startup with an error naming the setting."""
    env = {"AzureWebJobsStorage": azurite.connection_string}
    with pytest.raises(DevHostError, match="SAMPLE_QUEUE"), running_devhost(SAMPLE_APP, env=env):
        pass


def test_route_templates_match_like_the_host() -> None:
    """Route templates support {x:int}, {x?} and {*rest}, case-insensitive literals and a prefix."""

    def route(template: str) -> Callable[[str], dict[str, str] | None]:
        spec = FunctionSpec(
            name="f", trigger={"type": "httpTrigger", "name": "req", "route": template}, user_function=lambda req: None
        )
        compiled = compile_route(spec, "api")

        def match(path: str) -> dict[str, str] | None:
            found = compiled.pattern.match(path)
            if found is None:
                return None
            return {p.name: v for i, p in enumerate(compiled.params) if (v := found.group(f"p{i}"))}

        return match

    items = route("items/{id:int}/{*rest}")
    assert items("/api/Items/42/a/b") == {"id": "42", "rest": "a/b"}
    assert items("/api/items/42") == {"id": "42"}
    assert items("/api/items/abc") is None
    optional = route("users/{name:alpha?}")
    assert optional("/api/users") == {}
    assert optional("/api/users/ann") == {"name": "ann"}
    assert optional("/api/users/123") is None


def test_host_json_overrides_and_defaults() -> None:
    """Env overrides match host.json keys case-insensitively; unset options take the host defaults."""
    document = {"extensions": {"queues": {"maxDequeueCount": 3, "batchSize": 4}}}
    env = {
        "AzureFunctionsJobHost__Extensions__Queues__MAXDEQUEUECOUNT": "7",
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:30",
        "UNRELATED": "x",
    }
    merged = apply_overrides(document, env)
    options = parse_queues({k.lower(): v for k, v in merged["extensions"]["queues"].items()})
    assert (options.max_dequeue_count, options.batch_size, options.new_batch_threshold) == (7, 4, 2)
    assert (options.visibility_timeout, options.message_encoding) == (30.0, "base64")
    defaults = parse_queues({})
    assert (defaults.batch_size, defaults.new_batch_threshold, defaults.max_dequeue_count) == (16, 8, 5)
    assert defaults.max_polling_interval == 60.0
    assert parse_timespan("1.02:03:04.5", key="x") == 93784.5


def test_disabled_setting_switches_a_function_off(azurite: AzuriteEndpoints) -> None:
    """`AzureWebJobs.<name>.Disabled=true` keeps that function from running, as in Azure."""
    queue = unique_queue()
    client = queue_client(azurite, queue)
    client.create_queue()
    client.send_message(json.dumps({"do": "ok", "tag": "never"}))
    with (
        devhost(azurite, queue, **{"AzureWebJobs.main.Disabled": "true"}) as handle,
        httpx.Client(base_url=handle.base_url, timeout=10) as http,
    ):
        assert "main" not in http.get("/admin/host/status").json()["functions"]
        assert http.post("/admin/functions/main", json={"input": "{}"}).status_code == 404
        time.sleep(1.5)  # several polling intervals: the message must still be there
        assert message_count(azurite, queue) == 1
