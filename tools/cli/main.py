"""guest-reset: the admins' command line for finding who needs a reset, bulk resets, their status and
reports, poison triage, and one-off resets. Run it as `guest-reset ...` or `python -m tools.cli.main ...`.

Settings come from the environment, then local.settings.json (the environment wins): the same
ones the function app reads. --api-url/--api-key (or GUEST_RESET_API_URL, GUEST_RESET_API_KEY)
go through the HTTP API instead of storage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from shared.bulk.outcomes import Outcome, Tracked, outcomes_from_lookup, outcomes_from_table, summarize
from shared.platform.errors import (
    ApiAuthError,
    ApiRefusedError,
    InvalidRequestError,
    ResetError,
    SettingsError,
    UsageError,
)
from shared.platform.settings import Settings, get_settings, reset_settings
from shared.reset.contract import canonical_json, validate_request
from shared.reset.status import Status
from tools.cli import find
from tools.cli.api_client import ApiClient
from tools.cli.output import Output
from tools.cli.submit import read_receipt, submit_file

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
SHOWN_PROBLEMS = 50  # text output lists this many problems or failures; --json lists them all

EXIT_CODES = """exit codes:
  0  ok (status: nothing failed; with --wait, everything finished)
  1  some requests failed, or the file has invalid rows (then nothing was sent), or the breaker is open
  2  usage or configuration error (bad option, missing setting, rejected API key)
  3  storage or the API is unreachable (run the same command again: nothing is sent twice)"""

EXAMPLES = {
    "find": "guest-reset find --move-domain fabrikam.net=fabrikam.com -o moves.csv\n"
    "  guest-reset find --unmanaged -o unmanaged.csv\n"
    "  guest-reset find --state PendingAcceptance --state-changed-before 90d -o stale-invitations.csv",
    "submit": "guest-reset submit --dry-run guests.csv\n  guest-reset submit guests.csv\n"
    "  guest-reset submit guests.csv --api-url https://<app>.azurewebsites.net --api-key <function key>",
    "status": "guest-reset status guests.csv.receipt.json --wait\n"
    "  guest-reset status --request-id bulk-0123456789abcdef-7 --json",
    "report": "guest-reset report --since 24h --output outcomes.csv\n"
    "  guest-reset report --since 2026-01-31T00:00:00Z --until 2026-02-01T00:00:00Z",
    "poison": "guest-reset poison list --error-code UserNotFound\n"
    "  guest-reset poison replay --request-id bulk-0123456789abcdef-7",
    "breaker": "guest-reset breaker status\n"
    "  guest-reset breaker close --by alice@contoso.com   (once Microsoft lifted the block)",
    "reset": "guest-reset reset --email brian.j@tailspin.example --new-email brian@new.example --dry-run\n"
    "  guest-reset reset --user-id 5e0c1d2a-0001-4a5b-9c3d-000000000001 --ticket-id INC-1001",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _epilog(*names: str) -> str:
    lines = ["examples:"] + [f"  {EXAMPLES[n]}" for n in names]
    return "\n".join(lines) + "\n\n" + EXIT_CODES


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    common.add_argument(
        "--settings",
        metavar="FILE",
        help="local.settings.json to read settings from (default: ./local.settings.json if present)",
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    api = _Parser(add_help=False)
    api.add_argument(
        "--api-url",
        default=os.environ.get("GUEST_RESET_API_URL"),
        help="go through the HTTP API at this URL instead of storage (env GUEST_RESET_API_URL)",
    )
    api.add_argument(
        "--api-key",
        default=os.environ.get("GUEST_RESET_API_KEY"),
        help="function key for --api-url (env GUEST_RESET_API_KEY); admin key for poison",
    )

    parser = _Parser(prog="guest-reset", description=__doc__, formatter_class=fmt, epilog=_epilog(*EXAMPLES))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    find.add_parser(commands, [common], formatter_class=fmt, epilog=_epilog("find"))

    submit = commands.add_parser(
        "submit",
        parents=[common, api],
        formatter_class=fmt,
        epilog=_epilog("submit"),
        help="validate a CSV file, then enqueue every row (nothing is sent twice)",
        description="Validate every row first (any invalid row: nothing is sent, all problems listed), then "
        "enqueue the rows concurrently and write a receipt (row -> requestId). requestIds are "
        "bulk-<file hash>-<row>: submitting the same file again sends nothing twice.",
    )
    submit.add_argument("file", type=Path, help="CSV file (see samples/bulk-resets.sample.csv)")
    submit.add_argument("--receipt", type=Path, help="where to write the receipt (default: FILE.receipt.json)")
    submit.add_argument("--requested-by", help="requestedBy for rows that do not say (audit)")
    submit.add_argument("--concurrency", type=int, default=64, help="messages in flight (default 64)")
    submit.add_argument(
        "--dry-run",
        action="store_true",
        help="send every row as a dry run: the worker checks it and sends nothing; status and report say "
        "what would happen (its requestIds are its own: submitting the file afterwards is not a repeat)",
    )

    status = commands.add_parser(
        "status",
        parents=[common, api],
        formatter_class=fmt,
        epilog=_epilog("status"),
        help="current outcome of each request, summarised by status and error code",
        description="Outcome of every request of a receipt, or of the given requestIds. A request the worker "
        "has not picked up yet is Queued.",
    )
    status.add_argument("receipt", nargs="?", type=Path, help="receipt written by submit")
    status.add_argument("--request-id", action="append", default=[], metavar="ID", help="a requestId (repeatable)")
    status.add_argument("--wait", action="store_true", help="follow until every request has ended")
    status.add_argument("--interval", type=float, default=5.0, help="seconds between polls with --wait")
    status.add_argument("--timeout", type=float, help="give up waiting after this many seconds (exit 1)")

    report = commands.add_parser(
        "report",
        parents=[common],
        formatter_class=fmt,
        epilog=_epilog("report"),
        help="export outcomes from the status table to CSV",
        description="Every request updated since TIME, as CSV with the public status fields. TIME is ISO 8601 "
        "(UTC unless it says otherwise) or a duration back from now: 90m, 24h, 7d.",
    )
    report.add_argument("--since", required=True, metavar="TIME", help="ISO 8601 time, or 90m / 24h / 7d ago")
    report.add_argument("--until", metavar="TIME", help="end of the window (exclusive); default: now")
    report.add_argument("--output", "-o", default="-", metavar="FILE", help="CSV file (default: stdout)")

    poison = commands.add_parser(
        "poison",
        formatter_class=fmt,
        epilog=_epilog("poison"),
        help="failed (poisoned) requests: list them, replay them",
        description="The admin HTTP endpoints GET /api/poison and POST /api/poison/replay, from storage or "
        "through the API.",
    )
    actions = poison.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    for name, text in (("list", "list failed requests"), ("replay", "put failed requests back on the queue")):
        action = actions.add_parser(
            name, parents=[common, api], formatter_class=fmt, help=text, epilog=_epilog("poison")
        )
        action.add_argument("--request-id", action="append", default=[], metavar="ID", help="only this requestId")
        action.add_argument("--error-code", help="only failures with this error code")
        action.add_argument("--max", type=int, default=100, help="at most this many (1-1000, default 100)")
        if name == "replay":
            action.add_argument("--all", action="store_true", help="replay every failed request (up to --max)")

    breaker = commands.add_parser(
        "breaker",
        formatter_class=fmt,
        epilog=_epilog("breaker"),
        help="the invitation circuit breaker: see it, close it once Microsoft lifted a block",
        description="The first InvitationsBlocked or InvitationsDisabled from Graph opens the breaker: "
        "requests are then held (status Held), nothing is posted. Close it once Microsoft lifted the "
        "block (a support ticket): held requests go back to the queue. The admin HTTP endpoints "
        "GET /api/breaker and POST /api/breaker/close, from storage or through the API.",
    )
    switches = breaker.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    for name, text in (("status", "show the breaker"), ("close", "close it and resume held requests")):
        action = switches.add_parser(
            name, parents=[common, api], formatter_class=fmt, help=text, epilog=_epilog("breaker")
        )
        if name == "close":
            action.add_argument("--by", help="who closes it (kept in the breaker's record)")

    reset = commands.add_parser(
        "reset",
        parents=[common],
        formatter_class=fmt,
        epilog=_epilog("reset"),
        help="reset one guest now, in this process (needs storage and Graph rights, e.g. az login)",
        description="Run the worker's pipeline for one request in this process: the same checks, status "
        "record and result message as a queued request. Against Azure it signs in with "
        "DefaultAzureCredential (az login) and needs User.ReadWrite.All and RoleManagement.Read.Directory.",
    )
    who = reset.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id", help="the guest's object id")
    who.add_argument("--upn", help="the guest's user principal name")
    who.add_argument("--email", help="the guest's mail or one of its otherMails")
    email = reset.add_mutually_exclusive_group()
    email.add_argument("--new-email", help="the address the guest will redeem with")
    email.add_argument("--move-to-domain", metavar="DOMAIN", help="new address: the current mail's name @DOMAIN")
    reset.add_argument("--dry-run", action="store_true", help="every check and Graph read, nothing sent")
    reset.add_argument(
        "--send-invitation-message",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send Microsoft's invitation email (default: SEND_INVITATION_MESSAGE)",
    )
    reset.add_argument("--message-language", help="language of the invitation email, e.g. en-US")
    reset.add_argument("--ticket-id", help="ticket reference (audit)")
    reset.add_argument("--requested-by", help="who asked for it (audit)")
    reset.add_argument("--request-id", help="idempotency key (default: cli-<random>)")
    reset.add_argument(
        "--show-redeem-url",
        action="store_true",
        help="print the redeem link when no invitation email is sent (hand it over yourself)",
    )
    return parser


# --- settings and clients --------------------------------------------------------------------


def load_local_settings(path: str | None) -> Path | None:
    """Put local.settings.json "Values" into the environment where it has no value (as the host does)."""
    candidate = Path(path) if path else Path("local.settings.json")
    if not candidate.is_file():
        if path:
            raise UsageError(f"settings file {path} not found")
        return None
    try:
        values = json.loads(candidate.read_text(encoding="utf-8")).get("Values") or {}
    except (OSError, ValueError, AttributeError) as error:
        raise UsageError(f"cannot read {candidate}: {error}") from None
    for key, value in values.items():
        os.environ.setdefault(key, value if isinstance(value, str) else json.dumps(value))
    reset_settings()
    return candidate


def _api(args: argparse.Namespace) -> ApiClient | None:
    url = getattr(args, "api_url", None)
    return ApiClient(url, getattr(args, "api_key", None)) if url else None


def _optional_settings() -> Settings | None:
    """Settings when they parse: the API path needs none (the server validates again)."""
    try:
        return get_settings()
    except SettingsError:
        return None


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """ISO 8601 (naive means UTC) or a duration back from now: 90m, 24h, 7d."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd])\s*", text)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        return now - timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: amount})
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{text!r} is not a time: use ISO 8601 (2026-01-31T08:00:00Z) or 90m, 24h, 7d") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- commands --------------------------------------------------------------------------------


