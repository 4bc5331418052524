"""Finding who needs a reset: guests by domain, invitation state and age, sign-in issuer, unmanaged
home tenant or a list, and partner domain moves, written as a bulk CSV that ``submit`` takes.

Graph pages are read one after another (a nextLink is only known once its page arrives), so a
run is as fast as its page count allows: the next page is fetched while this one is matched,
home realms are looked up once per domain, concurrently, as soon as a page names a new domain,
and owner checks of moved addresses run beside them. At most a few pages are held in memory;
rows go to the file as they are decided, in Graph's order, except those whose domain's realm is
still being looked up: they wait in a spool file and follow once the realms asked so far are
answered (or the paging is done).

What Graph filters and what is checked here: ``userType``, ``createdDateTime`` ranges and the
domain filters (``endsWith`` on ``mail``/``otherMails``, an advanced query) are sent to Graph,
because Microsoft documents them as filterable. Invitation state, state-change age and sign-in
issuer are matched on the page: Microsoft's filter table does not list ``externalUserState``,
documents no range on ``externalUserStateChangeDateTime``, and supports filtering ``identities``
by issuer alone only for google.com, facebook.com, mail and phone. Every server-side filter is
checked again on the values read, so the file holds exactly what the criteria say.
"""

from __future__ import annotations

import asyncio
import csv
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from shared.bulk.directory import DirectoryGuest, GuestDirectory, GuestPage, GuestQuery, HomeRealm
from shared.bulk.spreadsheet import safe_cell
from shared.platform.errors import AmbiguousUserError, UsageError
from shared.platform.logs import app_logger, mask_email
from shared.reset.contract import is_invitable_address

log = app_logger()

REALM_CONCURRENCY = 16
OWNER_CONCURRENCY = 8
LIST_CONCURRENCY = 16
LIST_PAGE = 200  # listed users are resolved this many at a time
# Pages of candidates read ahead of the writer (besides the one being written, one waiting to be
# queued and the next one on its way). The writer waits only for owner checks of moved
# addresses (rows waiting for a home realm go to the spool), so a little read-ahead suffices,
# and memory does not grow with the tenant.
QUEUED_PAGES = 2
# Moved addresses whose owner check is started but not yet written: more than a page (no
# deadlock between a reader mid-page and a writer waiting for it), few enough to bound tasks.
OWNER_BACKLOG = 2048

# The issuer of guests who signed in with an account of another Entra tenant (the one whose
# home realm can be unmanaged), as Graph shows it in identities[].issuer.
ENTRA_ISSUER = "ExternalAzureAD"

# Columns of the file `find` writes: the bulk format's user key and new address, then why the
# guest is listed and the facts that matched (the bulk reader reads past these).
FILE_COLUMNS = (
    "userId",
    "newEmail",
    "reason",
    "currentEmail",
    "externalUserState",
    "externalUserStateChangeDateTime",
    "createdDateTime",
    "issuers",
    "homeRealm",
    "isViral",
)
CONFLICT_COLUMNS = (*FILE_COLUMNS, "conflictOwner")


@dataclass(frozen=True)
class DomainMove:
    """A partner renamed its domain: guests whose mail is in ``old`` move to ``new``."""

    old: str
    new: str

    @classmethod
    def parse(cls, text: str) -> DomainMove:
        old, sep, new = text.partition("=")
        old, new = old.strip().lower().lstrip("@"), new.strip().lower().lstrip("@")
        if not sep or not _is_domain(old) or not _is_domain(new) or old == new:
            raise UsageError(
                f"--move-domain {text!r}: give OLD=NEW, two different domains like fabrikam.net=fabrikam.com"
            )
        return cls(old, new)


def _is_domain(text: str) -> bool:
    return bool(text) and is_invitable_address(f"x@{text}")


def parse_domain(text: str) -> str:
    domain = text.strip().lower().lstrip("@")
    if not _is_domain(domain):
        raise UsageError(f"{text!r} is not a domain name like fabrikam.com")
    return domain


