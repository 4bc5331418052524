"""The app's own metrics, read locally: an in-memory OpenTelemetry reader in the local runner, a JSON file at its exit.

The local runner installs the reader before it loads ``function_app`` (as the Functions worker
configures Azure Monitor before it does), so the app records into the very instruments that go
to Application Insights in Azure. ``make demo`` prints a summary of them; the fleet benchmark
adds up the budget's storage operations from each runner's file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader


@dataclass(frozen=True)
class Point:
    """One data point: a counter's or gauge's value, or a histogram's count, sum and max."""

    name: str
    attributes: dict[str, Any]
    value: float
    sum: float = 0.0
    max: float = 0.0


def install_reader() -> InMemoryMetricReader:
    """A global SDK meter provider reading into memory (cumulative: totals since start)."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


def collect(reader: InMemoryMetricReader) -> list[Point]:
    found: list[Point] = []
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = dict(point.attributes or {})
                    value = getattr(point, "value", None)
                    if value is not None:
                        found.append(Point(metric.name, attributes, float(value)))
                    else:
                        total, top = float(getattr(point, "sum", 0.0)), float(getattr(point, "max", 0.0))
                        found.append(Point(metric.name, attributes, float(getattr(point, "count", 0)), total, top))
    return found


def write(reader: InMemoryMetricReader, path: Path) -> None:
    points = [p.__dict__ for p in collect(reader)]
    path.write_text(json.dumps(points, indent=1), encoding="utf-8")


def load(path: Path) -> list[Point]:
    if not path.exists():
        return []
    return [Point(**item) for item in json.loads(path.read_text(encoding="utf-8"))]


def total(points: Iterable[Point], name: str, **match: Any) -> float:
    """Sum of values (histograms: of counts) of the points of ``name`` whose attributes match."""
    return sum(p.value for p in points if p.name == name and all(p.attributes.get(k) == v for k, v in match.items()))


def histogram_sum(points: Iterable[Point], name: str) -> float:
    return sum(p.sum for p in points if p.name == name)


def by(points: Iterable[Point], name: str, attribute: str) -> dict[str, float]:
    """Values of ``name`` added up per value of one attribute."""
    out: dict[str, float] = {}
    for point in points:
        if point.name == name:
            key = str(point.attributes.get(attribute, ""))
            out[key] = out.get(key, 0.0) + point.value
    return out
