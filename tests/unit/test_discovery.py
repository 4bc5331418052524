"""Guest discovery over an in-memory directory: what Graph is asked, who is found, and the file it writes."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.bulk.directory import DirectoryGuest, GuestPage, GuestQuery, HomeRealm
from shared.bulk.discovery import (
    QUEUED_PAGES,
    CsvSink,
    DomainMove,
    FindCriteria,
    FindSummary,
    find_guests,
)
from shared.bulk.reader import BulkCsvReader
from shared.platform.errors import UsageError


def guest(index: int, domain: str = "partner.example", **overrides: Any) -> DirectoryGuest:
    mail = overrides.pop("mail", f"g{index}@{domain}")
    values: dict[str, Any] = {
        "id": f"00000000-0000-4000-8000-{index:012d}",
        "user_principal_name": f"g{index}_{domain}#EXT#@t.onmicrosoft.com",
        "mail": mail,
        "other_mails": (mail,) if mail else (),
        "user_type": "Guest",
        "external_user_state": "Accepted",
        "state_changed": "2024-03-01T00:00:00Z",
        "created": "2024-02-01T00:00:00Z",
        "issuers": ("ExternalAzureAD",),
    }
    values.update(overrides)
    return DirectoryGuest(**values)


class MemoryDirectory:
    """``GuestDirectory`` over a list: pages of ``page_size``, realms by domain, owners by address."""

    def __init__(
        self,
        guests: list[DirectoryGuest],
        *,
        page_size: int = 3,
        realms: dict[str, HomeRealm] | None = None,
        owners: dict[str, list[str]] | None = None,
    ) -> None:
        self.guests = guests
        self.page_size = page_size
        self.realms = realms or {}
        self.owners = owners or {}
        self.queries: list[GuestQuery] = []
        self.pages_served = 0
        self.realm_calls: list[str] = []
        self.realm_gate: asyncio.Event | None = None
        self.owner_gate: asyncio.Event | None = None

    async def guest_pages(self, query: GuestQuery) -> AsyncIterator[GuestPage]:
        self.queries.append(query)
        for start in range(0, len(self.guests), self.page_size):
            self.pages_served += 1
            yield GuestPage(self.guests[start : start + self.page_size])

    async def read_guest(self, user_id: str) -> DirectoryGuest | None:
        return next((g for g in self.guests if g.id == user_id), None)

    async def user_id_by_address(self, address: str) -> str | None:
        return next((g.id for g in self.guests if address.lower() in {a.lower() for a in g.addresses}), None)

    async def owners_of(self, address: str) -> list[str]:
        if self.owner_gate is not None:
            await self.owner_gate.wait()
        return self.owners.get(address.lower(), [])

    async def home_realm(self, address: str) -> HomeRealm:
        domain = address.rsplit("@", 1)[1]
        self.realm_calls.append(domain)
        if self.realm_gate is not None:
            await self.realm_gate.wait()
        return self.realms.get(domain, HomeRealm(domain, "Unknown", False))

    async def aclose(self) -> None:
        return None


async def run(directory: MemoryDirectory, criteria: FindCriteria) -> tuple[FindSummary, str, str]:
    found, conflicts = io.StringIO(), io.StringIO()
    summary = await find_guests(directory, criteria, CsvSink(found, conflicts))
    return summary, found.getvalue(), conflicts.getvalue()


def rows(text: str) -> list[list[str]]:
    return [line.split(",") for line in text.splitlines()[1:]]


def test_plain_criteria_ask_graph_without_advanced_query() -> None:
    """userType and createdDateTime ranges are default filters: no ConsistencyLevel, no $count."""
    query = FindCriteria(states=("PendingAcceptance",), created_before=datetime(2025, 1, 31, tzinfo=UTC)).query()
    assert query == GuestQuery("userType eq 'Guest' and createdDateTime le 2025-01-31T00:00:00Z", advanced=False)


def test_domain_criteria_are_advanced_queries_with_ends_with() -> None:
    """A domain filter is endsWith on mail and otherMails, which Graph serves only as an advanced query."""
    query = FindCriteria(domains=("fabrikam.net",)).query()
    assert query.advanced
    assert query.odata_filter == (
        "userType eq 'Guest' and (endsWith(mail,'@fabrikam.net') or otherMails/any(m:endsWith(m,'@fabrikam.net')))"
    )
    move = FindCriteria(moves=(DomainMove.parse("fabrikam.net=fabrikam.com"),)).query()
    assert move.odata_filter == "userType eq 'Guest' and (endsWith(mail,'@fabrikam.net'))" and move.advanced


@pytest.mark.parametrize("text", ["fabrikam.net", "a=a.example", "x=", "fabrikam.net=not a domain"])
def test_bad_domain_moves_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        DomainMove.parse(text)


async def test_a_run_without_criteria_is_refused() -> None:
    """Listing every guest must be asked for with --all-guests; nothing is read otherwise."""
    directory = MemoryDirectory([guest(1)])
    with pytest.raises(UsageError, match="at least one criterion"):
        await run(directory, FindCriteria())
    assert directory.queries == []


async def test_state_age_and_issuer_are_matched_on_the_page() -> None:
    """Pending invitations older than a date from a given issuer: only those rows, with their facts."""
    old = datetime(2024, 1, 1, tzinfo=UTC)
    guests = [
        guest(1, external_user_state="PendingAcceptance", state_changed="2023-06-01T00:00:00Z"),
        guest(2, external_user_state="PendingAcceptance", state_changed="2024-06-01T00:00:00Z"),
        guest(3, external_user_state="Accepted", state_changed="2023-06-01T00:00:00Z"),
        guest(4, external_user_state="PendingAcceptance", state_changed=None),
        guest(
            5,
            external_user_state="PendingAcceptance",
            state_changed="2023-06-01T00:00:00Z",
            issuers=("mail",),
        ),
        guest(6, user_type="Member", external_user_state="PendingAcceptance"),
    ]
    criteria = FindCriteria(states=("PendingAcceptance",), state_changed_before=old, issuers=("externalazuread",))
    summary, found, _ = await run(MemoryDirectory(guests), criteria)
    assert [r[0][-1] for r in rows(found)] == ["1"]
    assert rows(found)[0][2] == "PendingAcceptance+StateUnchangedSince+Issuer"
    assert summary.read == 6 and summary.matched == 1 and summary.not_guests == 1


async def test_unmanaged_guests_are_found_with_one_realm_lookup_per_domain() -> None:
    """Only ExternalAzureAD guests of viral domains are listed; each domain is asked about once."""
    viral = HomeRealm("viral.example", "Managed", True)
    guests = [guest(i, "viral.example" if i % 2 else f"d{i % 4}.example") for i in range(1, 13)]
    guests += [guest(20, "viral.example", issuers=("MicrosoftAccount",)), guest(21, "viral.example", mail=None)]
    directory = MemoryDirectory(guests, realms={"viral.example": viral})
    summary, found, _ = await run(directory, FindCriteria(unmanaged=True))
    assert sorted(int(r[0][-2:]) for r in rows(found)) == [1, 3, 5, 7, 9, 11]
    assert {r[8] for r in rows(found)} == {"Managed"} and {r[9] for r in rows(found)} == {"true"}
    assert sorted(directory.realm_calls) == ["d0.example", "d2.example", "viral.example"]
    assert summary.realm_lookups == 3 and summary.by_reason == {"UnmanagedHomeTenant": 6}


async def test_a_failed_realm_lookup_never_reports_a_guest_unmanaged() -> None:
    """Fail-safe: no answer from the login host means the guest is not listed, and the run says so."""
    broken = HomeRealm("viral.example", "Unknown", False, "the login host answered HTTP 503")
    summary, found, _ = await run(
        MemoryDirectory([guest(1, "viral.example")], realms={"viral.example": broken}), FindCriteria(unmanaged=True)
    )
    assert rows(found) == [] and summary.realm_failures == 1


async def test_domain_move_fills_new_email_and_sets_conflicts_aside() -> None:
    """Same local part in the new domain; an address another user owns goes to the conflicts file only."""
    guests = [guest(i, "fabrikam.net") for i in range(1, 5)] + [guest(9, "contoso.com")]
    owners = {"g2@fabrikam.com": ["ffffffff-0000-4000-8000-000000000002"], "g3@fabrikam.com": [guests[2].id]}
    criteria = FindCriteria(moves=(DomainMove("fabrikam.net", "fabrikam.com"),))
    summary, found, conflicts = await run(MemoryDirectory(guests, owners=owners), criteria)
    assert [(r[0][-1], r[1]) for r in rows(found)] == [
        ("1", "g1@fabrikam.com"),
        ("3", "g3@fabrikam.com"),
        ("4", "g4@fabrikam.com"),
    ]
    [conflict] = rows(conflicts)
    assert conflict[1] == "g2@fabrikam.com" and conflict[-1] == "ffffffff-0000-4000-8000-000000000002"
    assert summary.conflicts == 1 and summary.matched == 3


async def test_the_file_find_writes_is_a_valid_bulk_file() -> None:
    """submit reads the file as written: the facts columns are ignored, newEmail is the request's."""
    criteria = FindCriteria(moves=(DomainMove("fabrikam.net", "fabrikam.com"),))
    _, found, _ = await run(MemoryDirectory([guest(1, "fabrikam.net"), guest(2, "fabrikam.net")]), criteria)
    reader = BulkCsvReader()
    requests = [r.request for r in [*reader.feed(found.encode()), *reader.close()]]
    assert reader.valid, reader.problems
    assert [(r.user_id, r.new_email) for r in requests if r] == [
        ("00000000-0000-4000-8000-000000000001", "g1@fabrikam.com"),
        ("00000000-0000-4000-8000-000000000002", "g2@fabrikam.com"),
    ]


