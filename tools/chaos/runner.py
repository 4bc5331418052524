"""The chaos run: the real app under faults, through the local runner, and the figures that must hold.

Setup: Azurite with on-disk persistence (so it can be restarted), a fault proxy in front of its
table endpoint, the Graph emulator, and two local runner processes (``tools.devhost``) on one
request queue, each with the development-only short message lease. One run without faults gives
the baseline drain time; then the same number of requests meets:

- Graph chaos on every call: 429 (Retry-After 1 s), 503, dropped connections, and timeouts after
  Graph processed the write (the answer is held past the client's timeout);
- permanent errors for a share of the guests (403 or 404 on every read of them);
- one runner SIGKILLed while invitations are in flight (then started again, as a platform would);
- Azurite stopped and restarted once;
- a burst of storage errors on claim releases (the lease deletes);
- the sweeper invoked every few seconds, as its timer would.

The figures, each also an assertion: requests lost (not terminal), guests invited more than
once (an ``OutcomeUnknown`` guest counts as at most one), permanent failures recorded ``Failed``
with their code, requests split in two, and the drain time against the fault-free run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient

from tools.azurite import AzuriteEndpoints, free_port, start_azurite, stop_azurite
from tools.chaos.storage_proxy import StorageProxy
from tools.devhost import DevHostProcess, running_devhost
from tools.graph_emulator.control import EmulatorControl
from tools.graph_emulator.runner import running_emulator

REPO_ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"Succeeded", "Failed", "DryRunPassed"}
# What Graph answers for the guests it refuses, and the code their requests must end with.
PERMANENT = {403: "GraphPermissionMissing", 404: "UserNotFound"}
TIMEOUT_HOLD_MS = 10_000


@dataclass(frozen=True)
class Plan:
    """What one chaos run does; the defaults are the issue's fault mix."""

    requests: int = 1000
    seed: int = 1
    p429: float = 0.10
    p503: float = 0.05
    p_drop: float = 0.01
    p_timeout: float = 0.02
    permanent_share: float = 0.03
    pending_share: float = 0.10  # guests who never redeemed: an uncertain invite to them cannot be proven
    without_request_id_share: float = 0.20  # producers that send no requestId (derived ids)
    drain_timeout: float = 1800.0


@dataclass
class Figures:
    """What a run printed, and whether it holds."""

    label: str
    requests: int
    terminal: int = 0
    lost: int = 0
    split: int = 0
    invited_twice: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_code: dict[str, int] = field(default_factory=dict)
    permanent_expected: int = 0
    permanent_recorded: int = 0
    outcome_unknown: int = 0
    outcome_unknown_invited_twice: int = 0
    drain_seconds: float = 0.0
    baseline_seconds: float | None = None
    killed_mid_invitation: int = 0
    storage_burst_hits: int = 0
    azurite_restarted: bool = False
    events: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} request(s) lost (not terminal)")
        if self.split:
            found.append(f"{self.split} guest(s) with more than one request record")
        if self.invited_twice:
            found.append(f"{self.invited_twice} guest(s) invited more than once")
        if self.permanent_recorded != self.permanent_expected:
            found.append(
                f"{self.permanent_recorded} of {self.permanent_expected} permanent failures recorded with their code"
            )
        return found

    def chaos_problems(self) -> list[str]:
        """The faults must really have happened, or the figures prove nothing."""
        found = self.problems()
        if self.killed_mid_invitation < 1:
            found.append("no runner was killed while it held a claim in the middle of an invitation")
        if not self.azurite_restarted:
            found.append("Azurite was not restarted")
        if self.storage_burst_hits < 1:
            found.append("the storage burst met no claim release")
        return found

    def report(self) -> str:
        ratio = f"{self.drain_seconds / self.baseline_seconds:.1f}x" if self.baseline_seconds else "-"
        permanent = (
            f"{self.permanent_recorded}/{self.permanent_expected}"
            f" ({100 * self.permanent_recorded / self.permanent_expected:.0f}%)"
            if self.permanent_expected
            else "0/0"
        )
        lines = [
            f"== {self.label}: {self.requests} requests",
            f"requests lost (not terminal)      {self.lost}",
            f"guests invited more than once     {self.invited_twice}",
            f"permanent failures with code      {permanent}",
            f"requests split in two             {self.split}",
            f"OutcomeUnknown (invited <= once)  {self.outcome_unknown} ({self.outcome_unknown_invited_twice} twice)",
            f"statuses                          {json.dumps(self.by_status, sort_keys=True)}",
            f"failure codes                     {json.dumps(self.by_code, sort_keys=True)}",
            f"time to drain                     {self.drain_seconds:.0f} s"
            + (f" (fault-free {self.baseline_seconds:.0f} s, {ratio})" if self.baseline_seconds else ""),
        ]
        if self.events:
            lines.append("faults                            " + "; ".join(self.events))
        return "\n".join(lines)


