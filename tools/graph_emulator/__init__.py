"""Microsoft Graph emulator for local runs, integration tests and benchmarks.

Serves the few Graph routes the app uses (users, role assignments, invitations) over loopback
HTTP so the real ``msgraph-sdk`` client can talk to it, plus ``/_emulator/*`` controls for
fault injection, throttling, latency and a request journal.
"""

from .control import EmulatorControl
from .runner import EmulatorHandle, running_emulator

__all__ = ["EmulatorControl", "EmulatorHandle", "running_emulator"]
