"""What the app needs from Microsoft Graph: our own frozen models and the gateway Protocol.

The rest of the app depends on ``GraphGateway`` and these models, never on kiota objects;
``shared.reset.graph_sdk`` implements the Protocol with msgraph-sdk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from shared.platform.settings import Settings
from shared.reset.contract import ResetRequest

# Only the properties the reset needs; explicit so Graph does less work and we parse less.
USER_SELECT = (
    "id",
    "displayName",
    "userPrincipalName",
    "mail",
    "otherMails",
    "userType",
    "externalUserState",
    "externalUserStateChangeDateTime",
)


@dataclass(frozen=True)
class GuestUser:
    """A directory user as the reset sees it."""

    id: str
    user_principal_name: str
    display_name: str | None
    mail: str | None
    other_mails: tuple[str, ...]
    user_type: str | None
    external_user_state: str | None
    external_user_state_changed_at: datetime | None

    @property
    def is_guest(self) -> bool:
        return (self.user_type or "").lower() == "guest"

    @property
    def is_external(self) -> bool:
        """Invited through B2B (guest or external member), as opposed to an internal account."""
        return self.external_user_state is not None or "#EXT#" in self.user_principal_name.upper()

    def owns_address(self, address: str) -> bool:
        wanted = address.lower()
        return wanted == (self.mail or "").lower() or wanted in {m.lower() for m in self.other_mails}

    @classmethod
    def from_graph(cls, data: dict[str, Any]) -> GuestUser:
        changed = data.get("externalUserStateChangeDateTime")
        return cls(
            id=str(data["id"]),
            user_principal_name=str(data.get("userPrincipalName") or ""),
            display_name=data.get("displayName"),
            mail=data.get("mail"),
            other_mails=tuple(data.get("otherMails") or ()),
            user_type=data.get("userType"),
            external_user_state=data.get("externalUserState"),
            external_user_state_changed_at=_parse_time(changed) if changed else None,
        )


@dataclass(frozen=True)
class RoleAssignment:
    """A Microsoft Entra role the user holds, directly or through a role-assignable group."""

    role_definition_id: str
    directory_scope_id: str
    principal_id: str

    def describe(self, user_id: str) -> str:
        scope = "tenant-wide" if self.directory_scope_id in ("/", "") else f"at scope {self.directory_scope_id}"
        held = "" if self.principal_id.lower() == user_id.lower() else f" through group {self.principal_id}"
        return f"role {self.role_definition_id} {scope}{held}"

    @classmethod
    def from_graph(cls, data: dict[str, Any]) -> RoleAssignment:
        return cls(
            role_definition_id=str(data.get("roleDefinitionId") or ""),
            directory_scope_id=str(data.get("directoryScopeId") or "/"),
            principal_id=str(data.get("principalId") or ""),
        )


@dataclass(frozen=True)
class SentInvitation:
    """Graph's answer to the reset invitation (the redeem URL is a secret: never log it)."""

    id: str | None
    status: str | None
    redeem_url: str | None
    graph_request_id: str | None
    confirmed_by_read_back: bool = False


@dataclass(frozen=True)
class InvitationBody:
    """The ``POST /invitations`` body for a redemption reset; built in one place."""

    user_id: str
    email: str
    redirect_url: str
    send_message: bool
    language: str | None = None
    cc: tuple[str, ...] = ()
    custom_body: str | None = None

    @classmethod
    def for_request(
        cls, request: ResetRequest, user: GuestUser, email: str, settings: Settings, *, default_redirect: str
    ) -> InvitationBody:
        return cls(
            user_id=user.id,
            email=email,
            redirect_url=request.invite_redirect_url or settings.invite_redirect_url or default_redirect,
            send_message=(
                request.send_invitation_message
                if request.send_invitation_message is not None
                else settings.send_invitation_message
            ),
            language=request.message_language,
            cc=tuple(request.cc_recipients or ()),
            custom_body=request.customized_message_body,
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "invitedUserEmailAddress": self.email,
            "inviteRedirectUrl": self.redirect_url,
            "invitedUser": {"id": self.user_id},
            "resetRedemption": True,
            "sendInvitationMessage": self.send_message,
        }
        info: dict[str, Any] = {}
        if self.language:
            info["messageLanguage"] = self.language
        if self.cc:
            info["ccRecipients"] = [{"emailAddress": {"address": a}} for a in self.cc]
        if self.custom_body:
            info["customizedMessageBody"] = self.custom_body
        if info:
            body["invitedUserMessageInfo"] = info
        return body


class GraphGateway(Protocol):
    """The Graph calls a reset makes; each method says what it does."""

    async def find_user(
        self, *, user_id: str | None = None, upn: str | None = None, email: str | None = None
    ) -> GuestUser:
        """The one user named by id, UPN or email (mail or otherMails); raises if none or many."""
        ...

    async def users_owning_email(self, email: str) -> list[GuestUser]:
        """Every user whose mail, otherMails or proxyAddresses holds ``email``."""
        ...

    async def role_assignments(self, user_id: str) -> list[RoleAssignment]:
        """The Microsoft Entra roles the user holds, at any scope (ROLE_CHECK says whether group-held count)."""
        ...

    async def wait_for_address(self, user_id: str, email: str, *, within: float) -> bool:
        """Read the user until ``email`` shows in mail or otherMails (our own PATCH replicating).

        Bounded: gives up after ``within`` seconds and says whether the address showed.
        """
        ...

    async def tenant_id(self) -> str | None:
        """The directory the app works in, from its Graph token (``tid``); None for the emulator."""
        ...

    async def set_sign_in_email(self, user: GuestUser, email: str) -> None:
        """Make ``email`` the user's mail and add it to otherMails, keeping the existing entries."""
        ...

    async def reset_redemption(self, body: InvitationBody, *, sent_after: datetime | None = None) -> SentInvitation:
        """Send the reset invitation once; ``sent_after`` marks an earlier attempt to check first."""
        ...

    async def read_user(self, user_id: str) -> GuestUser:
        """Fresh read of the user, to confirm the reset took effect."""
        ...

    async def aclose(self) -> None: ...


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
