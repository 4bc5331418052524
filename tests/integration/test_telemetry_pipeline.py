"""OpenTelemetry through the real pipeline: one trace per request, counters that move, logs with context.

The SDK's in-memory span exporter, metric reader and log exporter stand in for Azure Monitor;
they are installed once per session (OpenTelemetry allows one global provider per process) and
telemetry is switched off again for the tests after these.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient
from opentelemetry import _logs, metrics, trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import function_app
from shared.platform import telemetry
from shared.platform.logs import app_logger, bind_request, install_filters
from shared.platform.settings import reset_settings
from shared.reset.callbacks import handle_callback_message
from shared.reset.runtime import reset_runtime
from shared.reset.status import utcnow
from shared.reset.worker import handle_request_message
from tests.integration.support import ADELE, LEE, App


@dataclass
class Otel:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: InMemoryLogRecordExporter
    logger_provider: LoggerProvider


@pytest.fixture(scope="session")
def providers() -> Otel:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    _logs.set_logger_provider(logger_provider)
    return Otel(spans, reader, logs, logger_provider)


@pytest.fixture
def otel(providers: Otel, app: App) -> Iterator[Otel]:
    """Telemetry on for one test, with empty exporters."""
    telemetry.reset()
    assert telemetry.configure({}), "SDK providers installed before the app looked count as telemetry on"
    providers.spans.clear()
    providers.logs.clear()
    yield providers
    telemetry.reset(enabled=False)


def points(otel: Otel, name: str) -> list[tuple[dict[str, Any], float]]:
    """(attributes, value) of every data point of one metric (cumulative: totals since the session began)."""
    found: list[tuple[dict[str, Any], float]] = []
    data = otel.metrics.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        # Counters and gauges carry a value; histograms count their observations.
                        value = getattr(point, "value", None)
                        count = getattr(point, "count", 0)
                        found.append((dict(point.attributes or {}), float(value if value is not None else count)))
    return found


def total(otel: Otel, name: str, **match: Any) -> float:
    return sum(v for attrs, v in points(otel, name) if all(attrs.get(k) == w for k, w in match.items()))


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def submit(body: dict[str, Any]) -> func.HttpResponse:
    request = func.HttpRequest(
        "POST",
        "http://localhost:7071/api/resets",
        headers={"Content-Type": "application/json"},
        params={},
        route_params={},
        body=json.dumps(body).encode(),
    )
    response: func.HttpResponse = await function_app.submit_resets.build().get_user_function()(request)
    return response


async def test_one_trace_from_intake_through_the_queue_to_graph_and_the_callback(
    otel: Otel, app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's span continues the intake's trace (traceparent in the message); Graph and callback hang under it."""
    monkeypatch.setenv("CALLBACK_ALLOWED_HOSTS", "127.0.0.1")
    reset_settings()
    reset_runtime()
    monkeypatch.setattr("shared.reset.callbacks.DELAYS", (0.01,))
    body = {"userId": ADELE, "requestId": "traced", "ticketId": "INC-7", "callbackUrl": "https://127.0.0.1:9/hook"}
    assert (await submit(body)).status_code == 202
    queue = QueueClient.from_connection_string(app.connection_string, app.settings.request_queue)
    [message] = list(queue.receive_messages(max_messages=1))
    assert json.loads(message.content)["traceparent"].startswith("00-")
    await handle_request_message(
        message.content.encode(), message_id=message.id, dequeue_count=1, inserted_at=utcnow() - timedelta(seconds=3)
    )
    # The callback goes out from its own queue, after the outcome is stored: the same trace.
    callbacks = QueueClient.from_connection_string(app.connection_string, app.settings.callback_queue)
    [job] = list(callbacks.receive_messages(max_messages=1))
    await handle_callback_message(job.content.encode(), message_id=job.id)

    spans = otel.spans.get_finished_spans()
    [intake] = named(spans, "accept resets")
    [worker] = named(spans, "process reset")
    assert worker.context.trace_id == intake.context.trace_id
    assert worker.parent is not None and worker.parent.span_id == intake.context.span_id
    assert worker.kind is trace.SpanKind.CONSUMER
    assert worker.attributes and worker.attributes["requestId"] == "traced" and worker.attributes["ticketId"] == "INC-7"
    assert worker.attributes["outcome"] == "Succeeded"
    graph = [s for s in spans if s.kind is trace.SpanKind.CLIENT and s.name != "POST callback"]
    assert {s.name for s in graph} >= {"GET /users/{id}", "POST /invitations"}
    assert all(s.parent is not None and s.parent.span_id == worker.context.span_id for s in graph)
    [delivery] = named(spans, "deliver callback")
    assert delivery.kind is trace.SpanKind.CONSUMER and delivery.context.trace_id == intake.context.trace_id
    assert delivery.parent is not None and delivery.parent.span_id == worker.context.span_id
    [callback] = named(spans, "POST callback")
    assert callback.parent is not None and callback.parent.span_id == delivery.context.span_id
    assert callback.attributes and callback.attributes["server.address"] == "127.0.0.1"
    # Only our spans: msgraph-sdk's middleware spans (full URLs, a dozen per call) are not recorded.
    assert {s.instrumentation_scope.name for s in spans if s.instrumentation_scope} == {"guest_reset"}


