"""Run `python -m tools.devhost` as a subprocess for tests: wait for its ready file, SIGTERM it after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The devhost drains for up to 30 s on SIGTERM; allow a little more before killing it.
STOP_TIMEOUT = 40.0


class DevHostError(RuntimeError):
    """The devhost did not become ready; the message carries its log."""


@dataclass
class DevHostProcess:
    """A running devhost subprocess."""

    base_url: str
    pid: int
    log_path: Path
    returncode: int | None = None  # set once the process has exited
    metrics_path: Path | None = None  # the app's metrics as JSON, written when the process exits

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@contextmanager
def running_devhost(
    app_dir: Path,
    env: Mapping[str, str],
    port: int = 0,
    *,
    max_polling_interval: float = 1.0,
    timeout: float = 30.0,
    metrics: bool = False,
) -> Iterator[DevHostProcess]:
    """Start the devhost for app_dir with `env` layered over this process's environment."""
    workdir = Path(tempfile.mkdtemp(prefix="devhost-"))
    ready, log_path = workdir / "ready", workdir / "devhost.log"
    cmd = [
        sys.executable,
        "-m",
        "tools.devhost",
        "--app-dir",
        str(Path(app_dir).resolve()),
        "--port",
        str(port),
        "--max-polling-interval",
        str(max_polling_interval),
        "--ready-file",
        str(ready),
    ]
    metrics_path = workdir / "metrics.json" if metrics else None
    if metrics_path is not None:
        cmd += ["--metrics-file", str(metrics_path)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    handle = DevHostProcess(base_url="", pid=proc.pid, log_path=log_path, metrics_path=metrics_path)
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None:
                raise DevHostError(f"devhost exited with {proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise DevHostError(f"devhost not ready within {timeout:.0f} s:\n{_tail(log_path)}")
            time.sleep(0.05)
        handle.base_url = ready.read_text(encoding="utf-8").strip()
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        handle.returncode = proc.returncode
