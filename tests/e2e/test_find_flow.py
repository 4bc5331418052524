"""find → submit --dry-run → submit → status --wait → report, against the real app run by the local runner.

A 2,000-guest tenant where a partner renamed its domain (fabrikam.net → fabrikam.com): one
invitation goes out per moved guest, to the new address; the moved addresses that another user
already owns are reported and never sent.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.platform.settings import reset_settings
from tests.factories import isolated_env
from tools.azurite import AzuriteEndpoints
from tools.cli import main as cli
from tools.devhost import running_devhost
from tools.graph_emulator.runner import EmulatorHandle

REPO_ROOT = Path(__file__).resolve().parents[2]
MOVERS = 30
TAKEN = (4, 11, 23)  # movers whose new address another user already owns


def mover(index: int) -> dict[str, Any]:
    mail = f"worker.{index:02d}@fabrikam.net"
    return {
        "id": f"f0000000-0000-4000-8000-{index:012d}",
        "userPrincipalName": f"worker.{index:02d}_fabrikam.net#EXT#@fabrikam.onmicrosoft.com",
        "mail": mail,
        "otherMails": [mail],
        "proxyAddresses": [f"SMTP:{mail}"],
        "userType": "Guest",
        "externalUserState": "Accepted",
        "creationType": "Invitation",
        "identities": [{"signInType": "federated", "issuer": "ExternalAzureAD", "issuerAssignedId": None}],
    }


def owner(index: int) -> dict[str, Any]:
    """A member of the new domain who already has the address the mover would get."""
    return {
        "id": f"f1000000-0000-4000-8000-{index:012d}",
        "userPrincipalName": f"w{index}@fabrikam.com",
        "mail": f"worker.{index:02d}@fabrikam.com",
        "userType": "Member",
    }


@pytest.fixture
def tenant(
    azurite: AzuriteEndpoints, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EmulatorHandle]:
    """2,000 guests (generated, plus the partner's), the app running, and the CLI pointed at the same storage."""
    control = emulator.control
    control.reset()  # the session's emulator: earlier tests' invitations must not count here
    control.generate_tenant(2000 - MOVERS, seed=5)
    control.set_users([*control.users(), *(mover(i) for i in range(MOVERS)), *(owner(i) for i in TAKEN)])
    env = isolated_env(azurite.connection_string, emulator.base_url, GRAPH_WRITES_PER_SECOND="100")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    with running_devhost(REPO_ROOT, env=env, max_polling_interval=0.2):
        yield emulator
    control.reset()
    reset_settings()


async def run(*argv: str) -> Any:
    out, err = io.StringIO(), io.StringIO()
    code = await cli.run([*argv, "--json", "--no-progress"], stdout=out, stderr=err)
    assert code == 0, (argv, out.getvalue(), err.getvalue())
    return json.loads(out.getvalue())


async def test_partner_domain_move_from_find_to_report(tenant: EmulatorHandle, tmp_path: Path) -> None:
    """One invitation per moved guest at its new address; taken addresses reported, never sent; the report says so."""
    control = tenant.control
    moves = tmp_path / "moves.csv"
    found = await run("find", "--move-domain", "fabrikam.net=fabrikam.com", "-o", str(moves))
    assert found["matched"] == MOVERS - len(TAKEN) and found["conflicts"] == len(TAKEN)
    conflicts = list(csv.DictReader(io.StringIO((tmp_path / "moves.conflicts.csv").read_text())))
    assert sorted(c["newEmail"] for c in conflicts) == [f"worker.{i:02d}@fabrikam.com" for i in TAKEN]

    dry = await run("submit", "--dry-run", str(moves))
    waited = await run("status", dry["receipt"], "--wait", "--interval", "0.5", "--timeout", "120")
    assert waited["byStatus"] == {"DryRunPassed": MOVERS - len(TAKEN)}
    assert control.invitations() == [] and not control.journal(method="PATCH")

    real = await run("submit", str(moves))
    assert real["sent"] == MOVERS - len(TAKEN) and real["alreadySent"] == 0
    waited = await run("status", real["receipt"], "--wait", "--interval", "0.5", "--timeout", "120")
    assert waited["byStatus"] == {"Succeeded": MOVERS - len(TAKEN)}

    invited = Counter(e["body"]["invitedUser"]["id"] for e in control.invitations())
    moved = {mover(i)["id"] for i in range(MOVERS) if i not in TAKEN}
    assert invited == dict.fromkeys(moved, 1)
    for i in range(MOVERS):
        user = control.user(mover(i)["id"])
        expected = f"worker.{i:02d}@fabrikam.{'net' if i in TAKEN else 'com'}"
        assert user["mail"] == expected and user["_invitationCount"] == (0 if i in TAKEN else 1)

    report = tmp_path / "report.csv"
    exported = await run("report", "--since", "1h", "--output", str(report))
    rows = list(csv.DictReader(io.StringIO(report.read_text())))
    assert exported["rows"] == len(rows) == 2 * (MOVERS - len(TAKEN))
    assert Counter(r["status"] for r in rows) == {"DryRunPassed": len(moved), "Succeeded": len(moved)}
