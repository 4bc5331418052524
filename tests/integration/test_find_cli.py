"""guest-reset find and submit --dry-run against the Graph emulator (and Azurite for the queue)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from azure.storage.queue.aio import QueueClient

from tests.integration.support import App
from tools.cli import main as cli

MOVE = "fabrikam.net=fabrikam.com"


async def run(*argv: str) -> tuple[int, Any, str]:
    """Run the CLI in this event loop; returns (exit code, parsed JSON or text, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = await cli.run(list(argv), stdout=out, stderr=err)
    text = out.getvalue()
    return code, (json.loads(text) if "--json" in argv and text else text), err.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def partner(index: int, domain: str, **overrides: Any) -> dict[str, Any]:
    mail = f"p{index}@{domain}"
    user = {
        "id": f"e0000000-0000-4000-8000-{index:012d}",
        "userPrincipalName": f"p{index}_{domain}#EXT#@fabrikam.onmicrosoft.com",
        "mail": mail,
        "otherMails": [mail],
        "userType": "Guest",
        "externalUserState": "Accepted",
        "identities": [{"signInType": "federated", "issuer": "ExternalAzureAD"}],
    }
    user.update(overrides)
    return user


async def test_find_unmanaged_lists_exactly_the_guests_of_viral_tenants(app: App, tmp_path: Path) -> None:
    """Every ExternalAzureAD guest whose mail domain is unmanaged, nobody else; one anonymous lookup per domain."""
    app.graph.generate_tenant(400, seed=3, domains=30)
    viral = {domain for domain, realm in app.graph.realms().items() if realm["isViral"]}
    guests = [u for u in app.graph.users() if u.get("userType") == "Guest"]

    def entra(user: dict[str, Any]) -> bool:
        return any(i.get("issuer") == "ExternalAzureAD" for i in user.get("identities") or [])

    expected = {u["id"] for u in guests if u.get("mail") and entra(u) and u["mail"].split("@")[1] in viral}
    domains = {u["mail"].split("@")[1] for u in guests if u.get("mail") and entra(u)}
    output = tmp_path / "unmanaged.csv"
    code, body, _ = await run("find", "--unmanaged", "-o", str(output), "--json")
    assert code == 0 and body["matched"] == len(expected) > 10
    assert {row["userId"] for row in read_csv(output)} == expected
    assert {row["reason"] for row in read_csv(output)} == {"UnmanagedHomeTenant"}
    lookups = app.graph.realm_lookups()
    assert len(lookups) == body["realmLookups"] == len(domains)
    assert all(entry["authorization"] is None and entry["apiVersion"] == "2.1" for entry in lookups)
    listings = [e for e in app.graph.journal(method="GET") if e["path"] == "/users"]
    assert listings and all(e["consistencyLevel"] is None and "$count" not in e["query"] for e in listings)
    assert listings[0]["query"]["$filter"] == "userType eq 'Guest'" and listings[0]["query"]["$top"] == "999"


async def test_a_failing_realm_lookup_keeps_its_guests_out(app: App, tmp_path: Path) -> None:
    """The login host failing for a viral domain: its guests are not reported unmanaged, and the run says so."""
    app.graph.set_realms({"litware.example": {"status": 503}})
    output = tmp_path / "unmanaged.csv"
    code, body, _ = await run("find", "--unmanaged", "-o", str(output), "--json")
    assert code == 0 and body["realmFailures"] == 1 and body["matched"] == 0 and read_csv(output) == []


async def test_move_domain_fills_new_email_and_sets_taken_addresses_aside(app: App, tmp_path: Path) -> None:
    """Guests of the old domain get newEmail in the new one; addresses someone else owns go to the conflicts file."""
    movers = [partner(i, "fabrikam.net") for i in range(1, 6)]
    owner = partner(90, "fabrikam.com", mail="p2@fabrikam.com", otherMails=[], userType="Member")
    app.graph.set_users([*app.graph.users(), *movers, owner, partner(7, "elsewhere.example")])
    output = tmp_path / "moves.csv"
    code, text, _ = await run("find", "--move-domain", MOVE, "-o", str(output))
    assert code == 0 and "found 4: DomainMove 4" in text and "conflicts: 1 new address" in text
    rows = read_csv(output)
    assert [(r["userId"][-1], r["newEmail"]) for r in rows] == [
        ("1", "p1@fabrikam.com"),
        ("3", "p3@fabrikam.com"),
        ("4", "p4@fabrikam.com"),
        ("5", "p5@fabrikam.com"),
    ]
    [conflict] = read_csv(tmp_path / "moves.conflicts.csv")
    assert conflict["newEmail"] == "p2@fabrikam.com" and conflict["conflictOwner"] == owner["id"]
    [listing] = [
        e for e in app.graph.journal(method="GET") if e["path"] == "/users" and "endsWith" in e["query"]["$filter"]
    ]
    assert listing["consistencyLevel"] == "eventual" and listing["query"]["$count"] == "true"


async def test_dry_run_submission_has_ids_of_its_own(app: App, tmp_path: Path) -> None:
    """submit --dry-run queues every row as a dry run; submitting the same file afterwards sends it for real."""
    app.graph.set_users([*app.graph.users(), *(partner(i, "fabrikam.net") for i in range(1, 4))])
    output = tmp_path / "moves.csv"
    await run("find", "--move-domain", MOVE, "-o", str(output))
    code, dry, _ = await run("submit", "--dry-run", str(output), "--json")
    assert code == 0 and dry["dryRun"] is True and dry["sent"] == 3
    assert dry["receipt"].endswith("moves.csv.dry-run.receipt.json")
    code, real, _ = await run("submit", str(output), "--json")
    assert code == 0 and real["sent"] == 3 and real["alreadySent"] == 0
    async with QueueClient.from_connection_string(app.connection_string, app.settings.request_queue) as queue:
        messages = [json.loads(m.content) async for m in queue.receive_messages(max_messages=32)]
    dry_ids = sorted(m["requestId"] for m in messages if m.get("dryRun"))
    real_ids = sorted(m["requestId"] for m in messages if not m.get("dryRun"))
    assert dry_ids == [f"bulk-{dry['fileId']}-dry-{n}" for n in (1, 2, 3)]
    assert real_ids == [f"bulk-{real['fileId']}-{n}" for n in (1, 2, 3)]
    assert {m["newEmail"] for m in messages} == {"p1@fabrikam.com", "p2@fabrikam.com", "p3@fabrikam.com"}
