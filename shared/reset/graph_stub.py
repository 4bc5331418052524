"""An in-memory ``GraphGateway`` for fast tests: a directory of users, scripted failures, a record of calls.

It answers as ``SdkGraphGateway`` does against Graph (and the emulator): the same lookups, the
same state changes and the same errors, built by the same ``classify_graph_response``. What it
leaves out on purpose is the SDK adapter's in-process retrying: a scripted failure reaches the
caller as the adapter would raise it once its retries are spent, so one rule exercises the
service's and the worker's decisions without waiting. ``call_with_retries`` is tested on its own.
Not modelled either: address syntax checks (the contract validates addresses first) and Graph's
replication lag (the emulator's stale reads and replication lag; here a scripted mismatch 400
stands for it). Roles are role assignments: a user's own (any scope) and those of the
role-assignable groups it belongs to (``add_role_group``); ``role_check`` says whether the
gateway reports the group-held ones, as ``ROLE_CHECK`` does for the SDK adapter.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from shared.platform.errors import (
    AmbiguousOutcomeError,
    AmbiguousUserError,
    ResetError,
    TransientError,
    UserNotFoundError,
    classify_graph_response,
)
from shared.platform.logs import mask_email
from shared.platform.scripted import ErrorSource, FailureScript
from shared.reset.graph import USER_SELECT, GuestUser, InvitationBody, RoleAssignment, SentInvitation
from shared.reset.graph_sdk import _AMBIGUOUS_STATUSES as AMBIGUOUS_STATUSES
from shared.reset.graph_sdk import CLOCK_SKEW

T = TypeVar("T")

# Each gateway method and the HTTP method the SDK adapter sends for it.
HTTP_METHODS: dict[str, str] = {
    "find_user": "GET",
    "users_owning_email": "GET",
    "role_assignments": "GET",
    "wait_for_address": "GET",
    "set_sign_in_email": "PATCH",
    "reset_redemption": "POST",
    "read_user": "GET",
}
WRITES = frozenset(name for name, verb in HTTP_METHODS.items() if verb != "GET")

# Graph's own texts for the failures the stub produces (the emulator sends the same ones).
NOT_FOUND = "Resource '{}' does not exist or one of its queried reference-property objects are not present."
EMAIL_MISMATCH = (
    "The email you're using to invite this user doesn't match any emails on the user object. "
    "Please add this email to the user object and try again."
)
PROXY_CONFLICT = "Another object with the same value for property proxyAddresses already exists."
PRIVILEGES = "Insufficient privileges to complete the operation."
ONE_CC = "Only one cc recipient is supported in invitedUserMessageInfo.ccRecipients."


def graph_failure(
    status: int,
    *,
    write: bool,
    graph_code: str = "",
    message: str | None = None,
    retry_after: str | float | None = None,
    request_id: str | None = None,
) -> ResetError:
    """The error the SDK adapter raises when Graph answers ``status`` (no body unless code/message given)."""
    body = {"error": {"code": graph_code, "message": message}} if graph_code or message else None
    headers = {"request-id": request_id or str(uuid.uuid4())}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    error = classify_graph_response(status, body, headers)
    if write and status in AMBIGUOUS_STATUSES:
        return AmbiguousOutcomeError(
            error.message,
            code=error.code,
            graph_request_id=error.graph_request_id,
            status=error.status,
            retry_after=error.retry_after,
        )
    return error


TransitFault = Literal["timeout", "dropped", "unreachable"]


def transit_failure(method: str, fault: TransitFault, *, write: bool) -> ResetError:
    """The error the SDK adapter raises when the call gets no answer (httpx timeout, reset, refusal)."""
    if fault == "unreachable":
        return TransientError("cannot reach Graph: [Errno 111] Connection refused", code="GraphUnreachable")
    kind = AmbiguousOutcomeError if write else TransientError
    name = "ReadTimeout" if fault == "timeout" else "RemoteProtocolError"
    return kind(
        f"Graph call {HTTP_METHODS.get(method, method)} failed in transit ({name})",
        code="GraphTimeout" if fault == "timeout" else "GraphConnectionLost",
    )


def graph_time(value: datetime | None) -> str | None:
    """Graph's timestamp form: UTC, whole seconds, ``Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


@dataclass
class StubInvitation:
    """One reset invitation the stub accepted (the redeem URL is as secret here as in Graph)."""

    id: str
    user_id: str
    body: InvitationBody
    redeem_url: str
    at: datetime


