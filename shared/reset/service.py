"""The reset itself: find the user, apply the safety rules, switch the email, invite, verify."""

from __future__ import annotations

import contextlib

from shared.platform.errors import AmbiguousOutcomeError, DeliveryDeferred, PolicyRefusedError, ResetError
from shared.platform.logs import app_logger, bind, mask_email
from shared.platform.settings import Settings
from shared.reset import policy
from shared.reset.contract import ResetRequest
from shared.reset.graph import GraphGateway, GuestUser, InvitationBody, SentInvitation
from shared.reset.readback import Before, resolve_uncertain, verdict
from shared.reset.status import Status, StatusRecord, StatusStore, iso_time, parse_iso_time, utcnow
from shared.reset.throttle import time_left

log = app_logger()

# The record's phase while an invitation may be in flight, and after one provably was not sent.
INVITING = "Inviting"
NOT_SENT = "InviteNotSent"


class ResetService:
    """Runs one claimed request to its outcome and records it; raises ResetError on failure."""

    def __init__(self, settings: Settings, graph: GraphGateway, status: StatusStore) -> None:
        self._settings = settings
        self._graph = graph
        self._status = status

    async def _find(self, request: ResetRequest) -> GuestUser:
        return await self._graph.find_user(
            user_id=request.user_id, upn=request.user_principal_name, email=request.email
        )

    async def _check(self, request: ResetRequest, user: GuestUser) -> str:
        """Every safety rule; returns the address the guest will redeem with."""
        policy.check_user(user, self._settings)
        target = request.new_email or user.mail
        if not target:
            raise PolicyRefusedError(f"user {user.id} has no mail to invite; give newEmail", code="NoEmailOnUser")
        policy.check_email_domain(target, self._settings)
        if request.new_email:
            owners = await self._graph.users_owning_email(request.new_email)
            policy.check_email_owners(request.new_email, user, owners)
        policy.check_directory_roles(user, await self._graph.directory_roles(user.id))
        return target

    async def run(self, request: ResetRequest, record: StatusRecord) -> StatusRecord:
        user = await self._find(request)
        bind(userId=user.id)
        target = await self._check(request, user)

        if request.dry_run:
            log.info("dry run passed every check for %s", mask_email(target))
            return await self._status.save(
                record,
                status=Status.DRY_RUN_PASSED,
                user_id=user.id,
                masked_email=mask_email(target),
                finished_at=utcnow(),
                held_until=None,
                error_code=None,
                error_message=None,
                history=record.with_event("dryRunPassed"),
            )

        if request.new_email and (user.mail or "").lower() != request.new_email.lower():
            await self._graph.set_sign_in_email(user, request.new_email)
            log.info("sign-in email switched to %s", mask_email(request.new_email))

        body = InvitationBody.for_request(request, user, target, self._settings)
        if record.phase == INVITING and record.invite_started_at is not None:
            # An earlier delivery recorded the intent and then lost track: its invitation may have
            # gone out. Decided by evidence only; nothing is sent again.
            sent = await resolve_uncertain(
                self._graph,
                request_id=record.request_id,
                user_id=user.id,
                before=_before(record),
                sent_at=record.invite_started_at,
                window=self._settings.readback_window_seconds,
            )
            return await self._succeeded(record, body, sent, verified=True, note=None)

        # A post needs its own time plus the read-back window should its outcome be unknown;
        # with less left, hold the request now rather than start what cannot be finished.
        needed = self._settings.graph_timeout_seconds + self._settings.readback_window_seconds
        if time_left() < needed:
            raise DeliveryDeferred("too little of this delivery is left to send the invitation safely", delay=1.0)
        before = Before.of(user)
        # Written before sending: a later delivery then knows an invitation may have gone out,
        # and resolves it by evidence instead of sending a second one.
        sent_at = utcnow()
        record = await self._status.save(
            record,
            user_id=user.id,
            masked_email=mask_email(target),
            phase=INVITING,
            invite_started_at=sent_at,
            send_invitation_message=body.send_message,
            history=record.with_event("inviting", priorState=before.state, priorChange=iso_time(before.changed_at)),
        )
        try:
            sent = await self._graph.reset_redemption(body)
        except AmbiguousOutcomeError as error:
            log.warning("the invitation's outcome is unknown (%s); reading the guest back, not resending", error.code)
            sent = await resolve_uncertain(
                self._graph,
                request_id=record.request_id,
                user_id=user.id,
                before=before,
                sent_at=sent_at,
                window=self._settings.readback_window_seconds,
            )
            return await self._succeeded(record, body, sent, verified=True, note=None)
        except ResetError:
            # Graph refused or never got it: nothing was sent, so the intent no longer stands.
            with contextlib.suppress(ResetError):
                record = await self._status.save(record, phase=NOT_SENT, invite_started_at=None)
            raise
        try:
            after: GuestUser | None = await self._graph.read_user(user.id)
        except ResetError as error:
            # The invitation went out (201); a failed read-back must not turn that into a failure.
            log.warning("the user could not be read back after the invitation: %s", error.code)
            after = None
        verified, note = verdict(before, after, sent_at)
        if verified is False:
            log.warning("Graph accepted the reset but %s", note)
        log.info("reset invitation %s sent to %s", sent.id, mask_email(target))
        return await self._succeeded(record, body, sent, verified=verified, note=note)

    async def _succeeded(
        self,
        record: StatusRecord,
        body: InvitationBody,
        sent: SentInvitation,
        *,
        verified: bool | None,
        note: str | None,
    ) -> StatusRecord:
        return await self._status.save(
            record,
            status=Status.SUCCEEDED,
            phase="Done",
            finished_at=utcnow(),
            held_until=None,
            invitation_id=sent.id,
            graph_request_id=sent.graph_request_id,
            verified=verified,
            error_code=None,
            error_message=None,
            # Kept only when no email goes out: then an admin must hand the link over.
            redeem_url=None if body.send_message else sent.redeem_url,
            history=record.with_event(
                "succeeded", confirmedByReadBack=sent.confirmed_by_read_back or None, readBack=note
            ),
        )


def _before(record: StatusRecord) -> Before | None:
    """The guest's state before the invitation, as the delivery that sent it wrote it down."""
    for event in reversed(record.history):
        if event.get("event") == "inviting":
            return Before(event.get("priorState"), parse_iso_time(event.get("priorChange")))
    return None
