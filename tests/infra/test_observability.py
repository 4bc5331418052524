"""Offline checks of the workbook and the alert rules: they exist, are wired, and their KQL reads what the app writes.

Every query runs against Application Insights' tables. A metric it names must be an instrument
the app declares (shared/platform/telemetry.py INSTRUMENTS) and records; a customDimensions field
must be an attribute of the instruments the query reads, or a field the app's log context and
spans carry. So renaming a metric or an attribute in the app breaks these tests, not the dashboard.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from shared.platform.logs import CONTEXT_FIELDS
from shared.platform.telemetry import INSTRUMENTS
from tests.infra.test_infra import MAIN, app_settings, body, parameter, resources_of, tree

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "infra" / "app"
OBSERVABILITY = APP / "observability.bicep"
WORKBOOK = json.loads((APP / "workbook.json").read_text(encoding="utf-8"))
ALERTS: list[dict[str, Any]] = json.loads((APP / "alerts.json").read_text(encoding="utf-8"))
OPERATIONS = ROOT / "docs" / "operations.md"

# Application Insights tables the app's telemetry lands in (classic names, as the workbook and
# the rules scoped to the component see them).
TABLES = {"customMetrics", "traces", "requests", "dependencies", "exceptions"}
METRIC_COLUMNS = {"value", "valueSum", "valueCount", "valueMax", "valueMin"}
# Attributes the worker's spans carry besides the log context (telemetry.annotate in the worker).
SPAN_FIELDS = {"outcome"}
ALERT_IDS = {"poison-depth", "failure-rate", "invitations-blocked", "stuck-requests", "budget-saturation"}


def workbook_queries() -> list[tuple[str, str]]:
    return [(item["name"], item["content"]["query"]) for item in WORKBOOK["items"] if item["type"] == 3]


def alert_queries() -> list[tuple[str, str]]:
    return [(alert["id"], alert["query"]) for alert in ALERTS]


QUERIES = workbook_queries() + alert_queries()


def tables_of(query: str) -> set[str]:
    first = re.match(r"\s*(\w+)", query)
    unions = re.findall(r"\bunion\s+([\w\s,]+?)(?:\n|\|)", query)
    names = {first.group(1)} if first and first.group(1) != "union" else set()
    for group in unions:
        names |= {n.strip() for n in group.split(",") if n.strip()}
    return names


def metrics_of(query: str) -> set[str]:
    return set(re.findall(r'"(guest_reset\.[a-z_.]+)"', query))


def fields_of(query: str) -> set[str]:
    return set(re.findall(r"customDimensions\.(\w+)", query)) | set(re.findall(r'customDimensions\["(\w+)"\]', query))


def test_the_module_declares_a_workbook_an_action_group_and_the_alert_rules() -> None:
    """One workbook on Application Insights, an email action group from a parameter, one rule per alert."""
    [workbook] = [body(r) for r in resources_of(OBSERVABILITY, "Microsoft.Insights/workbooks").values()]
    assert workbook["kind"] == "shared" and workbook["properties"]["category"] == "workbook"
    [group] = [body(r) for r in resources_of(OBSERVABILITY, "Microsoft.Insights/actionGroups").values()]
    [receiver] = group["properties"]["emailReceivers"]
    assert receiver["emailAddress"] == "alertEmailAddress"
    assert resources_of(OBSERVABILITY, "Microsoft.Insights/scheduledQueryRules"), "alert rules over alerts.json"
    source = OBSERVABILITY.read_text(encoding="utf-8")
    assert "loadJsonContent('alerts.json')" in source and "loadJsonContent('workbook.json')" in source
    assert "for alert in alerts" in source


def test_main_wires_the_module_with_the_email_parameter() -> None:
    """The operators' address is a deployment parameter (azd: ALERT_EMAIL_ADDRESS), passed to the module."""
    module = body(tree(MAIN)["modules"]["observability"])
    assert module["params"]["alertEmailAddress"] == "alertEmailAddress"
    assert parameter(MAIN, "alertEmailAddress")["default"] == ""
    values = json.loads((ROOT / "infra" / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert values["alertEmailAddress"]["value"] == "${ALERT_EMAIL_ADDRESS=}"


def test_every_alert_the_issue_asks_for_exists() -> None:
    assert {a["id"] for a in ALERTS} == ALERT_IDS
    for alert in ALERTS:
        assert 0 <= alert["severity"] <= 4 and alert["evaluationFrequency"].startswith("PT")
        assert alert["description"].endswith(f"docs/operations.md#alert-{alert['id']}")


def test_the_workbook_shows_what_operators_need() -> None:
    """Outcomes and codes, Graph latency and 429s, budget saturation, queue age, poison depth, breaker."""
    shown = set().union(*(metrics_of(q) for _, q in workbook_queries()))
    assert shown >= {
        "guest_reset.resets",
        "guest_reset.graph.duration",
        "guest_reset.graph.throttled",
        "guest_reset.budget.wait",
        "guest_reset.queue.age",
        "guest_reset.poison.depth",
        "guest_reset.stuck",
        "guest_reset.breaker.open",
    }


@pytest.mark.parametrize(("name", "query"), QUERIES, ids=[n for n, _ in QUERIES])
def test_queries_read_only_tables_and_fields_the_app_writes(name: str, query: str) -> None:
    tables = tables_of(query)
    assert tables and tables <= TABLES, f"{name}: tables {tables - TABLES}"
    metrics = metrics_of(query)
    assert metrics <= set(INSTRUMENTS), f"{name}: undeclared metrics {metrics - set(INSTRUMENTS)}"
    if tables == {"customMetrics"}:
        assert metrics, f"{name}: a customMetrics query names the metric it reads"
        allowed = set().union(*(INSTRUMENTS[m].attributes for m in metrics))
        used_columns = set(re.findall(r"\b(value\w*)\b", query))
        assert used_columns <= METRIC_COLUMNS, f"{name}: columns {used_columns - METRIC_COLUMNS}"
    else:
        allowed = set(CONTEXT_FIELDS) | SPAN_FIELDS
    assert fields_of(query) <= allowed, f"{name}: customDimensions {fields_of(query) - allowed}"


def test_every_declared_metric_is_recorded_by_the_app() -> None:
    """A metric the workbook reads is written somewhere in shared/."""
    code = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "shared").rglob("*.py") if p.name != "telemetry.py")
    unused = {name for name in INSTRUMENTS if f'"{name}"' not in code}
    assert not unused


def test_the_runbook_covers_every_alert() -> None:
    """docs/operations.md has a section per alert, with what to check, the KQL to run and how to recover."""
    text = OPERATIONS.read_text(encoding="utf-8")
    for alert_id in ALERT_IDS:
        match = re.search(rf'<a id="alert-{alert_id}"></a>(.*?)(?=<a id="alert-|\n## |\Z)', text, re.S)
        assert match, f"no runbook section for {alert_id}"
        section = match.group(1)
        assert "```kusto" in section and "check" in section.lower() and "recover" in section.lower(), alert_id


def test_the_app_streams_its_telemetry_with_the_identity_and_without_library_http_spans() -> None:
    settings = app_settings()
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"
    assert "httpx" in settings["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"].split(",")
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["telemetryMode"] == "OpenTelemetry"