async def cmd_submit(args: argparse.Namespace, out: Output) -> int:
    from shared.reset.runtime import get_runtime

    path: Path = args.file
    if not await asyncio.to_thread(path.is_file):
        raise UsageError(f"{path} is not a file")
    if not 1 <= args.concurrency <= 256:
        raise UsageError("--concurrency must be between 1 and 256")
    suffix = ".dry-run.receipt.json" if args.dry_run else ".receipt.json"
    receipt = args.receipt or path.with_name(path.name + suffix)
    api = _api(args)
    try:
        settings = _optional_settings() if api else get_settings()
        runtime = None if api else await get_runtime()
        with out.progress(f"{'dry run of' if args.dry_run else 'sending'} {path.name}") as bar:
            result = await submit_file(
                path,
                receipt_path=receipt,
                settings=settings,
                runtime=runtime,
                api=api,
                requested_by=args.requested_by,
                concurrency=args.concurrency,
                on_start=bar.start,
                on_sent=bar.advance,
                dry_run=args.dry_run,
            )
    finally:
        if api is not None:
            await api.aclose()
    validation = result.validation
    assert validation is not None
    if not validation.valid:
        problems = validation.problems
        lines = [
            f"{path}: {validation.invalid_rows} of {validation.rows} rows are invalid "
            f"({validation.problem_count} problems); nothing was sent."
        ]
        lines += [f"  {p}" for p in problems[:SHOWN_PROBLEMS]]
        if validation.problem_count > SHOWN_PROBLEMS:
            lines.append(f"  ... and {validation.problem_count - SHOWN_PROBLEMS} more (--json lists up to 1000)")
        document = {
            "file": str(path),
            "valid": False,
            "sha256": validation.sha256,
            "fileId": validation.file_id,
            "rows": validation.rows,
            "invalidRows": validation.invalid_rows,
            "problemCount": validation.problem_count,
            "problems": [p.to_dict() for p in problems],
            "sent": 0,
        }
        out.result(document, "\n".join(lines))
        return EXIT_FAILED
    where = "through the API" if api else "to the queue"
    what = "dry run(s)" if args.dry_run else "rows"
    text = (
        f"{path}: {result.rows} {what}, {result.sent} sent {where} now, {result.already_sent} sent before; "
        f"receipt {result.receipt}\nfollow them: guest-reset status {result.receipt} --wait"
    )
    if args.dry_run:
        text += "\n(dry run: every check and Graph read, no directory change, no invitation)"
    out.result({**result.to_dict(), "valid": True}, text)
    return EXIT_OK


