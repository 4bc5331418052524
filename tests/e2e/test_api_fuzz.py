"""The HTTP contract, fuzzed: schemathesis over /api/openapi.json against the local runner, Azurite and the emulator.

All four phases (examples, coverage, fuzzing, stateful submit → poll) and every check but one,
plus this project's own (tests/e2e/api_fuzz_checks.py): 4xx answers are problem documents, no
answer shows a setting's value or someone else's full address. FUZZ_API_EXAMPLES sets the
examples per operation (`make fuzz`: 200; CI: a short run).

Left out, and why:
- ``positive_data_acceptance``: Swagger 2.0 (what Power Automate imports) has no ``oneOf``, so the
  document cannot say "exactly one of userId, userPrincipalName, email" or "a batch or a single
  request"; schema-valid bodies the app must refuse with 400 exist by construction.
- the function key: it is the host's check, not the app's. The fuzzed copy of the document drops
  ``securityDefinitions`` and every request carries the key, so each answer comes from the app;
  the runner's host-level key check (empty 401, as the Functions host answers) is tested below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.factories import isolated_env
from tools.azurite import AzuriteEndpoints
from tools.devhost import running_devhost
from tools.graph_emulator.runner import EmulatorHandle

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("FUZZ_API_EXAMPLES", "20"))
MASTER_KEY = "fuzz-master-key-7c1e"
FUNCTION_KEY = "fuzz-function-key-52ab"


@dataclass
class FuzzedApi:
    base_url: str
    sentinels: list[str]


@pytest.fixture(scope="module")
def api(azurite: AzuriteEndpoints, emulator: EmulatorHandle) -> Iterator[FuzzedApi]:
    """The app behind the local runner with keys enforced and recognisable values in its settings."""
    env = isolated_env(
        azurite.connection_string,
        emulator.base_url,
        DEVHOST_MASTER_KEY=MASTER_KEY,
        DEVHOST_FUNCTION_KEY=FUNCTION_KEY,
        BLOCKED_EMAIL_DOMAINS="blocked-sentinel.example",
        CALLBACK_ALLOWED_HOSTS="*.callback-sentinel.example",
        REDIRECT_ALLOWED_URLS="https://myapps.microsoft.com,https://redirect-sentinel.example/start",
    )
    account_key = azurite.connection_string.split("AccountKey=")[1].split(";")[0]
    sentinels = [
        env["RESET_STATUS_TABLE"],
        env["RESET_REQUEST_QUEUE"],
        env["RESET_RESULT_QUEUE"],
        "blocked-sentinel.example",
        "callback-sentinel.example",
        "redirect-sentinel.example",
        emulator.base_url.split("//")[1].split("/")[0],
        account_key,
        MASTER_KEY,
        FUNCTION_KEY,
    ]
    with running_devhost(REPO_ROOT, env=env, max_polling_interval=0.2) as host:
        yield FuzzedApi(host.base_url, sentinels)


def test_the_contract_holds_under_every_phase_and_check(api: FuzzedApi, tmp_path: Path) -> None:
    """0 failures of any check, 0 answers 5xx; every operation really exercised."""
    document = httpx.get(f"{api.base_url}/api/openapi.json", timeout=30).json()
    document.pop("securityDefinitions")
    document.pop("security")
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(document), encoding="utf-8")
    stats = tmp_path / "stats.json"
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        str(schema),
        "--url",
        f"{api.base_url}/api",
        "--header",
        f"x-functions-key: {MASTER_KEY}",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(EXAMPLES),
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "SCHEMATHESIS_HOOKS": "tests.e2e.api_fuzz_checks",
        "FUZZ_SENTINELS": "\n".join(api.sentinels),
        "FUZZ_STATS": str(stats),
    }
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, check=False)
    summary = run.stdout[run.stdout.rfind("SUMMARY") :] if "SUMMARY" in run.stdout else run.stdout[-6000:]
    figures = json.loads(stats.read_text(encoding="utf-8"))
    print(f"\nAPI fuzz, {EXAMPLES} examples per operation: {json.dumps(figures)}\n{summary}")
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-4000:]
    statuses = {int(s): n for s, n in figures["byStatus"].items()}
    assert not [s for s in statuses if s >= 500], statuses
    assert figures["responses"] >= 5 * EXAMPLES, "every operation must really have been exercised"
    assert {200, 202, 400, 404} <= set(statuses), "it reached answering, refusing and unknown-id paths"


@pytest.mark.parametrize(
    ("method", "path", "key", "expected"),
    [
        ("GET", "/api/health", None, 401),
        ("GET", "/api/health", "wrong", 401),
        ("GET", "/api/health", FUNCTION_KEY, 200),
        ("GET", "/api/poison", FUNCTION_KEY, 401),
        ("GET", "/api/poison", MASTER_KEY, 200),
        ("GET", "/api/openapi.json", None, 200),
    ],
)
def test_the_runner_checks_keys_as_the_host_does(
    api: FuzzedApi, method: str, path: str, key: str | None, expected: int
) -> None:
    """Function level takes the function or master key, admin level the master key only; the 401 is empty."""
    headers = {"x-functions-key": key} if key else {}
    response = httpx.request(method, f"{api.base_url}{path}", headers=headers, timeout=30)
    assert response.status_code == expected
    if expected == 401:
        assert response.content == b""
