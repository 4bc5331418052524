"""The reset itself: find the user, apply the safety rules, switch the email, invite, verify."""

from __future__ import annotations

import asyncio
from datetime import datetime

from shared.platform.errors import BREAKER_CODES, GraphRequestError, HoldError, TransientError
from shared.platform.logs import app_logger, bind, mask_email
from shared.platform.settings import Settings
from shared.reset import policy
from shared.reset.breaker import InvitationGate
from shared.reset.contract import ResetRequest
from shared.reset.graph import GraphGateway, GuestUser, InvitationBody, SentInvitation
from shared.reset.status import Status, StatusRecord, StatusStore, utcnow

log = app_logger()


class ResetService:
    """Runs one claimed request to its outcome and records it; raises ResetError on failure.

    ``gate`` (the invitation breaker and pacing) is shared by the whole app; without one (the
    benchmarks) invitations are neither held nor paced.
    """

    def __init__(
        self,
        settings: Settings,
        graph: GraphGateway,
        status: StatusStore,
        gate: InvitationGate | None = None,
    ) -> None:
        self._settings = settings
        self._graph = graph
        self._status = status
        self._gate = gate

    async def _find(self, request: ResetRequest) -> GuestUser:
        return await self._graph.find_user(
            user_id=request.user_id, upn=request.user_principal_name, email=request.email
        )

    async def _check(self, request: ResetRequest, user: GuestUser) -> str:
        """Every safety rule; returns the address the guest will redeem with."""
        policy.check_user(user, self._settings)
        target = policy.choose_target(request, user)
        policy.check_email_domain(target, self._settings)
        if request.new_email:
            owners = await self._graph.users_owning_email(request.new_email)
            policy.check_email_owners(request.new_email, user, owners)
        policy.check_role_assignments(user, await self._graph.role_assignments(user.id))
        return target

    async def _switch_email(self, user: GuestUser, email: str) -> None:
        """Set the new address, then wait (bounded) until it reads back before anyone invites to it."""
        await self._graph.set_sign_in_email(user, email)
        log.info("sign-in email switched to %s", mask_email(email))
        within = self._settings.replication_wait_seconds
        if not await self._graph.wait_for_address(user.id, email, within=within):
            log.warning("the new email did not read back within %.0fs; inviting anyway", within)

    async def _invite(
        self, request_id: str, body: InvitationBody, *, sent_after: datetime | None, patched: bool
    ) -> SentInvitation:
        """Send the invitation; a refusal for the whole tenant opens the breaker and holds this request.

        After our own email switch Graph's invitation service may still check the old addresses
        (replication): its "doesn't match any emails on the user object" 400 is then retried in
        this delivery on the GRAPH_RETRY_DELAYS schedule (docs/graph.md).
        """
        delays = self._settings.graph_retry_delays if patched else ()
        attempt = 0
        while True:
            try:
                return await self._graph.reset_redemption(body, sent_after=sent_after)
            except GraphRequestError as error:
                if error.code in BREAKER_CODES and self._gate is not None:
                    raise await self._gate.trip(error, request_id) from None
                if error.code != "EmailNotOnUser" or not patched:
                    raise
                if attempt >= len(delays):
                    # Not this request's fault: Graph has not caught up with our own switch yet.
                    raise TransientError(
                        f"{error.message} (the address was set by this reset {len(delays) + 1} attempts ago; "
                        "Graph is still replicating it, the request will be retried)",
                        code="EmailNotReplicatedYet",
                        graph_request_id=error.graph_request_id,
                        status=error.status,
                    ) from None
                log.warning("Graph does not see the new email yet (attempt %d); retrying", attempt + 1)
                await asyncio.sleep(delays[attempt])
                attempt += 1

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
                lease_owner=None,
                lease_until=None,
                error_code=None,
                error_message=None,
                history=record.with_event("dryRunPassed"),
            )

        if self._gate is not None:
            await self._gate.check()  # nothing is written while the breaker is open

        patched = bool(request.new_email) and (user.mail or "").lower() != target.lower()
        if patched:
            await self._switch_email(user, target)

        explicit = request.invite_redirect_url or self._settings.invite_redirect_url
        token_tenant = None if explicit or self._settings.tenant_id else await self._graph.tenant_id()
        default_redirect = self._settings.my_apps_url(token_tenant)
        body = InvitationBody.for_request(request, user, target, self._settings, default_redirect=default_redirect)
        if self._gate is not None:
            record = await self._gate.pace(record, self._status)
        # Written before sending: a later delivery then knows an invitation may have gone out
        # and checks by read-back instead of sending a second one.
        earlier_attempt = record.invite_started_at
        record = await self._status.save(
            record,
            user_id=user.id,
            masked_email=mask_email(target),
            phase="Inviting",
            invite_started_at=earlier_attempt or utcnow(),
            invite_slot=None,
            send_invitation_message=body.send_message,
        )
        try:
            sent = await self._invite(record.request_id, body, sent_after=earlier_attempt, patched=patched)
        except HoldError:
            # Graph refused this send outright (the block): no invitation went out in this delivery.
            await self._status.save(record, invite_started_at=earlier_attempt)
            raise
        after = await self._graph.read_user(user.id)
        verified = after.external_user_state == "PendingAcceptance"
        if not verified:
            log.warning(
                "Graph accepted the reset but the user reads back as %s",
                after.external_user_state,
            )
        log.info("reset invitation %s sent to %s", sent.id, mask_email(target))
        return await self._status.save(
            record,
            status=Status.SUCCEEDED,
            phase="Done",
            finished_at=utcnow(),
            lease_owner=None,
            lease_until=None,
            invitation_id=sent.id,
            graph_request_id=sent.graph_request_id,
            verified=verified,
            error_code=None,
            error_message=None,
            # Kept only when no email goes out: then an admin must hand the link over.
            redeem_url=None if body.send_message else sent.redeem_url,
            history=record.with_event("succeeded", confirmedByReadBack=sent.confirmed_by_read_back or None),
        )