async def test_limit_stops_reading_pages() -> None:
    """--limit ends the run once enough rows are written; later pages are never fetched."""
    directory = MemoryDirectory([guest(i) for i in range(1, 301)], page_size=3)
    summary, found, _ = await run(directory, FindCriteria(all_guests=True, limit=4))
    assert len(rows(found)) == 4 and summary.limit_reached
    assert directory.pages_served <= QUEUED_PAGES + 4 < 100


async def test_paging_never_waits_for_the_login_host() -> None:
    """While every realm lookup hangs, all pages are read (the waiting rows are spooled to disk);
    once the login host answers, the unmanaged ones are written with their realm."""
    guests = [guest(i, f"d{i % 7}.example") for i in range(1, 121)]
    viral = {"d3.example": HomeRealm("d3.example", "Managed", True)}
    directory = MemoryDirectory(guests, page_size=3, realms=viral)
    directory.realm_gate = asyncio.Event()
    task = asyncio.create_task(run(directory, FindCriteria(unmanaged=True)))
    for _ in range(200):
        await asyncio.sleep(0)
    assert directory.pages_served == 40 and not task.done()
    directory.realm_gate.set()
    summary, found, _ = await task
    assert sorted(int(r[0][-3:]) for r in rows(found)) == [i for i in range(1, 121) if i % 7 == 3]
    assert {(r[8], r[9]) for r in rows(found)} == {("Managed", "true")} and summary.realm_lookups == 7


