"""OpenTelemetry for the app: one trace per request, the metrics operators alert on, logs with their context.

Off until a connection string is set. ``configure`` runs once, when the first runtime is built
(never at import: the OpenTelemetry API alone costs ~130 ms to import, the Azure Monitor distro
~2 s). With ``APPLICATIONINSIGHTS_CONNECTION_STRING`` it calls ``configure_azure_monitor()``,
unless the Functions Python worker did already (``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY``);
without one it only uses providers a host or test installed before; otherwise every call
here is a no-op that imports nothing.

Every metric the app writes is declared in ``INSTRUMENTS`` with its attribute keys: a typo at a
call site raises, and the workbook and alert tests check their KQL against this table.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
SCOPE = "guest_reset"
# Library instrumentations kept off: their spans would carry full URLs (Graph $filter values hold
# email addresses; Logic Apps callback URLs carry a signature in the query string). The gateway
# and the callback write their own spans with the route and host only.
DISABLED_INSTRUMENTATIONS = ("httpx", "httpx2", "requests", "urllib", "urllib3")

Kind = Literal["counter", "histogram", "gauge"]


@dataclass(frozen=True)
class Instrument:
    """One metric: how it aggregates, its unit, what it means, the attributes it may carry."""

    kind: Kind
    unit: str
    description: str
    attributes: frozenset[str]


def _instrument(kind: Kind, unit: str, description: str, *attributes: str) -> Instrument:
    return Instrument(kind, unit, description, frozenset(attributes))


INSTRUMENTS: Mapping[str, Instrument] = {
    "guest_reset.resets": _instrument(
        "counter",
        "{reset}",
        "Deliveries by outcome: Succeeded, DryRunPassed, Failed (recorded by the poison handler), "
        "Poisoned (sent to poison by the worker), Retried (handed back to the host)",
        "outcome",
        "code",
    ),
    "guest_reset.graph.duration": _instrument(
        "histogram", "ms", "Graph requests: latency by method, route and HTTP status", "method", "route", "status"
    ),
    "guest_reset.graph.throttled": _instrument("counter", "{response}", "Graph 429 answers", "method", "route"),
    "guest_reset.graph.retry_after": _instrument(
        "histogram", "s", "Retry-After seconds Graph asked for with a 429", "method", "route"
    ),
    "guest_reset.budget.wait": _instrument(
        "histogram",
        "s",
        "Time each Graph write waited for the app-wide budget; rate = the budget's writes per second",
        "rate",
    ),
    "guest_reset.fleet.storage_ops": _instrument(
        "counter",
        "{operation}",
        "Storage operations spent on app-wide state (write budget, invitation pace, breaker), by entity, "
        "read/write and ok/conflict",
        "entity",
        "operation",
        "result",
    ),
    "guest_reset.queue.age": _instrument(
        "histogram", "s", "How long a request message waited in the queue before this delivery started"
    ),
    "guest_reset.poison.depth": _instrument("gauge", "{message}", "Messages waiting in the poison queue"),
    "guest_reset.stuck": _instrument(
        "gauge", "{request}", "Requests Accepted or Processing that have not moved for STUCK_MINUTES"
    ),
    "guest_reset.breaker.open": _instrument(
        "gauge", "1", "1 while the invitation circuit breaker is open, else 0 (see docs/operations.md)"
    ),
}

_enabled: bool | None = None
_tracer: Tracer | None = None
_instruments: dict[str, Any] = {}


def _sdk_installed() -> bool:
    """True when a host or test installed OpenTelemetry SDK providers before the app looked."""
    if "opentelemetry.trace" not in sys.modules:
        return False
    from opentelemetry import metrics, trace

    providers = (trace.get_tracer_provider(), metrics.get_meter_provider())
    return any(type(p).__module__.startswith("opentelemetry.sdk") for p in providers)


def configure(environ: Mapping[str, str] | None = None) -> bool:
    """Decide once whether telemetry is on, configuring Azure Monitor if it is ours to configure.

    The exporter authenticates with Microsoft Entra ID on its own when
    ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` is ``ClientId=<identity>;Authorization=AAD``
    (a managed identity credential), which is how the infra sets it: no key is ever needed.
    """
    global _enabled
    if _enabled is not None:
        return _enabled
    env = os.environ if environ is None else environ
    connection = env.get(CONNECTION_STRING, "").strip()
    if connection and not _sdk_installed():
        from azure.monitor.opentelemetry import configure_azure_monitor

        configure_azure_monitor(
            connection_string=connection,
            instrumentation_options={name: {"enabled": False} for name in DISABLED_INSTRUMENTATIONS},
        )
    _enabled = bool(connection) or _sdk_installed()
    return _enabled


def enabled() -> bool:
    return bool(_enabled)


def reset(*, enabled: bool | None = None) -> None:
    """Forget the decision and the instruments (tests install their own providers); ``enabled``
    decides in advance (False: off again, whatever providers are installed)."""
    global _enabled, _tracer
    _enabled = enabled
    _tracer = None
    _instruments.clear()


def _checked(name: str, attributes: Mapping[str, Any]) -> Instrument:
    instrument = INSTRUMENTS.get(name)
    if instrument is None:
        raise ValueError(f"unknown instrument {name!r}; declare it in INSTRUMENTS")
    unknown = set(attributes) - instrument.attributes
    if unknown:
        raise ValueError(f"{name} has no attribute(s) {', '.join(sorted(unknown))}")
    return instrument


def _get(name: str, instrument: Instrument) -> Any:
    found = _instruments.get(name)
    if found is None:
        from opentelemetry import metrics

        meter = metrics.get_meter(SCOPE)
        unit, description = instrument.unit, instrument.description
        if instrument.kind == "counter":
            found = meter.create_counter(name, unit=unit, description=description)
        elif instrument.kind == "histogram":
            found = meter.create_histogram(name, unit=unit, description=description)
        else:
            found = meter.create_gauge(name, unit=unit, description=description)
        _instruments[name] = found
    return found


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, int | float | bool) else str(v)) for k, v in attributes.items() if v is not None}


def count(name: str, value: int = 1, **attributes: Any) -> None:
    """Add to a counter."""
    instrument = _checked(name, attributes)
    if _enabled:
        _get(name, instrument).add(value, _clean(attributes))


def record(name: str, value: float, **attributes: Any) -> None:
    """Record one value of a histogram."""
    instrument = _checked(name, attributes)
    if _enabled:
        _get(name, instrument).record(value, _clean(attributes))


def gauge(name: str, value: float, **attributes: Any) -> None:
    """Set a gauge to its current value."""
    instrument = _checked(name, attributes)
    if _enabled:
        _get(name, instrument).set(value, _clean(attributes))


# --- traces ----------------------------------------------------------------------------------


class _NoSpan:
    """What ``span`` yields while telemetry is off."""

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None


SpanKind = Literal["internal", "server", "client", "producer", "consumer"]


def _tracer_of() -> Tracer:
    global _tracer
    if _tracer is None:
        from opentelemetry import trace

        _tracer = trace.get_tracer(SCOPE)
    return _tracer


@contextlib.contextmanager
def span(
    name: str, *, kind: SpanKind = "internal", traceparent: str | None = None, **attributes: Any
) -> Iterator[Span | _NoSpan]:
    """A span around a block; exceptions mark it failed with a redacted message.

    ``traceparent`` (W3C, from a queue message) makes the span a child of the request's trace,
    and links it to the span current here (the host's invocation), so a request is one trace
    from intake to the callback while each invocation still points to it.
    """
    if not _enabled:
        yield _NoSpan()
        return
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from shared.platform.logs import redact

    context = None
    links = []
    if traceparent:
        context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        if trace.get_current_span(context).get_span_context().is_valid:
            current = trace.get_current_span().get_span_context()
            if current.is_valid:
                links.append(Link(current))
        else:
            context = None
    with _tracer_of().start_as_current_span(
        name,
        context=context,
        kind=SpanKind[kind.upper()],
        attributes=_clean(attributes),
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as current_span:
        try:
            yield current_span
        except BaseException as error:
            current_span.set_status(Status(StatusCode.ERROR, redact(str(error))[:300]))
            current_span.set_attribute("error.type", getattr(error, "code", None) or type(error).__name__)
            raise


def annotate(**attributes: Any) -> None:
    """Add attributes to the span current here (requestId once the message is parsed, the outcome)."""
    if not _enabled:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_clean(attributes))


def current_traceparent() -> str | None:
    """The W3C traceparent of the span current here, to carry in a queue message; None when off."""
    if not _enabled:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Library spans started inside are not recorded (msgraph-sdk's middleware spans, storage calls).

    The block runs under a local, unsampled parent: Azure Monitor's default sampler and every
    parent-based sampler drop its children, so a Graph call is one span of ours, not a dozen of
    the SDK's (kiota's spans would also carry full request URLs).
    """
    if not _enabled:
        yield
        return
    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    from opentelemetry.trace.span import INVALID_SPAN_ID

    current = trace.get_current_span().get_span_context()
    trace_id = current.trace_id if current.is_valid else int.from_bytes(os.urandom(16), "big") or 1
    span_id = int.from_bytes(os.urandom(8), "big") or INVALID_SPAN_ID + 1
    silent = NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(0)))
    token = context.attach(trace.set_span_in_context(silent))
    try:
        yield
    finally:
        context.detach(token)
