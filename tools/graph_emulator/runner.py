"""Start the emulator as a subprocess for tests and benchmarks, and stop it afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .control import EmulatorControl

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_USERS = Path(__file__).with_name("users.json")
READY_TIMEOUT_S = 20.0


class EmulatorStartError(RuntimeError):
    """The emulator process exited or did not become ready; the message includes its log."""


@dataclass(frozen=True)
class EmulatorHandle:
    """A running emulator: point the SDK at ``base_url``, drive it with ``control``."""

    base_url: str
    root_url: str
    control: EmulatorControl
    pid: int
    log_path: Path


def _wait_ready(proc: subprocess.Popen[bytes], ready_file: Path, log_path: Path) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready_file.exists():
            url = ready_file.read_text(encoding="utf-8").strip()
            if url:
                return url
        if proc.poll() is not None:
            raise EmulatorStartError(
                f"graph emulator exited with code {proc.returncode} before it was ready; "
                f"log:\n{log_path.read_text(encoding='utf-8', errors='replace')}"
            )
        time.sleep(0.05)
    raise EmulatorStartError(
        f"graph emulator not ready after {READY_TIMEOUT_S:.0f} s; "
        f"log:\n{log_path.read_text(encoding='utf-8', errors='replace')}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextmanager
def running_emulator(
    users_path: str | Path | None = None, *, port: int = 0, host: str = "127.0.0.1", guests: int = 0
) -> Iterator[EmulatorHandle]:
    """Run ``python -m tools.graph_emulator`` until the ``with`` block ends."""
    workdir = Path(tempfile.mkdtemp(prefix="graph-emulator-"))
    ready_file = workdir / "ready"
    log_path = workdir / "emulator.log"
    users = Path(users_path) if users_path is not None else DEFAULT_USERS
    command = [
        sys.executable,
        "-m",
        "tools.graph_emulator",
        "--host",
        host,
        "--port",
        str(port),
        "--users",
        str(users.resolve()),
        "--ready-file",
        str(ready_file),
    ]
    if guests:
        command += ["--guests", str(guests)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        base_url = _wait_ready(proc, ready_file, log_path)
        control = EmulatorControl(base_url)
        try:
            yield EmulatorHandle(
                base_url=base_url, root_url=control.root_url, control=control, pid=proc.pid, log_path=log_path
            )
        finally:
            control.close()
    finally:
        _stop(proc)
        # The log has served its purpose: start failures already carry it in the exception.
        shutil.rmtree(workdir, ignore_errors=True)
