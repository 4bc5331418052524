"""Safety rules a reset must pass before anything is written to the directory.

``request_refusals`` holds the rules that need only the request and the settings, so intake
answers them at once (400, field by field) and the worker applies the very same ones to queue
messages; the rules that need the directory (guest or not, owner of an address, roles) follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.platform.errors import PolicyRefusedError
from shared.platform.logs import mask_email
from shared.platform.settings import Settings
from shared.reset.contract import ResetRequest, is_invitable_address
from shared.reset.graph import GuestUser, RoleAssignment

# Wording fixed by issue 12 (the Entra troubleshooting page says why: app-sent invitations omit it).
CUSTOM_BODY_DROPPED = "customizedMessageBody is dropped by Graph for app-only invitations; " + (
    "send your own email with the redeem URL instead"
)
LANGUAGE_IGNORED = "messageLanguage is ignored by Graph when customizedMessageBody is given; send one of them, not both"


@dataclass(frozen=True)
class Refusal:
    """One rule a request breaks: the field, a stable code and what to do about it."""

    field: str
    code: str
    message: str


def _url_key(url: str) -> tuple[str, str, int | None, str, str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, a netloc NFKC would change
        return None
    if parts.scheme.lower() != "https" or not parts.hostname or "@" in parts.netloc:
        return None
    return (parts.scheme.lower(), parts.hostname.lower(), port, parts.path.rstrip("/"), parts.query)


def redirect_allowed(url: str, allowlist: tuple[str, ...]) -> bool:
    """https, same host and port as an allowlisted URL, its path or a sub-path, its query if it has one."""
    wanted = _url_key(url)
    if wanted is None:
        return False
    for entry in allowlist:
        allowed = _url_key(entry)
        if allowed is None or wanted[:3] != allowed[:3]:
            continue
        path_ok = wanted[3] == allowed[3] or wanted[3].startswith(allowed[3] + "/")
        if path_ok and (not allowed[4] or wanted[4] == allowed[4]):
            return True
    return False


def email_domain_refusal(email: str, settings: Settings, field: str) -> Refusal | None:
    """An address outside the allowed domains, or in a blocked one (settings named, never their values)."""
    return _domain_refusal(email.rsplit("@", 1)[-1].lower(), mask_email(email) or "***", settings, field)


def _domain_refusal(domain: str, shown: str, settings: Settings, field: str) -> Refusal | None:
    if domain in settings.blocked_email_domains:
        return Refusal(field, "EmailDomainBlocked", f"{shown} is in a blocked domain (BLOCKED_EMAIL_DOMAINS)")
    if settings.allowed_email_domains and domain not in settings.allowed_email_domains:
        return Refusal(field, "EmailDomainNotAllowed", f"{shown} is not in an allowed domain (ALLOWED_EMAIL_DOMAINS)")
    return None


def request_refusals(request: ResetRequest, settings: Settings) -> list[Refusal]:
    """Every rule the request breaks that the directory is not needed to judge."""
    found: list[Refusal] = []
    if request.customized_message_body:
        if not settings.allow_custom_message_body:
            found.append(Refusal("customizedMessageBody", "CustomMessageNotSupported", CUSTOM_BODY_DROPPED))
        if request.message_language:
            found.append(Refusal("messageLanguage", "CustomMessageNotSupported", LANGUAGE_IGNORED))
    addresses = [("newEmail", request.new_email)] + [
        (f"ccRecipients[{i}]", cc) for i, cc in enumerate(request.cc_recipients or ())
    ]
    for field, address in addresses:
        refusal = email_domain_refusal(address, settings, field) if address else None
        if refusal is not None:
            found.append(refusal)
    if request.move_to_domain:
        # The local part is the guest's, known only from the directory; the domain rule needs none.
        domain = request.move_to_domain.lower()
        refusal = _domain_refusal(domain, domain, settings, "moveToDomain")
        if refusal is not None:
            found.append(refusal)
    if request.invite_redirect_url and not redirect_allowed(request.invite_redirect_url, settings.redirect_allowlist):
        found.append(
            Refusal(
                "inviteRedirectUrl",
                "RedirectNotAllowed",
                "is not on the redirect allowlist (REDIRECT_ALLOWED_URLS); leave it out to use the default",
            )
        )
    return found


def check_request(request: ResetRequest, settings: Settings) -> None:
    """Raise PolicyRefusedError with every refusal of ``request_refusals`` (the first one's code)."""
    found = request_refusals(request, settings)
    if found:
        raise PolicyRefusedError("; ".join(f"{r.field}: {r.message}" for r in found), code=found[0].code)


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
    refusal = email_domain_refusal(email, settings, "email")
    if refusal is not None:
        raise PolicyRefusedError(refusal.message, code=refusal.code)


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
    than guessed. With ``moveToDomain``, that address's local part at the new domain: an email
    switch like ``newEmail``, under the same rules.
    """
    if request.new_email:
        return request.new_email
    current = _current_address(request, user)
    return moved_address(current, request.move_to_domain) if request.move_to_domain else current


def moved_address(current: str, domain: str) -> str:
    """``current``'s local part at ``domain`` (a partner renamed its domain)."""
    moved = f"{current.rsplit('@', 1)[0]}@{domain}"
    if not is_invitable_address(moved):
        raise PolicyRefusedError(
            f"{mask_email(moved)} is not an address Graph accepts for an invitation; give newEmail instead",
            code="InvalidNewEmail",
        )
    return moved


def _current_address(request: ResetRequest, user: GuestUser) -> str:
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
