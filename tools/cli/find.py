"""``guest-reset find``: ask the directory who needs a reset and write the answer as a bulk CSV.

The file is written to ``FILE.partial`` and renamed when the run ends, so a half-written file is
never mistaken for a finished one; moved addresses that another user already owns go to a
conflicts file beside it, never into the file ``submit`` takes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

from shared.bulk.directory import GraphGuestDirectory
from shared.bulk.discovery import CsvSink, DomainMove, FindCriteria, FindSummary, find_guests, parse_domain
from shared.platform.errors import UsageError
from shared.platform.settings import get_settings
from shared.reset.throttle import RetryPolicy, WriteBudget
from tools.cli.output import Output

STATES = ("PendingAcceptance", "Accepted")


def conflicts_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.conflicts{output.suffix or '.csv'}")


def read_user_list(path: Path) -> tuple[str, ...]:
    """Object ids or addresses, one per line (the first cell of a CSV line); blank lines, ``#`` comments
    and a header line are skipped."""
    if not path.is_file():
        raise UsageError(f"{path} is not a file")
    entries: list[str] = []
    first = True
    for number, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        cell = text.replace(";", ",").split(",")[0].strip().strip('"')
        header, first = first, False
        if "@" in cell:
            entries.append(cell)
            continue
        try:
            entries.append(str(uuid.UUID(cell)))
        except ValueError:
            if not header:  # only the first line may be a header such as "userId"
                raise UsageError(f"{path} line {number}: {cell!r} is neither an object id nor an address") from None
    if not entries:
        raise UsageError(f"{path} names no user (one object id or address per line)")
    return tuple(entries)


def criteria_from(args: argparse.Namespace) -> FindCriteria:
    from tools.cli.main import parse_time

    return FindCriteria(
        domains=tuple(parse_domain(d) for d in args.domain),
        states=tuple(args.state),
        created_before=parse_time(args.created_before) if args.created_before else None,
        created_after=parse_time(args.created_after) if args.created_after else None,
        state_changed_before=parse_time(args.state_changed_before) if args.state_changed_before else None,
        issuers=tuple(args.issuer),
        unmanaged=args.unmanaged,
        moves=tuple(DomainMove.parse(m) for m in args.move_domain),
        listed=read_user_list(args.users) if args.users else (),
        all_guests=args.all_guests,
        limit=args.limit,
    )


def summary_text(summary: FindSummary, output: Path, conflicts: Path) -> str:
    queries = "; ".join(
        f"{q['filter']}{' (advanced query)' if q['advancedQuery'] else ''}"
        if "filter" in q
        else f"{q['listed']} listed"
        for q in summary.queries
    )
    lines = [f"read {summary.read:,} guest(s) in {summary.pages} page(s): {queries}"]
    if summary.realm_lookups:
        failed = f", {summary.realm_failures} failed (those guests are not listed)" if summary.realm_failures else ""
        lines.append(f"home realms looked up: {summary.realm_lookups} domain(s){failed}")
    reasons = ", ".join(f"{reason} {count:,}" for reason, count in summary.by_reason.most_common()) or "nobody"
    lines.append(f"found {summary.matched:,}: {reasons}{' (stopped at --limit)' if summary.limit_reached else ''}")
    if summary.not_found:
        lines.append(f"not found: {len(summary.not_found)} listed user(s) (--json lists them)")
    if summary.conflicts:
        lines.append(
            f"conflicts: {summary.conflicts} new address(es) already belong to another user; set aside in "
            f"{conflicts} (not in the file to submit: free the address or pick another, then add the row back)"
        )
    lines.append(f"wrote {output}")
    if summary.matched:
        lines.append(f"next: guest-reset submit --dry-run {output}")
    return "\n".join(lines)


def _prepare(args: argparse.Namespace) -> tuple[FindCriteria, Path, Path]:
    """Criteria and output files from the options (reads the --users file), all checked before Graph is asked."""
    criteria = criteria_from(args)
    criteria.check()
    output: Path = args.output
    conflicts: Path = args.conflicts or conflicts_path(output)
    if os.path.abspath(output) == os.path.abspath(conflicts):
        raise UsageError("--output and --conflicts must be different files")
    return criteria, output, conflicts


async def cmd_find(args: argparse.Namespace, out: Output) -> int:
    from shared.reset.graph_sdk import SdkGraphGateway

    criteria, output, conflicts = await asyncio.to_thread(_prepare, args)
    settings = get_settings()
    policy = RetryPolicy(settings.graph_retry_delays, settings.graph_max_attempts)
    gateway = SdkGraphGateway(settings, budget=WriteBudget(settings.graph_writes_per_second), policy=policy)
    directory = GraphGuestDirectory(settings, gateway, policy=policy)
    partial = [output.with_name(output.name + ".partial"), conflicts.with_name(conflicts.name + ".partial")]
    handles: list[Any] = []
    finished = False
    try:
        for path in partial:
            handles.append(await asyncio.to_thread(open, path, "w", encoding="utf-8", newline=""))
        sink = CsvSink(handles[0], handles[1])
        with out.progress("guests read") as bar:
            summary = await find_guests(directory, criteria, sink, on_page=bar.count)
        finished = True
    finally:
        for handle in handles:
            handle.close()
        await directory.aclose()
        await gateway.aclose()
        for path, final in zip(partial, (output, conflicts), strict=True):
            if finished:
                await asyncio.to_thread(os.replace, path, final)
            else:  # a run that failed leaves no file that looks like an answer
                await asyncio.to_thread(path.unlink, missing_ok=True)
    document = {**summary.to_dict(), "output": str(output), "conflictsFile": str(conflicts)}
    out.result(document, summary_text(summary, output, conflicts))
    return 0


def add_parser(commands: Any, parents: list[argparse.ArgumentParser], **options: Any) -> None:
    """The ``find`` subcommand's options (kept beside the command they feed)."""
    find = commands.add_parser(
        "find",
        parents=parents,
        help="find guests who need a reset and write them as a bulk CSV for submit",
        description="Page through the guests in the directory and write those matching every given criterion "
        "to a CSV in the bulk format (userId, newEmail) plus the reason and the facts that matched, which "
        "submit ignores. Nothing is changed in the directory. Needs User.Read.All (the app's "
        "User.ReadWrite.All includes it) and, with --unmanaged, the public userrealm endpoint of the Entra "
        "login host. TIME is ISO 8601 or a duration back from now: 90m, 24h, 30d.",
        **options,
    )
    find.add_argument("--output", "-o", type=Path, required=True, metavar="FILE", help="the CSV to write")
    find.add_argument(
        "--conflicts",
        type=Path,
        metavar="FILE",
        help="where moved addresses that are taken go (default FILE.conflicts.csv)",
    )
    find.add_argument(
        "--domain", action="append", default=[], metavar="DOMAIN", help="mail or otherMails in this domain (repeatable)"
    )
    find.add_argument("--state", action="append", default=[], choices=STATES, help="externalUserState (repeatable)")
    find.add_argument("--created-before", metavar="TIME", help="invited (createdDateTime) before TIME, e.g. 180d")
    find.add_argument("--created-after", metavar="TIME", help="invited (createdDateTime) after TIME")
    find.add_argument(
        "--state-changed-before", metavar="TIME", help="externalUserState unchanged since before TIME, e.g. 90d"
    )
    find.add_argument(
        "--issuer",
        action="append",
        default=[],
        metavar="ISSUER",
        help="signs in through this identity issuer: ExternalAzureAD, MicrosoftAccount, mail (one-time passcode), "
        "google.com, facebook.com or a federation's issuer (repeatable)",
    )
    find.add_argument(
        "--unmanaged",
        action="store_true",
        help="guests of another Entra tenant whose home tenant is unmanaged (viral): userrealm IsViral",
    )
    find.add_argument(
        "--move-domain",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="guests whose mail is in OLD get newEmail = same name @NEW; addresses owned by another user "
        "go to the conflicts file (repeatable)",
    )
    find.add_argument(
        "--users", type=Path, metavar="FILE", help="only these users: object ids or addresses, one per line"
    )
    find.add_argument("--all-guests", action="store_true", help="every guest (when no other criterion is given)")
    find.add_argument("--limit", type=int, metavar="N", help="stop after N guests")