@dataclass(frozen=True)
class FindCriteria:
    """What makes a guest a candidate; every given criterion must hold (AND), each list is an OR."""

    domains: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    created_before: datetime | None = None
    created_after: datetime | None = None
    state_changed_before: datetime | None = None
    issuers: tuple[str, ...] = ()
    unmanaged: bool = False
    moves: tuple[DomainMove, ...] = ()
    listed: tuple[str, ...] = ()  # object ids or addresses, from a file
    all_guests: bool = False
    limit: int | None = None

    def check(self) -> None:
        """Refuse a run that names no criterion: listing every guest must be asked for explicitly."""
        given = (
            self.domains
            or self.states
            or self.created_before
            or self.created_after
            or self.state_changed_before
            or self.issuers
            or self.unmanaged
            or self.moves
            or self.listed
        )
        if not given and not self.all_guests:
            raise UsageError(
                "give at least one criterion (--domain, --state, --created-before, --issuer, --unmanaged, "
                "--move-domain, --users), or --all-guests to list every guest"
            )
        if self.limit is not None and self.limit < 1:
            raise UsageError("--limit must be at least 1")
        olds = [m.old for m in self.moves]
        if len(set(olds)) != len(olds):
            raise UsageError("--move-domain names the same old domain twice")

    @property
    def moves_by_old(self) -> dict[str, str]:
        return {m.old: m.new for m in self.moves}

    def query(self) -> GuestQuery:
        """The part Graph filters (see the module docstring), with the advanced flag it needs."""
        clauses = ["userType eq 'Guest'"]
        if self.created_after is not None:
            clauses.append(f"createdDateTime ge {_odata_time(self.created_after)}")
        if self.created_before is not None:
            clauses.append(f"createdDateTime le {_odata_time(self.created_before)}")
        advanced = False
        if self.domains:
            ends = [f"endsWith(mail,'@{d}') or otherMails/any(m:endsWith(m,'@{d}'))" for d in self.domains]
            clauses.append(f"({' or '.join(ends)})")
            advanced = True
        if self.moves:
            ends = [f"endsWith(mail,{_quoted('@' + m.old)})" for m in self.moves]
            clauses.append(f"({' or '.join(ends)})")
            advanced = True
        return GuestQuery(" and ".join(clauses), advanced)

    def reasons(self, guest: DirectoryGuest) -> list[str] | None:
        """Why ``guest`` is a candidate, or None when a criterion fails (home realm and owners come later)."""
        if not guest.is_guest:
            return None
        reasons: list[str] = []
        if self.listed:
            reasons.append("Listed")
        if self.domains:
            if not any(_in_domain(a, d) for a in guest.addresses for d in self.domains):
                return None
            reasons.append("Domain")
        if self.moves:
            if not guest.mail or not any(_in_domain(guest.mail, m.old) for m in self.moves):
                return None
            reasons.append("DomainMove")
        if self.states:
            if (guest.external_user_state or "") not in self.states:
                return None
            reasons.append(guest.external_user_state or "")
        if self.created_before or self.created_after:
            created = guest.created_at
            if created is None or (self.created_before and created > self.created_before):
                return None
            if self.created_after and created < self.created_after:
                return None
            reasons.append("InvitedInWindow")
        if self.state_changed_before:
            changed = guest.state_changed_at
            if changed is None or changed > self.state_changed_before:
                return None
            reasons.append("StateUnchangedSince")
        if self.issuers:
            wanted = {i.lower() for i in self.issuers}
            if not any(i.lower() in wanted for i in guest.issuers):
                return None
            reasons.append("Issuer")
        if self.unmanaged:
            # As Microsoft's sample does: guests of another Entra tenant, judged by their mail's domain.
            if not guest.mail or ENTRA_ISSUER.lower() not in {i.lower() for i in guest.issuers}:
                return None
            reasons.append("UnmanagedHomeTenant")
        if not reasons:
            reasons.append("AllGuests")
        return reasons

    def new_email(self, guest: DirectoryGuest) -> str | None:
        if not self.moves or not guest.mail:
            return None
        local, _, domain = guest.mail.rpartition("@")
        new_domain = self.moves_by_old.get(domain.lower())
        return f"{local}@{new_domain}" if new_domain else None


def _odata_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _in_domain(address: str, domain: str) -> bool:
    return address.lower().endswith("@" + domain)


@dataclass
class Found:
    """One candidate: the guest, why, the new address of a move, and what the lookups said."""

    guest: DirectoryGuest
    reasons: list[str]
    new_email: str | None = None
    realm: HomeRealm | None = None
    conflict_owner: str | None = None

    @property
    def reason(self) -> str:
        return "+".join(self.reasons)

    def cells(self, *, conflicts: bool = False) -> list[Any]:
        guest = self.guest
        realm = self.realm
        row = [
            guest.id,
            self.new_email or "",
            self.reason,
            guest.mail or "",
            guest.external_user_state or "",
            guest.state_changed or "",
            guest.created or "",
            "|".join(guest.issuers),
            realm.name_space_type if realm else "",
            ("" if realm is None or realm.error else realm.is_viral),
        ]
        if conflicts:
            row.append(self.conflict_owner or "")
        return [safe_cell(cell) for cell in row]


@dataclass
class FindSummary:
    """What a run read, found and set aside."""

    queries: list[dict[str, Any]] = field(default_factory=list)
    read: int = 0
    pages: int = 0
    matched: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    conflicts: int = 0
    realm_lookups: int = 0
    realm_failures: int = 0
    not_found: list[str] = field(default_factory=list)
    not_guests: int = 0
    limit_reached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "queries": self.queries,
            "read": self.read,
            "pages": self.pages,
            "matched": self.matched,
            "byReason": dict(self.by_reason.most_common()),
            "conflicts": self.conflicts,
            "realmLookups": self.realm_lookups,
            "realmFailures": self.realm_failures,
            "notFound": [mask_email(i) if "@" in i else i for i in self.not_found],
            "notGuests": self.not_guests,
            "limitReached": self.limit_reached,
        }