def _tracked(args: argparse.Namespace) -> list[Tracked]:
    items: list[Tracked] = []
    if args.receipt is not None:
        try:
            receipt = read_receipt(args.receipt)
        except ValueError as error:
            raise UsageError(str(error)) from None
        items += [Tracked(str(r["requestId"]), int(r["row"])) for r in receipt["requests"]]
    items += [Tracked(request_id) for request_id in args.request_id]
    if not items:
        raise UsageError("give a receipt file or --request-id")
    return items


def _status_text(outcomes: Sequence[Outcome], timed_out: bool) -> str:
    summary = summarize(outcomes)
    statuses = ", ".join(f"{name} {count}" for name, count in summary.by_status.items())
    lines = [f"{summary.total} request(s): {statuses}"]
    if summary.by_error_code:
        lines.append("failed by error code: " + ", ".join(f"{c} {n}" for c, n in summary.by_error_code.items()))
    failed = [o for o in outcomes if o.status == str(Status.FAILED)]
    for outcome in failed[:SHOWN_PROBLEMS]:
        row = f"row {outcome.row}  " if outcome.row is not None else ""
        lines.append(f"  {row}{outcome.request_id}  {outcome.error_code}: {outcome.error_message}")
    if len(failed) > SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(failed) - SHOWN_PROBLEMS} more failed (--json lists all)")
    if timed_out:
        lines.append(f"gave up waiting: {summary.total - summary.terminal} request(s) have not ended yet")
    return "\n".join(lines)


