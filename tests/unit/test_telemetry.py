"""Telemetry is free when off: nothing imported, nothing configured; every metric name and attribute is declared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.platform import telemetry

REPO = Path(__file__).resolve().parents[2]


def test_without_a_connection_string_nothing_is_imported_or_configured() -> None:
    """import function_app plus a delivery's telemetry calls load no OpenTelemetry module."""
    code = """
import json, os, sys
os.environ.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
import function_app
from shared.platform import telemetry
on = telemetry.configure()
telemetry.count("guest_reset.resets", outcome="Succeeded")
with telemetry.span("process reset", kind="consumer", traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"):
    telemetry.annotate(requestId="r")
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "azure.monitor")))
print(json.dumps({"on": on, "otel": loaded}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"on": False, "otel": []}


def test_unknown_metric_or_attribute_is_refused() -> None:
    """A typo at a call site fails loudly instead of writing a metric the workbook never reads."""
    with pytest.raises(ValueError, match="unknown instrument"):
        telemetry.count("guest_reset.reset", outcome="Succeeded")
    with pytest.raises(ValueError, match="has no attribute"):
        telemetry.count("guest_reset.resets", outcome="Succeeded", requestId="r-1")


def test_every_instrument_has_a_kind_unit_and_description() -> None:
    for name, instrument in telemetry.INSTRUMENTS.items():
        assert name.startswith("guest_reset.") and instrument.kind in {"counter", "histogram", "gauge"}
        assert instrument.unit and instrument.description