def guest(index: int, *, pending: bool) -> dict[str, Any]:
    uid = f"c0a05000-{index // 10000:04x}-4000-8000-{index % 10000:012d}"
    return {
        "id": uid,
        "displayName": f"Chaos Guest {index}",
        "userPrincipalName": f"guest{index}_chaos.example#EXT#@fabrikam.onmicrosoft.com",
        "mail": f"guest{index}@chaos.example",
        "otherMails": [f"guest{index}@chaos.example"],
        "userType": "Guest",
        "externalUserState": "PendingAcceptance" if pending else "Accepted",
        "externalUserStateChangeDateTime": "2024-03-01T10:00:00Z",
        "creationType": "Invitation",
        "proxyAddresses": [f"SMTP:guest{index}@chaos.example"],
    }


def app_env(connection_string: str, graph_base_url: str, run: str, *, sweep_grace: int = 20) -> dict[str, str]:
    """App settings for both runners: the run's own queues and table, short timeouts for speed."""
    return {
        "AzureWebJobsStorage": connection_string,
        "GRAPH_BASE_URL": graph_base_url,
        "RESET_REQUEST_QUEUE": f"chaos-{run}",
        "RESET_RESULT_QUEUE": f"chaos-{run}-results",
        "RESET_CALLBACK_QUEUE": f"chaos-{run}-callbacks",
        "RESET_STATUS_TABLE": f"Chaos{run}",
        "RESET_STATE_TABLE": f"ChaosState{run}",
        "GRAPH_RETRY_DELAYS": "0.2,0.5,1,2",
        "GRAPH_MAX_ATTEMPTS": "5",
        # App-wide (both runners share it through the state table), as in Azure.
        "GRAPH_WRITES_PER_SECOND": "50",
        # The invitation pace is shown by its own tests; here it would only stretch the run.
        "INVITATIONS_PER_MINUTE": "6000",
        # Short enough to keep the run brisk, long enough that a loaded machine does not time out
        # fault-free calls; the emulator holds a chaos timeout's answer past it (TIMEOUT_HOLD_MS).
        "GRAPH_TIMEOUT_SECONDS": "8",
        "READBACK_WINDOW_SECONDS": "15",
        "DELIVERY_DEADLINE_SECONDS": "90",
        "SWEEP_GRACE_SECONDS": str(sweep_grace),
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:02",
        "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "5",
        "PYTHONUNBUFFERED": "1",
    }


class Stack:
    """Azurite on disk (restartable), the table proxy, and the emulator, for one chaos session."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = (free_port(), free_port(), free_port())
        self.location = workdir / "azurite"
        self.location.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "azurite.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoints: AzuriteEndpoints | None = None
        self.proxy: StorageProxy | None = None

    def start_azurite(self) -> None:
        blob, queue, table = self.ports
        self.proc, self.endpoints = start_azurite(
            blob_port=blob, queue_port=queue, table_port=table, log_path=self.log, location=self.location
        )

    def stop_azurite(self) -> None:
        if self.proc is not None:
            stop_azurite(self.proc)
            self.proc = None

    @property
    def direct(self) -> str:
        assert self.endpoints is not None
        return self.endpoints.connection_string

    @property
    def proxied(self) -> str:
        """The connection string the app gets: tables through the fault proxy, queues direct."""
        assert self.proxy is not None
        table = f"127.0.0.1:{self.ports[2]}/"
        return self.direct.replace(table, f"127.0.0.1:{self.proxy.port}/")


def _log_tail(handle: DevHostProcess, lines: int = 40) -> str:
    return "\n".join(handle.log_text().splitlines()[-lines:])


async def _statuses(connection_string: str, table_name: str) -> dict[str, dict[str, Any]]:
    """Every status record's fields the figures need, keyed by requestId."""
    found: dict[str, dict[str, Any]] = {}
    async with TableClient.from_connection_string(connection_string, table_name) as table:
        with contextlib.suppress(Exception):  # the table may not exist yet
            async for entity in table.query_entities(
                "RowKey eq @row", parameters={"row": "status"}, select=["PartitionKey", "Status", "UserId", "ErrorCode"]
            ):
                found[entity["PartitionKey"]] = dict(entity)
    return found


