"""The reset itself: find the user, apply the safety rules, switch the email, invite, verify."""

from __future__ import annotations

from shared.platform.errors import PolicyRefusedError
from shared.platform.logs import app_logger, bind, mask_email
from shared.platform.settings import Settings
from shared.reset import policy
from shared.reset.contract import ResetRequest
from shared.reset.graph import GraphGateway, GuestUser, InvitationBody
from shared.reset.status import Status, StatusRecord, StatusStore, utcnow

log = app_logger()


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
                lease_owner=None,
                lease_until=None,
                error_code=None,
                error_message=None,
                history=record.with_event("dryRunPassed"),
            )

        if request.new_email and (user.mail or "").lower() != request.new_email.lower():
            await self._graph.set_sign_in_email(user, request.new_email)
            log.info("sign-in email switched to %s", mask_email(request.new_email))

        body = InvitationBody.for_request(request, user, target, self._settings)
        # Written before sending: a later delivery then knows an invitation may have gone out
        # and checks by read-back instead of sending a second one.
        earlier_attempt = record.invite_started_at
        record = await self._status.save(
            record,
            user_id=user.id,
            masked_email=mask_email(target),
            phase="Inviting",
            invite_started_at=earlier_attempt or utcnow(),
            send_invitation_message=body.send_message,
        )
        sent = await self._graph.reset_redemption(body, sent_after=earlier_attempt)
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