async def test_pages_are_read_ahead_only_a_little_while_owner_checks_wait() -> None:
    """Memory stays flat for domain moves: while owner checks hang, the reader stops a few pages ahead."""
    directory = MemoryDirectory([guest(i, "fabrikam.net") for i in range(1, 121)], page_size=3)
    directory.owner_gate = asyncio.Event()
    criteria = FindCriteria(moves=(DomainMove("fabrikam.net", "fabrikam.com"),))
    task = asyncio.create_task(run(directory, criteria))
    for _ in range(200):
        await asyncio.sleep(0)
    assert directory.pages_served <= QUEUED_PAGES + 3
    directory.owner_gate.set()
    summary, _, _ = await task
    assert directory.pages_served == 40 and summary.matched == 120


async def test_listed_users_are_read_by_id_or_address_and_misses_reported() -> None:
    """A list file names users by object id or address; unknown entries are reported, not guessed."""
    guests = [guest(1), guest(2), guest(3, user_type="Member")]
    listed = (guests[0].id, "g2@partner.example", "nobody@nowhere.example", guests[2].id)
    summary, found, _ = await run(MemoryDirectory(guests), FindCriteria(listed=listed))
    assert [r[0] for r in rows(found)] == [guests[0].id, guests[1].id]
    assert {r[2] for r in rows(found)} == {"Listed"}
    assert summary.to_dict()["notFound"] == ["n***y@nowhere.example"] and summary.not_guests == 1


async def test_spooled_rows_count_toward_the_limit_while_pages_are_still_read() -> None:
    """Rows that waited for a realm are written as soon as realms are answered, and --limit stops the paging."""
    viral = {"v.example": HomeRealm("v.example", "Managed", True)}
    directory = MemoryDirectory([guest(i, "v.example") for i in range(1, 121)], page_size=3, realms=viral)
    summary, found, _ = await run(directory, FindCriteria(unmanaged=True, limit=5))
    assert len(rows(found)) == 5 and summary.limit_reached and summary.matched == 5
    assert directory.pages_served < 40
