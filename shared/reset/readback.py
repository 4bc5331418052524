"""What a read-back of the guest proves about a reset invitation, and resolving an uncertain one.

Graph has no ``GET /invitations/{id}``: the only trace of a reset is the user's
``externalUserState`` turning ``PendingAcceptance`` with a new ``externalUserStateChangeDateTime``.
Directory reads are eventually consistent (Microsoft documents no bound), and for a guest who
was already ``PendingAcceptance`` a reset changes nothing observable. So a read-back proves a
reset only when the state moved to ``PendingAcceptance`` after we sent; its absence proves
nothing, and an invitation whose outcome is unknown is never sent again on that absence: it ends
``OutcomeUnknown`` for a person to check (safety rule 7).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.platform.errors import HoldError, OutcomeUnknownError, ResetError
from shared.platform.logs import app_logger
from shared.reset.deadline import MIN_CALL_SECONDS, time_left
from shared.reset.graph import GraphGateway, GuestUser, SentInvitation
from shared.reset.status import iso_time, utcnow

log = app_logger()

PENDING = "PendingAcceptance"
# Our clock against Graph's: a change stamped up to this much before our send still counts.
CLOCK_SKEW = timedelta(seconds=5)
# Reads while waiting for evidence, seconds after the send: few, and spread over the window.
POLL_AT = (1.0, 3.0, 7.0, 15.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class Before:
    """The guest as read just before the invitation went out (kept in the record's history)."""

    state: str | None
    changed_at: datetime | None

    @property
    def shows_nothing(self) -> bool:
        """A reset of a guest already PendingAcceptance leaves no trace a read can see."""
        return self.state == PENDING

    @classmethod
    def of(cls, user: GuestUser) -> Before:
        return cls(user.external_user_state, user.external_user_state_changed_at)


def shows_reset(before: Before | None, after: GuestUser, sent_at: datetime) -> bool:
    """Does ``after`` prove a reset took effect after ``sent_at``?"""
    if before is not None and before.shows_nothing:
        return False
    if after.external_user_state != PENDING:
        return False
    changed = after.external_user_state_changed_at
    if changed is None:
        return before is not None  # the state itself moved, which only a reset does
    moved = before is None or before.changed_at is None or changed > before.changed_at
    return moved and changed >= sent_at - CLOCK_SKEW


def verdict(before: Before, after: GuestUser | None, sent_at: datetime) -> tuple[bool | None, str | None]:
    """``verified`` and a note for an invitation Graph accepted (201): what the read-back can tell."""
    if before.shows_nothing:
        return None, "the guest was already PendingAcceptance, so a read-back cannot show the reset"
    if after is None:
        return None, "the user could not be read back"
    if shows_reset(before, after, sent_at):
        return True, None
    return False, (
        f"the user reads back as {after.external_user_state} (directory replication lag is the usual cause); "
        "Graph accepted the invitation, so it is not sent again"
    )


def unknown_outcome(request_id: str, user_id: str, sent_at: datetime, reason: str) -> OutcomeUnknownError:
    """The error that ends an uncertain invitation: how to check, and how to resend deliberately."""
    when = iso_time(sent_at)
    return OutcomeUnknownError(
        f"the reset invitation sent at {when} may or may not have reached Graph, and Graph gives no evidence "
        f"either way ({reason}); it is not sent again automatically, so the guest never gets two. "
        f"Check the Microsoft Entra audit log (Users > user {user_id} > Audit logs, activity "
        f"'Invite external user', from {when}): if the entry is there the reset happened; if not, send it "
        f"deliberately with `guest-reset poison replay --request-id {request_id}` (or POST /api/poison/replay)"
    )


async def resolve_uncertain(
    graph: GraphGateway,
    *,
    request_id: str,
    user_id: str,
    before: Before | None,
    sent_at: datetime,
    window: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    now: Callable[[], datetime] = utcnow,
) -> SentInvitation:
    """Read the guest back until the reset shows, for at most ``window`` seconds after ``sent_at``.

    Never sends anything. Returns a confirmed invitation, or raises ``OutcomeUnknownError`` when
    the window ends without evidence (at once for a guest already PendingAcceptance). When the
    delivery's deadline ends before the window does, ``HoldError`` hands the rest of the
    wait to the next delivery, which resumes here.
    """
    if before is not None and before.shows_nothing:
        raise unknown_outcome(request_id, user_id, sent_at, "the guest was already PendingAcceptance")
    ends = sent_at + timedelta(seconds=window)
    problem = "no change read back"
    for offset in (*POLL_AT, window):
        due = min(sent_at + timedelta(seconds=offset), ends)
        wait = (due - now()).total_seconds()
        if wait > 0:
            if wait + MIN_CALL_SECONDS > time_left():
                left = (ends - now()).total_seconds()
                raise HoldError(
                    "the invitation's outcome is not known yet and this delivery has no time left to wait for "
                    "evidence; the next delivery reads the guest back again",
                    delay=max(left, 1.0),
                    code="AwaitingEvidence",
                    held=False,
                    limited=True,
                )
            await sleep(wait)
        try:
            after = await graph.read_user(user_id)
        except HoldError:
            raise
        except ResetError as error:
            problem = f"reading the user back failed: {error.code}"
            log.warning("read-back for an uncertain invitation failed: %s", error.message)
        else:
            if shows_reset(before, after, sent_at):
                log.info("the uncertain invitation took effect (read-back); not sending again")
                return SentInvitation(None, PENDING, None, None, confirmed_by_read_back=True)
            problem = f"the user still reads as {after.external_user_state} after {window:.0f}s"
        if now() >= ends:
            break
    raise unknown_outcome(request_id, user_id, sent_at, problem)