class CsvSink:
    """The candidates file and the conflicts file, written row by row (header first)."""

    def __init__(self, found: TextIO, conflicts: TextIO) -> None:
        self._found = csv.writer(found, lineterminator="\n")
        self._conflicts = csv.writer(conflicts, lineterminator="\n")
        self._found.writerow(FILE_COLUMNS)
        self._conflicts.writerow(CONFLICT_COLUMNS)

    def found(self, row: Found) -> None:
        self._found.writerow(row.cells())

    def found_cells(self, cells: list[Any]) -> None:
        self._found.writerow(cells)

    def conflict(self, row: Found) -> None:
        self._conflicts.writerow(row.cells(conflicts=True))


class _Spool:
    """Candidates whose home realm is not known yet, on disk until it is: paging never waits for
    the login host, and memory does not grow with the rows that wait (``find --unmanaged``)."""

    _REALM_CELLS = (FILE_COLUMNS.index("homeRealm"), FILE_COLUMNS.index("isViral"))

    def __init__(self) -> None:
        self._file: TextIO | None = None
        self.rows = 0

    def add(self, row: Found, domain: str) -> None:
        if self._file is None:
            # Kept open across calls, closed by close(): a with-block cannot span the run.
            self._file = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")  # noqa: SIM115
        csv.writer(self._file, lineterminator="\n").writerow([domain, *row.cells()])
        self.rows += 1

    def drain(self) -> Iterator[tuple[str, list[str]]]:
        """(domain, cells) of every spooled row, in the order they came, then an empty spool."""
        if self._file is None or not self.rows:
            return
        self._file.seek(0)
        for domain, *cells in csv.reader(self._file):
            yield domain, cells
        self._file.seek(0)
        self._file.truncate()
        self.rows = 0

    @classmethod
    def with_realm(cls, cells: list[str], realm: HomeRealm) -> list[str]:
        name, viral = cls._REALM_CELLS
        cells[name], cells[viral] = realm.name_space_type, "true" if realm.is_viral else "false"
        return cells

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Lookups:
    """Home realms (one lookup per domain, kept) and owner checks, started early, awaited in order."""

    def __init__(self, directory: GuestDirectory, summary: FindSummary) -> None:
        self._directory = directory
        self._summary = summary
        self._realms: dict[str, asyncio.Task[HomeRealm]] = {}
        self._realm_gate = asyncio.Semaphore(REALM_CONCURRENCY)
        self._owner_gate = asyncio.Semaphore(OWNER_CONCURRENCY)
        self.owner_backlog = asyncio.Semaphore(OWNER_BACKLOG)
        self._tasks: set[asyncio.Task[Any]] = set()

    def realm_of(self, domain: str) -> asyncio.Task[HomeRealm]:
        return self._realms[domain]

    def realms_answered(self) -> bool:
        return all(task.done() for task in self._realms.values())

    def realm(self, address: str) -> asyncio.Task[HomeRealm]:
        domain = address.rsplit("@", 1)[-1].lower()
        task = self._realms.get(domain)
        if task is None:
            task = self._realms[domain] = asyncio.create_task(self._look_up_realm(address))
            self._summary.realm_lookups += 1
        return task

    async def _look_up_realm(self, address: str) -> HomeRealm:
        async with self._realm_gate:
            realm = await self._directory.home_realm(address)
        if realm.error:
            self._summary.realm_failures += 1
        return realm

    def owners(self, address: str) -> asyncio.Task[list[str]]:
        task = asyncio.create_task(self._look_up_owners(address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _look_up_owners(self, address: str) -> list[str]:
        async with self._owner_gate:
            return await self._directory.owners_of(address)

    def cancel(self) -> None:
        for task in [*self._realms.values(), *self._tasks]:
            task.cancel()


@dataclass
class _Pending:
    """A candidate waiting for its lookups."""

    row: Found
    realm: asyncio.Task[HomeRealm] | None = None
    owners: asyncio.Task[list[str]] | None = None


async def _listed_pages(
    directory: GuestDirectory, entries: Iterable[str], summary: FindSummary
) -> AsyncIterator[GuestPage]:
    """Listed users (object ids or addresses) read by id, ``LIST_PAGE`` at a time, in file order."""
    gate = asyncio.Semaphore(LIST_CONCURRENCY)

    async def one(entry: str) -> DirectoryGuest | None:
        async with gate:
            user_id: str | None = entry
            if "@" in entry:
                try:
                    user_id = await directory.user_id_by_address(entry)
                except AmbiguousUserError:
                    log.warning("%s is held by more than one user: list it by object id", mask_email(entry))
                    user_id = None
            guest = await directory.read_guest(user_id) if user_id else None
        if guest is None:
            summary.not_found.append(entry)
        return guest

    batch: list[str] = []
    for entry in [*entries, None]:
        if entry is not None:
            batch.append(entry)
            if len(batch) < LIST_PAGE:
                continue
        if batch:
            found = await asyncio.gather(*(one(e) for e in batch))
            yield GuestPage([g for g in found if g is not None])
            batch = []


async def find_guests(
    directory: GuestDirectory,
    criteria: FindCriteria,
    sink: CsvSink,
    *,
    on_page: Callable[[int, int | None], None] | None = None,
) -> FindSummary:
    """Read the guests ``criteria`` selects and write each candidate to ``sink``; returns the summary.

    ``on_page`` gets (guests read so far, total when Graph counted them) after every page. A
    moved address that another user already owns goes to the conflicts file, not the main one:
    the admin fixes those before submitting.
    """
    criteria.check()
    summary = FindSummary()
    lookups = _Lookups(directory, summary)
    spool = _Spool()
    queue: asyncio.Queue[list[_Pending] | None] = asyncio.Queue(maxsize=QUEUED_PAGES)
    total: int | None = None

    if criteria.listed:
        pages = _listed_pages(directory, criteria.listed, summary)
        summary.queries.append({"listed": len(criteria.listed)})
    else:
        query = criteria.query()
        summary.queries.append(query.describe())
        pages = directory.guest_pages(query)

    async def read() -> None:
        try:
            await read_pages()
        finally:  # a run stopped early (--limit, a failure) cancels the page already on its way
            close = getattr(pages, "aclose", None)
            if close is not None:
                await close()

    async def read_pages() -> None:
        nonlocal total
        async for page in pages:
            summary.pages += 1
            summary.read += len(page.guests)
            total = page.count if page.count is not None else total
            pending: list[_Pending] = []
            for guest in page.guests:
                if not guest.is_guest:
                    summary.not_guests += 1
                    continue
                reasons = criteria.reasons(guest)
                if reasons is None:
                    continue
                item = _Pending(Found(guest, reasons, criteria.new_email(guest)))
                if criteria.unmanaged and guest.mail:
                    item.realm = lookups.realm(guest.mail)
                if item.row.new_email:
                    await lookups.owner_backlog.acquire()  # released once the row is written
                    item.owners = lookups.owners(item.row.new_email)
                pending.append(item)
            await queue.put(pending)
        await queue.put(None)

    async def write(reader: asyncio.Task[None]) -> None:
        while (pending := await queue.get()) is not None:
            for item in pending:
                row = item.row
                if item.realm is not None:
                    if not item.realm.done():
                        spool.add(row, row.guest.mail.rsplit("@", 1)[-1].lower() if row.guest.mail else "")
                        continue
                    row.realm = item.realm.result()
                    if not row.realm.unmanaged:
                        continue
                if item.owners is not None:
                    owners = await item.owners
                    lookups.owner_backlog.release()
                    others = [o for o in owners if o.lower() != row.guest.id.lower()]
                    if others:
                        row.conflict_owner = others[0]
                        summary.conflicts += 1
                        sink.conflict(row)
                        continue
                if found(row.reason):
                    sink.found(row)
                else:
                    reader.cancel()  # no more pages: the limit is reached
                    return
            # Every realm asked so far is answered: the spooled rows go out now, during the
            # paging, not after its last page.
            if spool.rows and lookups.realms_answered() and not await flush_spool():
                reader.cancel()
                return
            if on_page is not None:
                on_page(summary.read, total)

    async def flush_spool() -> bool:
        """Write the spooled rows whose realm says unmanaged; False once --limit is reached."""
        for domain, cells in spool.drain():
            realm = await lookups.realm_of(domain)
            if realm.unmanaged:
                if not found(cells[FILE_COLUMNS.index("reason")]):
                    return False
                sink.found_cells(_Spool.with_realm(cells, realm))
        return True

    def found(reason: str) -> bool:
        """Count one more row; False once --limit is reached (the row is not written then)."""
        if criteria.limit is not None and summary.matched >= criteria.limit:
            summary.limit_reached = True
            return False
        summary.matched += 1
        summary.by_reason[reason] += 1
        return True

    try:
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(read())
            group.create_task(write(reader))
        # The rows still waiting for their domain's home realm, decided now that the paging is done.
        if not summary.limit_reached:
            await flush_spool()
    except BaseExceptionGroup as failure:
        raise failure.exceptions[0] from None
    finally:
        lookups.cancel()
        spool.close()
    if on_page is not None:
        on_page(summary.read, total)
    return summary
