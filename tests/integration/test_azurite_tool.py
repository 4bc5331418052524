"""`python -m tools.azurite` (docs/development.md) stops its Azurite however it is stopped."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from tools.azurite import REPO_ROOT, free_port


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_azurite_and_frees_its_ports() -> None:
    ports = [free_port() for _ in range(3)]
    args = ["--blob-port", str(ports[0]), "--queue-port", str(ports[1]), "--table-port", str(ports[2])]
    tool = subprocess.Popen(
        [sys.executable, "-m", "tools.azurite", *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert tool.stdout is not None
        assert "QueueEndpoint=" in tool.stdout.readline()  # printed once Azurite listens
        assert all(listening(p) for p in ports)

        tool.send_signal(signal.SIGTERM)  # what a process manager or `kill` sends, to this process alone
        assert tool.wait(timeout=15) == 0

        deadline = time.monotonic() + 5
        while any(listening(p) for p in ports) and time.monotonic() < deadline:
            time.sleep(0.1)
        still = [p for p in ports if listening(p)]
        print(f"ports still listening after SIGTERM: {still}")
        assert still == []
    finally:
        if tool.poll() is None:
            tool.kill()