@dataclass
class DirectoryUser:
    """A user as the stub's directory holds it; change it freely between calls."""

    id: str
    user_principal_name: str = ""
    display_name: str | None = None
    mail: str | None = None
    other_mails: list[str] = field(default_factory=list)
    user_type: str | None = "Guest"
    external_user_state: str | None = None
    external_user_state_changed_at: datetime | None = None
    proxy_addresses: list[str] = field(default_factory=list)
    role_assignments: list[RoleAssignment] = field(default_factory=list)  # held directly, any scope
    invitations: list[StubInvitation] = field(default_factory=list)

    def to_graph(self) -> dict[str, Any]:
        """The JSON Graph returns for the adapter's ``$select``."""
        full = {
            "id": self.id,
            "displayName": self.display_name,
            "userPrincipalName": self.user_principal_name,
            "mail": self.mail,
            "otherMails": list(self.other_mails),
            "userType": self.user_type,
            "externalUserState": self.external_user_state,
            "externalUserStateChangeDateTime": graph_time(self.external_user_state_changed_at),
        }
        return {name: full[name] for name in USER_SELECT}

    def to_guest(self) -> GuestUser:
        """What the gateway hands the app: parsed from Graph's JSON, as the adapter does."""
        return GuestUser.from_graph(self.to_graph())

    def owns(self, address: str) -> bool:
        """``mail`` or ``otherMails`` holds ``address`` (what ``$filter`` and the invitation API check)."""
        wanted = address.lower()
        return wanted in {a.lower() for a in (self.mail, *self.other_mails) if a}

    def has_smtp(self, address: str) -> bool:
        wanted = "smtp:" + address.lower()
        return any(p.lower() == wanted for p in self.proxy_addresses)

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> DirectoryUser:
        """A user in Graph's JSON, as the emulator's fixture holds it (its roles come with ``load_fixture``)."""
        changed = data.get("externalUserStateChangeDateTime")
        return cls(
            id=str(data["id"]),
            user_principal_name=str(data.get("userPrincipalName") or ""),
            display_name=data.get("displayName"),
            mail=data.get("mail"),
            other_mails=list(data.get("otherMails") or ()),
            user_type=data.get("userType"),
            external_user_state=data.get("externalUserState"),
            external_user_state_changed_at=datetime.fromisoformat(changed.replace("Z", "+00:00")) if changed else None,
            proxy_addresses=list(data.get("proxyAddresses") or ()),
        )


@dataclass(frozen=True)
class GraphCall:
    """One gateway call as the app made it."""

    method: str
    arguments: dict[str, Any]


def _now() -> datetime:
    return datetime.now(UTC)