async def test_counters_move_with_the_work(otel: Otel, app: App) -> None:
    """Outcomes, Graph latency by route and status, 429s and Retry-After, budget wait and queue age are recorded."""
    before = total(otel, "guest_reset.resets", outcome="Succeeded")
    throttled = total(otel, "guest_reset.graph.throttled", route="/invitations")
    app.graph.add_fault(method="POST", path="^/invitations$", status=429, retry_after="0.2", times=1)
    await handle_request_message(
        json.dumps({"userId": LEE, "requestId": "counted"}).encode(),
        message_id="m-counted",
        dequeue_count=1,
        inserted_at=utcnow() - timedelta(seconds=2),
    )
    await handle_request_message(
        json.dumps({"email": "nobody@nowhere.example", "requestId": "missing"}).encode(),
        message_id="m-missing",
        dequeue_count=1,
    )
    assert total(otel, "guest_reset.resets", outcome="Succeeded") == before + 1
    assert total(otel, "guest_reset.resets", outcome="Poisoned", code="UserNotFound") >= 1
    assert total(otel, "guest_reset.graph.throttled", route="/invitations") == throttled + 1
    assert total(otel, "guest_reset.graph.retry_after", route="/invitations") >= 1
    assert total(otel, "guest_reset.graph.duration", method="POST", route="/invitations", status="201") >= 1
    assert total(otel, "guest_reset.graph.duration", method="GET", route="/users/{id}", status="200") >= 1
    assert total(otel, "guest_reset.budget.wait") >= 2  # the throttled write and its retry
    assert total(otel, "guest_reset.queue.age") >= 1
    assert total(otel, "guest_reset.fleet.storage_ops", entity="graph-writes", operation="write") >= 1


async def test_log_records_carry_the_request_context_and_no_address(otel: Otel) -> None:
    """Records written in a delivery carry requestId, ticketId and code as attributes; exception text is redacted."""
    handler = LoggingHandler(logger_provider=otel.logger_provider)
    install_filters(handler)
    log = app_logger()
    log.addHandler(handler)
    try:
        with bind_request(requestId="r-logs", ticketId="INC-9", code="GraphThrottled"):
            log.warning("waiting for %s", "the budget")
            address = "adele.vance" + "@contoso.com"  # data, as an SDK's error text would carry it
            try:
                raise ValueError(f"cannot reach {address}")
            except ValueError:
                log.exception("failed")
    finally:
        log.removeHandler(handler)
    records = [r.log_record for r in otel.logs.get_finished_logs()]
    warning, failure = records[-2:]
    assert warning.attributes is not None and failure.attributes is not None
    assert {k: warning.attributes[k] for k in ("requestId", "ticketId", "code")} == {
        "requestId": "r-logs",
        "ticketId": "INC-9",
        "code": "GraphThrottled",
    }
    assert "adele.vance@" not in str(failure.attributes["exception.message"])
    assert "adele.vance@" not in str(failure.attributes["exception.stacktrace"])
    assert failure.attributes["exception.type"] == "ValueError"


async def test_the_backlog_timer_sets_its_gauges(otel: Otel, app: App) -> None:
    """Poison depth, stuck requests and the invitation breaker are read by the timer and land in their gauges."""
    from shared.reset.backlog import observe_backlog
    from shared.reset.runtime import get_runtime

    await get_runtime()  # creates the queues
    queue = QueueClient.from_connection_string(app.connection_string, app.settings.poison_queue)
    queue.send_message(json.dumps({"requestId": "p1", "request": {}, "error": {"code": "UserNotFound"}}))
    backlog = await observe_backlog()
    assert backlog.poison_depth == 1
    assert points(otel, "guest_reset.poison.depth")[-1][1] == 1
    assert points(otel, "guest_reset.stuck")[-1][1] == backlog.stuck == 0
    assert points(otel, "guest_reset.breaker.open")[-1][1] == 0
