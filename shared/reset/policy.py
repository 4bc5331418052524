"""Safety rules a reset must pass before anything is written to the directory."""

from __future__ import annotations

from shared.platform.errors import PolicyRefusedError
from shared.platform.logs import mask_email
from shared.platform.settings import Settings
from shared.reset.contract import ResetRequest
from shared.reset.graph import GuestUser, RoleAssignment


def check_user(user: GuestUser, settings: Settings) -> None:
    """Guests only (unless members are allowed), and never an internal account."""
    if not user.is_guest and not settings.allow_member_reset:
        raise PolicyRefusedError(
            f"user {user.id} is a {user.user_type or 'non-guest'} account; only guests are reset "
            "(set ALLOW_MEMBER_RESET=true to allow external members)",
            code="NotAGuest",
        )
    if not user.is_external:
        # The invitation API with an internal user's id converts that account to B2B.
        raise PolicyRefusedError(
            f"user {user.id} is an internal account, not a B2B user; a reset would convert it",
            code="NotAnExternalUser",
        )


def check_email_domain(email: str, settings: Settings) -> None:
    """The address the guest will redeem with must obey the allowed/blocked domain settings."""
    domain = email.rsplit("@", 1)[-1].lower()
    if domain in settings.blocked_email_domains:
        raise PolicyRefusedError(
            f"{mask_email(email)} is in a blocked domain (BLOCKED_EMAIL_DOMAINS)", code="EmailDomainBlocked"
        )
    if settings.allowed_email_domains and domain not in settings.allowed_email_domains:
        raise PolicyRefusedError(
            f"{mask_email(email)} is not in an allowed domain (ALLOWED_EMAIL_DOMAINS)",
            code="EmailDomainNotAllowed",
        )


def check_email_owners(email: str, user: GuestUser, owners: list[GuestUser]) -> None:
    """A new email that already belongs to another user is refused."""
    others = [owner.id for owner in owners if owner.id != user.id]
    if others:
        raise PolicyRefusedError(
            f"{mask_email(email)} already belongs to another user ({others[0]}); "
            "pick another address or clean up the other account first",
            code="EmailInUse",
        )


def choose_target(request: ResetRequest, user: GuestUser) -> str:
    """The address the guest will redeem with; Graph accepts mail or any otherMails entry.

    In order: ``newEmail``; the address the request found the guest by, when the guest holds
    it; ``mail``; the only ``otherMails`` entry. A guest created while a contact held its
    address has no ``mail`` (docs/graph.md), so several otherMails entries are refused rather
    than guessed.
    """
    if request.new_email:
        return request.new_email
    if request.email and user.owns_address(request.email):
        return request.email
    if user.mail:
        return user.mail
    distinct: dict[str, str] = {}
    for address in user.other_mails:
        distinct.setdefault(address.lower(), address)
    others = list(distinct.values())
    if len(others) == 1:
        return others[0]
    if others:
        raise PolicyRefusedError(
            f"user {user.id} has no mail and {len(others)} otherMails addresses; say which one the guest "
            "redeems with: name the user by email (that address) or give newEmail",
            code="AmbiguousTargetEmail",
        )
    raise PolicyRefusedError(
        f"user {user.id} has no mail and no otherMails to invite; give newEmail", code="NoEmailOnUser"
    )


def check_role_assignments(user: GuestUser, assignments: list[RoleAssignment]) -> None:
    """App-only resets cannot touch users who hold Microsoft Entra roles: say so before Graph does."""
    if assignments:
        held = "; ".join(sorted({a.describe(user.id) for a in assignments}))
        raise PolicyRefusedError(
            f"user {user.id} holds Microsoft Entra role(s): {held}; an app cannot reset it. Remove the "
            "role assignments or reset it in the admin center as a Helpdesk or User Administrator",
            code="TargetHasDirectoryRoles",
        )