class StubGraphGateway:
    """``GraphGateway`` over an in-memory directory (see the module docstring).

    ``fail``/``fail_status``/``fail_transit`` script failures per method name; ``calls`` records
    every call in order; ``invitations`` lists the reset invitations accepted, and each user's
    ``invitations`` the ones it received. A new gateway method is one entry in ``HTTP_METHODS``
    and one ``return await self._call(name, action, **arguments)``: recording and scripted
    failures then come with it.
    """

    def __init__(
        self,
        users: Iterable[DirectoryUser] = (),
        *,
        clock: Callable[[], datetime] = _now,
        role_check: str = "transitive",
        tenant: str | None = None,
    ) -> None:
        self._users: dict[str, DirectoryUser] = {}
        self._clock = clock
        self.role_check = role_check
        self.tenant = tenant
        # Role-assignable groups: id -> (member ids, the group's role assignments).
        self._role_groups: dict[str, tuple[set[str], list[RoleAssignment]]] = {}
        self.calls: list[GraphCall] = []
        self.invitations: list[StubInvitation] = []  # every reset invitation accepted, in order
        self.failures = FailureScript(HTTP_METHODS, writes=WRITES)
        self.closed = False
        for user in users:
            self.add_user(user)

    # the directory ---------------------------------------------------------------------

    def add_user(self, user: DirectoryUser) -> DirectoryUser:
        """Add or replace a user (by id); returns the stored, live object."""
        self._users[user.id.lower()] = user
        return user

    def add_graph_user(self, data: Mapping[str, Any]) -> DirectoryUser:
        return self.add_user(DirectoryUser.from_graph(data))

    def add_role_group(self, group_id: str, members: Iterable[str], roles: Iterable[RoleAssignment]) -> None:
        """A role-assignable group: its members hold its roles (role-assignable groups hold no groups)."""
        self._role_groups[group_id.lower()] = ({m.lower() for m in members}, list(roles))

    def load_fixture(self, data: Mapping[str, Any]) -> None:
        """The emulator's fixture (users, role-assignable groups, role assignments), as the emulator loads it."""
        for user in data.get("users") or ():
            self.add_graph_user(user)
        assignments = [
            (str(a["principalId"]).lower(), RoleAssignment.from_graph(a)) for a in data.get("roleAssignments") or ()
        ]
        for principal, assignment in assignments:
            if principal in self._users:
                self._users[principal].role_assignments.append(assignment)
        for group in data.get("groups") or ():
            if group.get("isAssignableToRole"):
                gid = str(group["id"]).lower()
                roles = [a for principal, a in assignments if principal == gid]
                self.add_role_group(gid, group.get("members") or (), roles)

    def user(self, key: str) -> DirectoryUser:
        """The stored user by id or UPN (KeyError if none): inspect or change it in a test."""
        found = self._find(key)
        if found is None:
            raise KeyError(key)
        return found

    @property
    def users(self) -> list[DirectoryUser]:
        return list(self._users.values())

    # what happened -----------------------------------------------------------------------

    def calls_to(self, method: str) -> list[GraphCall]:
        return [call for call in self.calls if call.method == method]

    @property
    def writes(self) -> list[GraphCall]:
        """Every call that changes the directory (PATCH user, POST invitation), in order."""
        return [call for call in self.calls if call.method in WRITES]

    # scripted failures -------------------------------------------------------------------

    def fail(self, method: str, error: ErrorSource, *, times: int | None = 1, applied: bool = False) -> None:
        """The next ``times`` calls of ``method`` raise ``error`` (an error or a factory of one).

        ``applied=True`` (writes only): the call changes the directory first, then raises, as
        when Graph processed a request whose answer was lost.
        """
        self.failures.add(method, error, times=times, applied=applied)

    def fail_status(
        self,
        method: str,
        status: int,
        *,
        graph_code: str = "",
        message: str | None = None,
        retry_after: str | float | None = None,
        times: int | None = 1,
        applied: bool = False,
    ) -> None:
        """Graph answers ``status`` to the next ``times`` calls: the adapter's error for it is raised."""
        write = method in WRITES

        def make() -> ResetError:
            return graph_failure(status, write=write, graph_code=graph_code, message=message, retry_after=retry_after)

        self.fail(method, make, times=times, applied=applied)

    def fail_transit(
        self, method: str, fault: TransitFault = "timeout", *, times: int | None = 1, applied: bool = False
    ) -> None:
        """The next ``times`` calls get no answer (timeout, dropped connection, Graph unreachable)."""
        write = method in WRITES
        self.fail(method, lambda: transit_failure(method, fault, write=write), times=times, applied=applied)

    # GraphGateway ------------------------------------------------------------------------

    async def _call(self, method: str, action: Callable[[], T], **arguments: Any) -> T:
        self.calls.append(GraphCall(method, arguments))
        # A real call gives the event loop away: concurrent deliveries interleave here too.
        await asyncio.sleep(0)
        return self.failures.apply(method, action)

    async def find_user(
        self, *, user_id: str | None = None, upn: str | None = None, email: str | None = None
    ) -> GuestUser:
        return await self._call(
            "find_user", lambda: self._find_user(user_id, upn, email), user_id=user_id, upn=upn, email=email
        )

    async def users_owning_email(self, email: str) -> list[GuestUser]:
        return await self._call("users_owning_email", lambda: self._owners(email), email=email)

    async def role_assignments(self, user_id: str) -> list[RoleAssignment]:
        transitive = self.role_check == "transitive"
        return await self._call(
            "role_assignments", lambda: self._roles(user_id, transitive=transitive), user_id=user_id
        )

    async def wait_for_address(self, user_id: str, email: str, *, within: float) -> bool:
        return await self._call(
            "wait_for_address", lambda: self._require(user_id).owns(email), user_id=user_id, email=email
        )

    async def tenant_id(self) -> str | None:
        return self.tenant

    async def set_sign_in_email(self, user: GuestUser, email: str) -> None:
        await self._call("set_sign_in_email", lambda: self._patch_mail(user, email), user=user, email=email)

    async def reset_redemption(self, body: InvitationBody, *, sent_after: datetime | None = None) -> SentInvitation:
        return await self._call(
            "reset_redemption", lambda: self._reset(body, sent_after), body=body, sent_after=sent_after
        )

    async def read_user(self, user_id: str) -> GuestUser:
        return await self._call("read_user", lambda: self._require(user_id).to_guest(), user_id=user_id)

    async def aclose(self) -> None:
        self.closed = True

    # Graph's behaviour -------------------------------------------------------------------

    def _find(self, key: str) -> DirectoryUser | None:
        lowered = key.lower()
        found = self._users.get(lowered)
        if found is None:
            found = next((u for u in self._users.values() if u.user_principal_name.lower() == lowered), None)
        return found

    def _require(self, key: str) -> DirectoryUser:
        """``GET /users/{id|upn}``: the user, or Graph's 404."""
        found = self._find(key)
        if found is None:
            raise self._graph_error(404, "Request_ResourceNotFound", NOT_FOUND.format(key))
        return found

    @staticmethod
    def _graph_error(status: int, code: str, message: str) -> ResetError:
        return graph_failure(status, write=False, graph_code=code, message=message)

    def _roles(self, user_id: str, *, transitive: bool) -> list[RoleAssignment]:
        """Role assignments filtered on principalId: an unknown principal has none (no 404)."""
        user = self._find(user_id)
        if user is None:
            return []
        held = list(user.role_assignments)
        if transitive:
            for members, roles in self._role_groups.values():
                if user.id.lower() in members:
                    held.extend(roles)
        return held

    def _find_user(self, user_id: str | None, upn: str | None, email: str | None) -> GuestUser:
        if user_id or upn:
            return self._require(user_id or upn or "").to_guest()
        matches = [u for u in self._users.values() if u.owns(email or "")]
        if not matches:
            raise UserNotFoundError(
                f"no user has {mask_email(email)} as mail or in otherMails; "
                "check the address or name the user by userId"
            )
        if len(matches) > 1:
            raise AmbiguousUserError(f"more than one user holds {mask_email(email)}; name the user by userId instead")
        return matches[0].to_guest()

    def _owners(self, email: str) -> list[GuestUser]:
        owners = [u for u in self._users.values() if u.owns(email) or u.has_smtp(email)]
        return [u.to_guest() for u in owners[:5]]  # the adapter asks for $top=5

    def _patch_mail(self, user: GuestUser, email: str) -> None:
        # The body the adapter sends: built from the user it was given, not from a fresh read.
        others = list(user.other_mails)
        if email.lower() not in {m.lower() for m in others}:
            others.append(email)
        stored = self._require(user.id)
        taken = [u for u in self._users.values() if u is not stored and (u.mail or "").lower() == email.lower()]
        taken += [u for u in self._users.values() if u is not stored and u.has_smtp(email)]
        if taken:
            raise self._graph_error(400, "Request_BadRequest", PROXY_CONFLICT)
        stored.mail = email
        stored.other_mails = others
        # Exchange-style: the new primary SMTP address, the old primary kept as a secondary.
        rest = ["smtp:" + p[5:] if p.startswith("SMTP:") else p for p in stored.proxy_addresses]
        stored.proxy_addresses = ["SMTP:" + email, *(p for p in rest if p.lower() != "smtp:" + email.lower())]

    def _confirm_sent(self, user_id: str, since: datetime) -> SentInvitation | None:
        """The adapter's read-back: did an earlier attempt's invitation take effect?"""
        user = self._require(user_id).to_guest()
        changed = user.external_user_state_changed_at
        if user.external_user_state == "PendingAcceptance" and changed and changed >= since - CLOCK_SKEW:
            return SentInvitation(None, "PendingAcceptance", None, None, confirmed_by_read_back=True)
        return None

    def _reset(self, body: InvitationBody, sent_after: datetime | None) -> SentInvitation:
        if sent_after is not None:
            confirmed = self._confirm_sent(body.user_id, sent_after)
            if confirmed is not None:
                return confirmed
        stored = self._find(body.user_id)
        if stored is None:
            raise self._graph_error(404, "Request_ResourceNotFound", NOT_FOUND.format(body.user_id))
        if len(body.cc) > 1:
            raise self._graph_error(400, "BadRequest", ONE_CC)
        if not stored.owns(body.email):
            raise self._graph_error(400, "BadRequest", EMAIL_MISMATCH)
        if self._roles(stored.id, transitive=True):
            # App-only calls cannot reset a user who holds any role, however it holds it.
            raise self._graph_error(403, "Authorization_RequestDenied", PRIVILEGES)
        now = self._clock()
        invitation = StubInvitation(
            id=str(uuid.uuid4()),
            user_id=stored.id,
            body=body,
            redeem_url="https://login.microsoftonline.com/redeem?rd=" + secrets.token_urlsafe(16),
            at=now,
        )
        stored.invitations.append(invitation)
        self.invitations.append(invitation)
        stored.external_user_state = "PendingAcceptance"
        stored.external_user_state_changed_at = now
        return SentInvitation(
            id=invitation.id,
            status="PendingAcceptance",
            redeem_url=invitation.redeem_url,
            graph_request_id=str(uuid.uuid4()),
        )
