"""Start and stop a fresh Azurite (the npm package pinned in package.json).

Tests, the demo and the benchmarks each get their own in-memory instance on free ports, because
Azurite slows down sharply once it has carried many messages. With ``location`` it keeps its data
on disk instead (``--inMemoryPersistence`` and ``--location`` exclude each other), so it can be
stopped and started again on the same ports with its queues and tables intact (the chaos suite).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented in the Azurite README).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteError(RuntimeError):
    """Azurite is not installed or did not start."""


@dataclass(frozen=True)
class AzuriteEndpoints:
    """Ports of a running Azurite and the connection string that reaches them."""

    blob_port: int
    queue_port: int
    table_port: int
    pid: int
    # time.monotonic() when it listened: Azurite's queue garbage collector runs then and every
    # 60 s after, and stalls it for seconds once thousands of messages were deleted (it is
    # quadratic in them: 1.2 s for 1,200, 5.3 s for 2,400); a benchmark says when one fell in its window.
    started: float = 0.0

    @property
    def connection_string(self) -> str:
        host = "http://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={host}:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint={host}:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint={host}:{self.table_port}/{ACCOUNT};"
        )


def azurite_binary() -> Path:
    """Return the locally installed Azurite launcher, or explain how to install it."""
    local = REPO_ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return local
    found = shutil.which("azurite")
    if found:
        return Path(found)
    raise AzuriteError("Azurite is not installed: run `npm ci` in the repository root")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_azurite(
    *,
    blob_port: int = 0,
    queue_port: int = 0,
    table_port: int = 0,
    log_path: Path | None = None,
    location: Path | None = None,
) -> tuple[subprocess.Popen[bytes], AzuriteEndpoints]:
    """Launch Azurite on the given ports (0 picks a free one) and wait until it listens.

    In memory by default; with ``location`` its data lives in that folder and survives a restart.
    """
    ports = [p or free_port() for p in (blob_port, queue_port, table_port)]
    log = open(log_path or Path(tempfile.mkstemp(prefix="azurite-", suffix=".log")[1]), "ab")  # noqa: SIM115
    persistence = ["--location", str(location)] if location is not None else ["--inMemoryPersistence"]
    cmd = [
        str(azurite_binary()),
        "--silent",
        *persistence,
        # The Python storage SDKs send API versions newer than Azurite 3.35 knows.
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
        "--blobPort",
        str(ports[0]),
        "--queuePort",
        str(ports[1]),
        "--tablePort",
        str(ports[2]),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    if not all(_wait_for_port(p, deadline) for p in ports):
        stop_azurite(proc)
        raise AzuriteError(f"Azurite did not listen on {ports} within 30 s; see {log.name}")
    return proc, AzuriteEndpoints(ports[0], ports[1], ports[2], proc.pid, time.monotonic())


def stop_azurite(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextmanager
def running_azurite(*, blob_port: int = 0, queue_port: int = 0, table_port: int = 0) -> Iterator[AzuriteEndpoints]:
    """A fresh in-memory Azurite for the duration of the block."""
    proc, endpoints = start_azurite(blob_port=blob_port, queue_port=queue_port, table_port=table_port)
    try:
        yield endpoints
    finally:
        stop_azurite(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a fresh in-memory Azurite until interrupted.")
    parser.add_argument("--blob-port", type=int, default=10000)
    parser.add_argument("--queue-port", type=int, default=10001)
    parser.add_argument("--table-port", type=int, default=10002)
    args = parser.parse_args(argv)
    # Azurite runs in its own session (start_new_session), so a SIGTERM sent to this process alone
    # would otherwise end it without the cleanup below and leave node listening on the ports.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    proc, endpoints = start_azurite(blob_port=args.blob_port, queue_port=args.queue_port, table_port=args.table_port)
    print(endpoints.connection_string, flush=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_azurite(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