async def _enqueue(connection_string: str, queue_name: str, bodies: list[str]) -> None:
    async with QueueClient.from_connection_string(connection_string, queue_name) as queue:
        with contextlib.suppress(Exception):
            await queue.create_queue()
        gate = asyncio.Semaphore(32)

        async def send(text: str) -> None:
            async with gate:
                await queue.send_message(text)

        await asyncio.gather(*(send(b) for b in bodies))


class Run:
    """One run (baseline or chaos) over its own queues and table."""

    def __init__(self, stack: Stack, control: EmulatorControl, plan: Plan, *, chaos: bool) -> None:
        self.stack = stack
        self.control = control
        self.plan = plan
        self.chaos = chaos
        self.name = ("c" if chaos else "b") + uuid.uuid4().hex[:8]
        self.rng = random.Random(plan.seed)
        self.env = app_env(stack.proxied, control.base_url, self.name)
        self.figures = Figures("chaos" if chaos else "fault-free", plan.requests)
        self.users: list[dict[str, Any]] = []
        self.permanent: dict[str, str] = {}
        self.bodies: list[str] = []

    def prepare(self) -> None:
        """Guests, their requests, and (chaos) the permanent faults and the chaos mix."""
        self.control.reset()
        n = self.plan.requests
        self.users = [guest(i, pending=self.rng.random() < self.plan.pending_share) for i in range(n)]
        self.control.set_users(self.users)
        for user in self.users:
            body: dict[str, Any] = {"userId": user["id"], "ticketId": f"CHAOS-{user['id'][-6:]}"}
            if self.rng.random() >= self.plan.without_request_id_share:
                body["requestId"] = f"{self.name}-{user['id'][-12:]}"
            self.bodies.append(json.dumps(body))
        if not self.chaos:
            return
        chosen = self.rng.sample(self.users, max(1, round(n * self.plan.permanent_share)))
        for index, user in enumerate(chosen):
            status = 403 if index % 2 == 0 else 404
            self.control.add_fault(method="GET", path=f"^/users/{user['id']}$", status=status, times=None)
            self.permanent[user["id"]] = PERMANENT[status]
        self.control.set_chaos(
            p429=self.plan.p429,
            p503=self.plan.p503,
            p_drop=self.plan.p_drop,
            p_timeout=self.plan.p_timeout,
            timeout_ms=TIMEOUT_HOLD_MS,
            retry_after=1,
            seed=self.plan.seed,
        )

    @contextlib.contextmanager
    def runner(self, index: int) -> Iterator[DevHostProcess]:
        with running_devhost(REPO_ROOT, env=self.env, max_polling_interval=0.5, message_lease=15, timeout=60) as handle:
            yield handle

    async def terminal_count(self) -> int:
        records = await _statuses(self.stack.direct, self.env["RESET_STATUS_TABLE"])
        return sum(1 for r in records.values() if r.get("Status") in TERMINAL)

    async def execute(self, baseline: float | None = None) -> Figures:
        self.prepare()
        await _enqueue(self.stack.direct, self.env["RESET_REQUEST_QUEUE"], self.bodies)
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            runners = [stack.enter_context(self.runner(i)) for i in range(2)]
            if self.chaos:
                await self._misbehave(runners, stack)
            await self._drain(started, runners)
            self.figures.drain_seconds = time.monotonic() - started
        self.figures.baseline_seconds = baseline
        await self._count()
        return self.figures

    async def _wait_for(self, share: float, runners: list[DevHostProcess], deadline: float) -> None:
        wanted = int(self.plan.requests * share)
        while await self.terminal_count() < wanted:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {wanted} requests finished in time:\n{_log_tail(runners[-1])}")
            await self._sweep(runners)
            await asyncio.sleep(2)

    _last_sweep = 0.0

    async def _sweep(self, runners: list[DevHostProcess]) -> None:
        """What the sweeper's timer would do, every few seconds (the devhost schedules no timers)."""
        if time.monotonic() - self._last_sweep < 10:
            return
        self._last_sweep = time.monotonic()
        async with httpx.AsyncClient(timeout=5) as client:
            for handle in runners:
                with contextlib.suppress(httpx.HTTPError):
                    await client.post(f"{handle.base_url}/admin/functions/sweep_stalled_requests", json={})
                    return

    async def _misbehave(self, runners: list[DevHostProcess], stack: contextlib.ExitStack) -> None:
        deadline = time.monotonic() + self.plan.drain_timeout
        await self._wait_for(0.10, runners, deadline)
        await self._kill_mid_invitation(runners, stack)
        await self._wait_for(0.40, runners, deadline)
        self.stack.stop_azurite()
        self.figures.events.append("Azurite stopped")
        await asyncio.sleep(3)
        self.stack.start_azurite()
        self.figures.azurite_restarted = True
        self.figures.events.append("Azurite restarted (3 s down)")
        await self._wait_for(0.60, runners, deadline)
        assert self.stack.proxy is not None
        # A claim is released by a delete of its entity, after the outcome is stored or on the way
        # out of a failure: every release fails for 15 s.
        burst = self.stack.proxy.add_fault(method="DELETE", path=r"RowKey=(%27|')lease", status=503, seconds=15)
        await asyncio.sleep(15)
        self.figures.storage_burst_hits = burst.hits
        self.figures.events.append(f"15 s of 503 on claim releases ({self.figures.storage_burst_hits} failed calls)")

    async def _kill_mid_invitation(self, runners: list[DevHostProcess], stack: contextlib.ExitStack) -> None:
        """Slow Graph down so invitations are in flight, SIGKILL runner 0 while it holds claims mid-invitation."""
        victim = runners[0]
        held: list[str] = []
        self.control.set_latency(1500)
        try:
            for _ in range(40):
                await asyncio.sleep(0.5)
                held = await self._claims_mid_invitation(victim.pid)
                if held:
                    break
            os.kill(victim.pid, signal.SIGKILL)
        finally:
            self.control.set_latency(0)
        self.figures.killed_mid_invitation = len(held)
        self.figures.events.append(f"runner {victim.pid} SIGKILLed holding {len(held)} claim(s) mid-invitation")
        await asyncio.sleep(5)
        runners[0] = stack.enter_context(self.runner(0))
        self.figures.events.append("runner started again")

    async def _claims_mid_invitation(self, pid: int) -> list[str]:
        """Requests in phase Inviting whose claim is held by process ``pid``."""
        marker = f":{pid}:"
        held: list[str] = []
        async with TableClient.from_connection_string(self.stack.direct, self.env["RESET_STATUS_TABLE"]) as table:
            leases = [
                e["PartitionKey"]
                async for e in table.query_entities("RowKey eq @row", parameters={"row": "lease"})
                if marker in str(e.get("Owner"))
            ]
            for request_id in leases:
                with contextlib.suppress(Exception):
                    record = await table.get_entity(request_id, "status")
                    if record.get("Phase") == "Inviting":
                        held.append(request_id)
        return held

    async def _drain(self, started: float, runners: list[DevHostProcess]) -> None:
        deadline = started + self.plan.drain_timeout
        while True:
            done = await self.terminal_count()
            if done >= self.plan.requests:
                return
            if time.monotonic() > deadline:
                return  # the figures will say what was lost
            await self._sweep(runners)
            await asyncio.sleep(2)

    async def _count(self) -> None:
        figures = self.figures
        records = await _statuses(self.stack.direct, self.env["RESET_STATUS_TABLE"])
        per_user: dict[str, list[dict[str, Any]]] = {}
        for record in records.values():
            per_user.setdefault(str(record.get("UserId")), []).append(record)
        invitations = {u["id"]: int(u.get("_invitationCount") or 0) for u in self.control.users()}
        statuses: Counter[str] = Counter()
        codes: Counter[str] = Counter()
        for user in self.users:
            mine = per_user.get(user["id"], [])
            figures.split += len(mine) > 1
            final = next((r for r in mine if r.get("Status") in TERMINAL), None)
            if final is None:
                figures.lost += 1
                statuses["(lost)"] += 1
                continue
            figures.terminal += 1
            statuses[str(final["Status"])] += 1
            code = final.get("ErrorCode")
            if final["Status"] == "Failed":
                codes[str(code)] += 1
            if user["id"] in self.permanent:
                figures.permanent_expected += 1
                figures.permanent_recorded += final["Status"] == "Failed" and code == self.permanent[user["id"]]
            if code == "OutcomeUnknown":
                figures.outcome_unknown += 1
                figures.outcome_unknown_invited_twice += invitations.get(user["id"], 0) > 1
        figures.invited_twice = sum(1 for u in self.users if invitations.get(u["id"], 0) > 1)
        figures.by_status = dict(statuses)
        figures.by_code = dict(codes)


async def run_chaos(plan: Plan, *, keep: bool = False) -> tuple[Figures, Figures]:
    """The fault-free baseline, then the chaos run; returns both sets of figures."""
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    stack = Stack(workdir)
    stack.start_azurite()
    stack.proxy = StorageProxy(stack.ports[2])
    stack.proxy.start_in_thread()
    try:
        with running_emulator() as emulator:
            baseline = await Run(stack, emulator.control, plan, chaos=False).execute()
            chaos = await Run(stack, emulator.control, plan, chaos=True).execute(baseline.drain_seconds)
            return baseline, chaos
    finally:
        stack.proxy.stop_thread()
        stack.stop_azurite()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