async def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from shared.reset.runtime import get_runtime

    items = _tracked(args)
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    api = _api(args)
    try:
        look: Callable[[], Awaitable[list[Outcome]]]
        if api is not None:
            client = api

            async def look() -> list[Outcome]:
                return await outcomes_from_lookup(client.status, items)
        else:
            store = (await get_runtime()).status

            async def look() -> list[Outcome]:
                return await outcomes_from_table(store, items)

        deadline = time.monotonic() + args.timeout if args.timeout else None
        timed_out = False
        with out.progress("finished") as bar:
            while True:
                outcomes = await look()
                summary = summarize(outcomes)
                bar.update(summary.terminal, summary.total)
                if not args.wait or summary.all_terminal:
                    break
                if deadline is not None and time.monotonic() + args.interval > deadline:
                    timed_out = True
                    break
                await asyncio.sleep(args.interval)
    finally:
        if api is not None:
            await api.aclose()
    document = {**summary.to_dict(), "timedOut": timed_out, "requests": [o.to_dict() for o in outcomes]}
    out.result(document, _status_text(outcomes, timed_out))
    return EXIT_FAILED if summary.failed or timed_out else EXIT_OK


async def cmd_report(args: argparse.Namespace, out: Output) -> int:
    from shared.bulk.outcomes import export_report
    from shared.reset.runtime import get_runtime

    since = parse_time(args.since)
    until = parse_time(args.until) if args.until else None
    if args.json and args.output == "-":
        raise UsageError("with --json, give --output FILE (stdout carries the JSON summary)")
    store = (await get_runtime()).status
    if args.output == "-":
        count = await export_report(store, out.stdout, since=since, until=until)
    else:
        handle = await asyncio.to_thread(open, args.output, "w", encoding="utf-8", newline="")
        with handle:
            count = await export_report(store, handle, since=since, until=until)
    document = {
        "rows": count,
        "output": args.output,
        "since": since.isoformat(),
        "until": until.isoformat() if until else None,
    }
    if args.output == "-":
        out.note(f"{count} outcome(s) since {since.isoformat()}")
    else:
        out.result(document, f"{count} outcome(s) since {since.isoformat()} written to {args.output}")
    return EXIT_OK


