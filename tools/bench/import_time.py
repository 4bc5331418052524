"""Goal 4: a cold start imports no msgraph/kiota module, and ``import function_app`` costs at most
1.3x of importing ``azure.functions`` and the storage SDKs it cannot do without.

Each figure is the time around the import statement(s) in a fresh interpreter
(``python -c``), so interpreter start-up is excluded on both sides. The two subprocesses
alternate, after one untimed run of each (bytecode caches), and the median of each counts.
The function_app subprocess also reports every ``msgraph*``/``kiota*`` module it loaded, and
its slowest imports by ``-X importtime`` are listed to show where the time goes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tools.bench.common import BenchResult, Row, median

GOAL = 1.3
REPO_ROOT = Path(__file__).resolve().parents[2]
APP_CODE = """
import json, sys, time
t0 = time.perf_counter()
import function_app
elapsed = time.perf_counter() - t0
sdk = sorted(m for m in sys.modules if m.startswith(("msgraph", "kiota")))
print(json.dumps({"seconds": elapsed, "sdk": sdk, "modules": len(sys.modules)}))
"""
BASELINE_CODE = """
import json, sys, time
t0 = time.perf_counter()
import azure.functions
import azure.storage.queue.aio
import azure.data.tables.aio
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "sdk": [], "modules": len(sys.modules)}))
"""


def _env() -> dict[str, str]:
    """The caller's environment with the repo importable; no app settings (import reads none)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _run(code: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *extra, "-c", code],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


def _timed(code: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(_run(code).stdout.strip().splitlines()[-1])
    return data


def _import_time_by_package(limit: int = 8) -> list[str]:
    """Self import time of ``import function_app`` summed by top-level package (-X importtime)."""
    stderr = _run("import function_app", "-X", "importtime").stderr
    totals: dict[str, int] = {}
    for line in stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        package = parts[2].strip().split(".")[0]
        totals[package] = totals.get(package, 0) + int(parts[0].strip())
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)
    return [f"{name} {us / 1000:.0f} ms" for name, us in ranked[:limit]]


def run(*, quick: bool) -> BenchResult:
    runs = 5 if quick else 7
    _timed(APP_CODE)  # untimed: write bytecode caches for both sides
    _timed(BASELINE_CODE)
    app: list[float] = []
    base: list[float] = []
    sdk_modules: set[str] = set()
    modules = 0
    for i in range(runs):
        pair = (APP_CODE, BASELINE_CODE) if i % 2 == 0 else (BASELINE_CODE, APP_CODE)
        for code in pair:
            data = _timed(code)
            seconds = float(str(data["seconds"]))
            if code is APP_CODE:
                app.append(seconds)
                sdk_modules.update(str(m) for m in data["sdk"])  # type: ignore[attr-defined]
                modules = int(str(data["modules"]))
            else:
                base.append(seconds)
    app_s, base_s = median(app), median(base)
    ratio = app_s / base_s
    result = BenchResult("import", f"cold import, median of {runs} fresh interpreters each, alternating")
    result.rows.append(
        Row(
            "import function_app vs azure.functions + storage aio SDKs (ms)",
            f"{app_s * 1000:.0f}",
            f"{base_s * 1000:.0f}",
            f"{ratio:.2f}x",
            f"<= {GOAL:.1f}x",
            ratio <= GOAL,
        )
    )
    result.rows.append(
        Row(
            "msgraph*/kiota* modules after import function_app", str(len(sdk_modules)), goal="0", passed=not sdk_modules
        )
    )
    clean = not any(m.startswith(("msgraph", "kiota")) for m in sdk_modules)
    result.notes.append(
        "not any(m.startswith('msgraph') or m.startswith('kiota') for m in sys.modules) -> "
        f"{clean}" + (f" (loaded: {', '.join(sorted(sdk_modules)[:10])})" if sdk_modules else "")
    )
    result.notes.append(
        f"function_app runs (ms): {' '.join(f'{s * 1000:.0f}' for s in app)}; baseline runs (ms): "
        f"{' '.join(f'{s * 1000:.0f}' for s in base)}; {modules} modules loaded by function_app."
    )
    result.notes.append(
        "where function_app's import time goes (-X importtime, self time by package, one run): "
        + ", ".join(_import_time_by_package())
    )
    return result
