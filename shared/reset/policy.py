"""Safety rules a reset must pass before anything is written to the directory."""

from __future__ import annotations

from shared.platform.errors import PolicyRefusedError
from shared.platform.logs import mask_email
from shared.platform.settings import Settings
from shared.reset.contract import ResetRequest, is_invitable_address
from shared.reset.graph import GuestUser


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


def new_sign_in_email(request: ResetRequest, user: GuestUser) -> str | None:
    """The address the request switches the guest to: ``newEmail``, or its mail moved to ``moveToDomain``.

    A computed address then passes every rule a given ``newEmail`` passes (domain settings,
    owned by nobody else): moving a domain is an email switch like any other.
    """
    if not request.move_to_domain:
        return request.new_email
    if not user.mail:
        raise PolicyRefusedError(
            f"user {user.id} has no mail to move to {request.move_to_domain}; give newEmail instead",
            code="NoEmailOnUser",
        )
    moved = f"{user.mail.rsplit('@', 1)[0]}@{request.move_to_domain}"
    if not is_invitable_address(moved):
        raise PolicyRefusedError(
            f"{mask_email(moved)} is not an address Graph accepts for an invitation; give newEmail instead",
            code="InvalidNewEmail",
        )
    return moved


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


def check_directory_roles(user: GuestUser, roles: list[str]) -> None:
    """App-only resets cannot touch users who hold directory roles: say so before Graph does."""
    if roles:
        raise PolicyRefusedError(
            f"user {user.id} holds directory role(s) {', '.join(sorted(roles))}; an app cannot "
            "reset it. Remove the roles or reset it in the admin center as a User Administrator",
            code="TargetHasDirectoryRoles",
        )