async def cmd_poison(args: argparse.Namespace, out: Output) -> int:
    from shared.api import triage
    from shared.reset.runtime import get_runtime

    if not 1 <= args.max <= triage.MAX_LIST:
        raise UsageError(f"--max must be between 1 and {triage.MAX_LIST}")
    replay = args.action == "replay"
    if replay and not (args.request_id or args.error_code or args.all):
        raise UsageError("replay needs --request-id, --error-code or --all (replaying everything is explicit)")
    api = _api(args)
    try:
        if api is not None:
            if replay:
                order = {"requestIds": args.request_id or None, "errorCode": args.error_code, "max": args.max}
                body = await api.replay_poison(json.dumps({k: v for k, v in order.items() if v}).encode())
            else:
                params = {"max": str(args.max)}
                if args.error_code:
                    params["errorCode"] = args.error_code
                if args.request_id:
                    params["requestId"] = args.request_id[0]
                body = await api.list_poison(params)
        else:
            runtime = await get_runtime()
            if replay:
                report = await triage.replay(
                    runtime, request_ids=args.request_id or None, error_code=args.error_code, maximum=args.max
                )
                body = report.to_dict()
            else:
                body = {
                    "items": await triage.list_failed(
                        runtime, request_ids=args.request_id or None, error_code=args.error_code, limit=args.max
                    )
                }
    finally:
        if api is not None:
            await api.aclose()
    if replay:
        lines = [f"replayed {body.get('movedCount', 0)} request(s)"]
        lines += [f"  moved   {rid}" for rid in body.get("moved", [])]
        lines += [f"  skipped {s['requestId']}: {s['reason']}" for s in body.get("skipped", [])]
        out.result(body, "\n".join(lines))
        return EXIT_FAILED if body.get("skipped") else EXIT_OK
    items = body.get("items", [])
    lines = [f"{len(items)} failed request(s)"]
    lines += [
        f"  {i['requestId']}  {i.get('errorCode')}: {i.get('errorMessage')}"
        f"{'' if i.get('replayable') else '  (not replayable)'}"
        for i in items
    ]
    out.result(body, "\n".join(lines))
    return EXIT_OK


def _breaker_text(state: dict[str, Any]) -> str:
    if state.get("state") == "open":
        return (
            f"breaker OPEN since {state.get('openedAt')} ({state.get('code')}, first met by request "
            f"{state.get('openedBy')}): {state.get('message')}\nrequests are held; close it once Microsoft "
            "lifted the block: guest-reset breaker close"
        )
    closed = f" (closed {state.get('closedAt')} by {state.get('closedBy')})" if state.get("closedAt") else ""
    return f"breaker closed{closed}: invitations are posted"


async def cmd_breaker(args: argparse.Namespace, out: Output) -> int:
    from shared.reset.breaker import resume_held
    from shared.reset.runtime import get_runtime

    close = args.action == "close"
    api = _api(args)
    try:
        if api is not None:
            if close:
                body = await api.close_breaker(json.dumps({"closedBy": args.by} if args.by else {}).encode())
            else:
                body = await api.breaker()
        else:
            runtime = await get_runtime()
            if close:
                state = await runtime.gate.close(args.by or f"cli:{os.environ.get('USER') or 'unknown'}")
                resumed = await resume_held(runtime)
                body = {"breaker": state.to_dict(), "resumed": resumed, "resumedCount": len(resumed)}
            else:
                body = (await runtime.gate.state()).to_dict()
    finally:
        if api is not None:
            await api.aclose()
    if close:
        out.result(body, f"{_breaker_text(body['breaker'])}\n{body['resumedCount']} held request(s) back on the queue")
        return EXIT_OK
    out.result(body, _breaker_text(body))
    return EXIT_FAILED if body.get("state") == "open" else EXIT_OK


async def cmd_reset(args: argparse.Namespace, out: Output) -> int:
    from shared.reset.runtime import get_runtime
    from shared.reset.worker import handle_request_message

    fields = {
        "userId": args.user_id,
        "userPrincipalName": args.upn,
        "email": args.email,
        "newEmail": args.new_email,
        "moveToDomain": args.move_to_domain,
        "sendInvitationMessage": args.send_invitation_message,
        "messageLanguage": args.message_language,
        "ticketId": args.ticket_id,
        "requestedBy": args.requested_by,
        "dryRun": args.dry_run or None,
        "source": "cli",
    }
    request_id = args.request_id or f"cli-{uuid.uuid4().hex}"
    try:
        request = validate_request({k: v for k, v in fields.items() if v is not None} | {"requestId": request_id})
    except InvalidRequestError as error:
        return out.error(error.code, error.message, EXIT_FAILED, problems=error.problems)
    runtime = await get_runtime()
    # A one-off run has no redelivery: this delivery is the last, so a failure is final (poisoned).
    await handle_request_message(
        canonical_json(request).encode("utf-8"), message_id=request_id, dequeue_count=runtime.settings.max_dequeue_count
    )
    record = await runtime.status.get(request_id)
    if record is None:
        return out.error("NoRecord", f"request {request_id} left no status record", EXIT_FAILED)
    body = record.public()
    last = record.history[-1] if record.history else {}
    if not record.status.terminal and last.get("event") == "poisoned":
        # The app's poison trigger will record Failed from the poison message; say so now.
        body.update(status=str(Status.FAILED), errorCode=last.get("code"), errorMessage=last.get("message"))
    if args.show_redeem_url and record.redeem_url:
        # Handed over once, as the status API does: the link leaves storage as it is shown.
        link = await runtime.status.hand_over_redeem_url(record, to="cli")
        if link:
            body["redeemUrl"] = link
    status = str(body["status"])
    if status == str(Status.DRY_RUN_PASSED):
        out.result(body, f"{status}: {request_id}  user {body.get('userId')} passed every check; nothing was sent")
        return EXIT_OK
    if status == str(Status.SUCCEEDED):
        text = (
            f"{status}: {request_id}  user {body.get('userId')}  invitation {body.get('invitationId')}  "
            f"read back as PendingAcceptance: {'yes' if body.get('verified') else 'no'}"
        )
        if body.get("redeemUrl"):
            text += f"\nredeem URL (hand it to the guest): {body['redeemUrl']}"
        out.result(body, text)
        return EXIT_OK
    out.result(body, f"{status}: {request_id}  {body.get('errorCode') or ''}: {body.get('errorMessage') or ''}")
    return EXIT_FAILED


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], Awaitable[int]]] = {
    "find": find.cmd_find,
    "submit": cmd_submit,
    "status": cmd_status,
    "report": cmd_report,
    "poison": cmd_poison,
    "breaker": cmd_breaker,
    "reset": cmd_reset,
}


async def run(argv: Sequence[str] | None = None, *, stdout: Any = None, stderr: Any = None) -> int:
    """Parse ``argv`` and run the command on the running loop; returns the exit code."""
    from shared.reset.runtime import close_runtime

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2)
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    from azure.core.exceptions import AzureError

    out = Output(as_json=args.json, progress=not args.no_progress, stdout=stdout, stderr=stderr)
    try:
        load_local_settings(args.settings)
        reset_settings()  # parsed afresh for every command: the environment is the source of truth
        return await COMMANDS[args.command](args, out)
    except UsageError as error:
        return out.error("Usage", str(error), EXIT_USAGE)
    except SettingsError as error:
        return out.error("Settings", str(error), EXIT_USAGE, problems=error.problems)
    except ApiAuthError as error:
        return out.error(error.code, error.message, EXIT_USAGE)
    except ApiRefusedError as error:
        return out.error(error.code, error.message, EXIT_FAILED, problems=error.errors)
    except ResetError as error:
        exit_code = EXIT_FAILED if error.permanent else EXIT_UNREACHABLE
        return out.error(error.code, error.message, exit_code)
    except AzureError as error:  # a client that could not reach storage at all (e.g. creating the table)
        return out.error(
            "StorageUnavailable",
            f"storage is unreachable: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
            EXIT_UNREACHABLE,
        )
    except OSError as error:
        return out.error("FileError", str(error), EXIT_USAGE)
    finally:
        await close_runtime()


def main(argv: Sequence[str] | None = None) -> int:
    """The console script ``guest-reset``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        return asyncio.run(run(argv))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: run the same command again to resume (nothing is sent twice)\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
