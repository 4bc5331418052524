"""The emulated directory: users, OData filters and the Graph behaviours the app relies on.

Everything here is synchronous and in memory; the aiohttp layer (``app.py``) turns
``GraphError`` into Graph's error body. Fields whose name starts with ``_`` are
emulator-only (``_invitationCount``, ``_lastInvitation``, ``_comment``) and never appear in
Graph responses. Besides users, the fixture holds role-assignable ``groups`` (with their
``members``) and directory ``roleAssignments`` (principal, role definition, scope), so roles held
directly, through a group, at an administrative-unit scope or from a custom role all exist.

Fixture users (``users.json``, ids are stable):

- ``5e0c1d2a-0001-4a5b-9c3d-000000000001`` Adele Vance: redeemed guest, happy path.
- ``5e0c1d2a-0002-4a5b-9c3d-000000000002`` Brian Johnson: redeemed guest whose ``otherMails``
  holds ``brian.j@tailspin.example`` (switch-email flow).
- ``5e0c1d2a-0003-4a5b-9c3d-000000000003`` Megan Bowen: internal member (must not be reset).
- ``5e0c1d2a-0004-4a5b-9c3d-000000000004`` Rolf Admin: guest holding User Administrator (403).
- ``5e0c1d2a-0005-4a5b-9c3d-000000000005`` Taken Owner: member owning ``taken@contoso.com``.
- ``5e0c1d2a-0006-...06`` / ``-0007-...07`` Shared Inbox A/B: guests sharing the otherMails
  address ``shared@northwind.example`` (ambiguous lookup).
- ``5e0c1d2a-0008-...08`` .. ``-0010-...10``: plain redeemed guests (Lee, Nestor, Pradeep).
- ``5e0c1d2a-0011-4a5b-9c3d-000000000011`` Pat Pending: guest who never redeemed.
- ``5e0c1d2a-0012-4a5b-9c3d-000000000012`` Gail Group: guest holding Helpdesk Administrator only
  through the role-assignable group ``Helpdesk Admins``.
- ``5e0c1d2a-0013-4a5b-9c3d-000000000013`` Ursula Unit: guest holding a custom role scoped to an
  administrative unit.
- ``5e0c1d2a-0014-4a5b-9c3d-000000000014`` Nora Nomail: guest created while a contact held her
  address: ``mail`` null, the address only in ``otherMails``.
- ``5e0c1d2a-0015-4a5b-9c3d-000000000015`` Otto Twomail: no ``mail``, two ``otherMails``.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

JsonDict = dict[str, Any]

# Graph v1.0 returns these without $select; userType and otherMails are added because the
# project brief asks for them (real Graph omits them, so callers should always $select).
DEFAULT_SELECT: tuple[str, ...] = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
    "userType",
    "otherMails",
)
# Properties Graph knows on a user that fixtures may leave out; $select of them yields null.
STANDARD_PROPERTIES: frozenset[str] = frozenset(DEFAULT_SELECT) | {
    "accountEnabled",
    "ageGroup",
    "assignedLicenses",
    "city",
    "companyName",
    "country",
    "createdDateTime",
    "creationType",
    "deletedDateTime",
    "department",
    "employeeHireDate",
    "employeeId",
    "employeeType",
    "externalUserState",
    "externalUserStateChangeDateTime",
    "faxNumber",
    "identities",
    "imAddresses",
    "lastPasswordChangeDateTime",
    "mailNickname",
    "onPremisesDistinguishedName",
    "onPremisesDomainName",
    "onPremisesImmutableId",
    "onPremisesLastSyncDateTime",
    "onPremisesSamAccountName",
    "onPremisesSecurityIdentifier",
    "onPremisesSyncEnabled",
    "onPremisesUserPrincipalName",
    "passwordPolicies",
    "postalCode",
    "preferredDataLocation",
    "proxyAddresses",
    "securityIdentifier",
    "showInAddressList",
    "signInActivity",
    "signInSessionsValidFromDateTime",
    "state",
    "streetAddress",
    "usageLocation",
}
READ_ONLY_PROPERTIES: frozenset[str] = frozenset(
    {
        "id",
        "createdDateTime",
        "creationType",
        "deletedDateTime",
        "externalUserState",
        "externalUserStateChangeDateTime",
        "lastPasswordChangeDateTime",
        "onPremisesLastSyncDateTime",
        "onPremisesSecurityIdentifier",
        "onPremisesSyncEnabled",
        "proxyAddresses",
        "securityIdentifier",
        "signInActivity",
    }
)
SCALAR_FILTERABLE: tuple[str, ...] = (
    "id",
    "mail",
    "userPrincipalName",
    "userType",
    "displayName",
    "externalUserState",
    "creationType",
    "accountEnabled",
    "givenName",
    "surname",
)
COLLECTION_FILTERABLE: tuple[str, ...] = ("otherMails", "proxyAddresses")
_CANONICAL_FILTER = {p.lower(): p for p in SCALAR_FILTERABLE + COLLECTION_FILTERABLE}

_NOT_FOUND = "Resource '{}' does not exist or one of its queried reference-property objects are not present."
EMAIL_MISMATCH = (
    "The email you're using to invite this user doesn't match any emails on the user object. "
    "Please add this email to the user object and try again."
)
PROXY_CONFLICT = "Another object with the same value for property proxyAddresses already exists."
_FORBIDDEN_EMAIL_CHARS = frozenset('~!#$%^&*()+=[]{}\\/|;:"<>?,')
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")


class GraphError(Exception):
    """A Graph-style failure: HTTP status plus ``error.code``/``message``/``details``."""

    def __init__(self, status: int, code: str, message: str, details: list[JsonDict] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def utc_now_iso() -> str:
    """Graph's timestamp format: ISO 8601, UTC, seconds precision, ``Z`` suffix."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_valid_invite_address(address: str) -> bool:
    """Apply the invitation API's documented character rules to an email address."""
    if address.count("@") != 1 or any(c.isspace() or c in _FORBIDDEN_EMAIL_CHARS for c in address):
        return False
    local, domain = address.split("@")
    if not local or local[0] in ".-" or local[-1] in ".-" or ".." in local:
        return False
    labels = domain.split(".")
    return len(labels) >= 2 and all(_DOMAIN_LABEL.fullmatch(label) for label in labels)


@dataclass(frozen=True)
class Fixture:
    """A directory to load: users, role-assignable groups and role assignments."""

    users: list[JsonDict]
    groups: list[JsonDict]
    role_assignments: list[JsonDict]


def load_fixture(path: str | Path) -> Fixture:
    """Read a fixture: ``{"users": [...], "groups": [...], "roleAssignments": [...]}`` or a bare user list."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    users = data.get("users") if isinstance(data, dict) else data
    if not isinstance(users, list):
        raise ValueError(f"{path}: expected a list of users or an object with 'users'")
    extra = data if isinstance(data, dict) else {}
    return Fixture(
        users=[validate_user(u) for u in users],
        groups=[validate_object(g, "group") for g in extra.get("groups") or []],
        role_assignments=[validate_assignment(a) for a in extra.get("roleAssignments") or []],
    )


def validate_object(item: Any, kind: str) -> JsonDict:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        raise ValueError(f"a {kind} must be an object with a non-empty string 'id': {item!r}")
    return copy.deepcopy(item)


def validate_assignment(item: Any) -> JsonDict:
    """A role assignment needs its principal and role definition; the scope defaults to the tenant."""
    stored = validate_object(item, "role assignment")
    for key in ("principalId", "roleDefinitionId"):
        if not isinstance(stored.get(key), str) or not stored[key]:
            raise ValueError(f"role assignment {stored['id']} needs a string {key!r}")
    stored.setdefault("directoryScopeId", "/")
    return stored


def validate_user(user: Any) -> JsonDict:
    """Check the minimum a stored user needs (a string id) and return a private copy."""
    if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not user["id"]:
        raise ValueError(f"a user must be an object with a non-empty string 'id': {user!r}")
    stored: JsonDict = copy.deepcopy(user)
    stored.setdefault("_invitationCount", 0)
    return stored


# --- $filter ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    """``prop eq 'v'`` or ``prop in ('a', 'b')`` on a single-valued property."""

    prop: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class AnyEq:
    """``prop/any(x:x eq 'v')`` on a collection property (an advanced query)."""

    prop: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class BoolOp:
    """``and``/``or`` over two or more clauses."""

    op: str
    parts: tuple[FilterNode, ...]


FilterNode = Compare | AnyEq | BoolOp

_TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|([()/:,])|([A-Za-z_][A-Za-z0-9_]*)|(\S))")


class FilterSyntaxError(ValueError):
    """The ``$filter`` text is not in the grammar the emulator understands."""


class _FilterParser:
    """Recursive descent over: or > and > (group | comparison | any-lambda)."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        for m in _TOKEN.finditer(text.strip()):
            if m.group(4):
                raise FilterSyntaxError(f"unexpected character {m.group(4)!r}")
            if m.group(1):
                self.tokens.append(("str", m.group(1)[1:-1].replace("''", "'")))
            elif m.group(2):
                self.tokens.append(("punct", m.group(2)))
            elif m.group(3):
                self.tokens.append(("word", m.group(3)))
        self.pos = 0

    def parse(self) -> FilterNode:
        node = self._or()
        if self.pos != len(self.tokens):
            raise FilterSyntaxError(f"unexpected {self.tokens[self.pos][1]!r}")
        return node

    def _peek_word(self) -> str | None:
        if self.pos < len(self.tokens) and self.tokens[self.pos][0] == "word":
            return self.tokens[self.pos][1].lower()
        return None

    def _take(self, kind: str, value: str | None = None) -> str:
        if self.pos >= len(self.tokens):
            raise FilterSyntaxError("unexpected end of filter")
        tkind, tval = self.tokens[self.pos]
        if tkind != kind or (value is not None and tval.lower() != value):
            raise FilterSyntaxError(f"expected {value or kind}, got {tval!r}")
        self.pos += 1
        return tval

    def _bool(self, op: str, sub: Any) -> FilterNode:
        parts = [sub()]
        while self._peek_word() == op:
            self.pos += 1
            parts.append(sub())
        return parts[0] if len(parts) == 1 else BoolOp(op, tuple(parts))

    def _or(self) -> FilterNode:
        return self._bool("or", self._and)

    def _and(self) -> FilterNode:
        return self._bool("and", self._atom)

    def _atom(self) -> FilterNode:
        if self.pos < len(self.tokens) and self.tokens[self.pos] == ("punct", "("):
            self.pos += 1
            node = self._or()
            self._take("punct", ")")
            return node
        prop = self._take("word")
        if self.pos < len(self.tokens) and self.tokens[self.pos] == ("punct", "/"):
            self.pos += 1
            self._take("word", "any")
            self._take("punct", "(")
            var = self._take("word").lower()
            self._take("punct", ":")
            if self._take("word").lower() != var:
                raise FilterSyntaxError("lambda body must compare the lambda variable")
            values = self._operator_values()
            self._take("punct", ")")
            return AnyEq(prop, values)
        return Compare(prop, self._operator_values())

    def _operator_values(self) -> tuple[str, ...]:
        op = self._take("word").lower()
        if op == "eq":
            return (self._literal(),)
        if op == "in":
            self._take("punct", "(")
            values = [self._literal()]
            while self.pos < len(self.tokens) and self.tokens[self.pos] == ("punct", ","):
                self.pos += 1
                values.append(self._literal())
            self._take("punct", ")")
            return tuple(values)
        raise FilterSyntaxError(f"unsupported operator {op!r} (emulator supports eq, in)")

    def _literal(self) -> str:
        word = self._peek_word()
        if word in ("true", "false"):
            self.pos += 1
            return word
        return self._take("str").lower()


def parse_filter(text: str) -> FilterNode:
    """Parse a ``$filter`` into a small AST; raise ``FilterSyntaxError`` when unparseable."""
    return _FilterParser(text).parse()


def matches(item: Mapping[str, Any], node: FilterNode) -> bool:
    """Evaluate a parsed filter on one object (the index-free path, for lagging copies)."""
    if isinstance(node, BoolOp):
        results = (matches(item, part) for part in node.parts)
        return all(results) if node.op == "and" else any(results)
    prop = next((k for k in item if k.lower() == node.prop.lower()), node.prop)
    return bool(set(_index_values(item, prop)) & set(node.values))


def compared_values(node: FilterNode, prop: str) -> set[str] | None:
    """The values ``prop eq``/``in`` must have under ``node`` (None when the filter does not say)."""
    if isinstance(node, Compare) and node.prop.lower() == prop.lower():
        return set(node.values)
    if isinstance(node, BoolOp) and node.op == "and":
        for part in node.parts:
            found = compared_values(part, prop)
            if found is not None:
                return found
    return None


def _unsupported_filter(prop: str) -> GraphError:
    return GraphError(
        400,
        "Request_UnsupportedQuery",
        f"Unsupported or invalid query filter clause specified for property '{prop}' of resource 'User'.",
    )


# --- directory -------------------------------------------------------------------------


def _index_values(user: Mapping[str, Any], prop: str) -> list[str]:
    value = user.get(prop)
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str):
        return [value.lower()]
    if isinstance(value, list):
        return [v.lower() for v in value if isinstance(v, str)]
    return []


def _strip_smtp(address: str) -> str:
    return address[5:] if address.lower().startswith("smtp:") else address


class Directory:
    """In-memory users with value indexes so lookups stay O(1) for benchmark-sized tenants."""

    def __init__(self, users: Iterable[JsonDict] = ()) -> None:
        self._users: dict[str, JsonDict] = {}
        self._order: dict[str, int] = {}
        self._next_order = 0
        self._index: dict[str, dict[str, set[str]]] = {}
        self._known: dict[str, str] = {}
        # Replication lag (Graph is eventually consistent): after a reset invitation, this many
        # reads of the user by id or UPN still return the user as it was before the invitation.
        self.stale_reads = 0
        self._stale: dict[str, tuple[JsonDict, int]] = {}
        # Replication lag after PATCH: for this many seconds the user reads back (by id or UPN),
        # is found by advanced queries (the eventually consistent index) and is checked by the
        # invitation service as it was before the PATCH; each part can be switched off.
        self.replication_lag = 0.0
        self.lag_reads = True
        self.lag_index = True
        self.lag_invitations = True
        self._lagging: dict[str, tuple[JsonDict, float]] = {}
        self._groups: dict[str, JsonDict] = {}
        self._assignments: list[JsonDict] = []
        self.replace_all(users)

    # emulator control -------------------------------------------------------------------

    def load(self, fixture: Fixture) -> None:
        """Replace users, groups and role assignments with the fixture's."""
        self.replace_all(fixture.users)
        self._groups = {g["id"].lower(): copy.deepcopy(g) for g in fixture.groups}
        self._assignments = copy.deepcopy(fixture.role_assignments)

    def replace_all(self, users: Iterable[JsonDict]) -> None:
        """Drop every user and load ``users`` (fixture order is kept for list results)."""
        self._users.clear()
        self._order.clear()
        self._stale.clear()
        self._lagging.clear()
        self._index = {p: {} for p in SCALAR_FILTERABLE + COLLECTION_FILTERABLE}
        self._index["_smtp"] = {}
        self._known = {p.lower(): p for p in STANDARD_PROPERTIES}
        for user in users:
            self.put_user(user)

    def put_user(self, user: JsonDict) -> JsonDict:
        """Add or replace one user (validated, copied) and return the stored copy."""
        stored = validate_user(user)
        key = stored["id"].lower()
        if key in self._users:
            self._unindex(key, self._users[key])
        else:
            self._order[key] = self._next_order
            self._next_order += 1
        self._users[key] = stored
        self._reindex(key, stored)
        for prop in stored:
            if not prop.startswith(("_", "@")):
                self._known.setdefault(prop.lower(), prop)
        return copy.deepcopy(stored)

    def remove_user(self, user_id: str) -> bool:
        """Delete a user; return whether it existed."""
        key = user_id.lower()
        user = self._users.pop(key, None)
        if user is None:
            return False
        self._unindex(key, user)
        del self._order[key]
        return True

    def __len__(self) -> int:
        return len(self._users)

    def snapshot(self) -> list[JsonDict]:
        """Every user including emulator-only fields, as independent copies."""
        return copy.deepcopy(list(self._users.values()))

    def raw_user(self, key: str) -> JsonDict | None:
        """A copy of one stored user (by id or UPN), emulator-only fields included."""
        found = self._find(key)
        return copy.deepcopy(found) if found is not None else None

    # Graph operations -------------------------------------------------------------------

    def get_user(self, key: str, select: str | None) -> JsonDict:
        """``GET /users/{id|upn}``: the projected user or 404 (a stale copy while one is due)."""
        user = self._require(key)
        stale = self._stale.pop(user["id"].lower(), None)
        if stale is not None:
            before, reads_left = stale
            if reads_left > 1:
                self._stale[user["id"].lower()] = (before, reads_left - 1)
            user = before
        elif self.lag_reads:
            user = self._lagging_copy(user["id"].lower()) or user
        return self._project(user, self._select(select))

    def list_users(self, *, filter_text: str | None, select: str | None, eventual: bool, count: bool) -> list[JsonDict]:
        """``GET /users``: all matching users in directory order, projected."""
        props = self._select(select)
        if filter_text is None or not filter_text.strip():
            keys: Iterable[str] = self._users.keys()
        else:
            try:
                node = parse_filter(filter_text)
            except FilterSyntaxError as exc:
                raise GraphError(400, "BadRequest", f"Invalid filter clause: {exc}") from exc
            # Every filter of this grammar (eq/in, any(eq) on otherMails and proxyAddresses) is
            # served by default; ConsistencyLevel: eventual asks for the advanced-query index,
            # which lags behind recent changes when replication lag is on.
            found = self._evaluate(node)
            view = dict.fromkeys(found)
            if eventual and self.lag_index:
                view = self._lagging_view(node, found)
            keys = sorted(view, key=self._order.__getitem__)
            return [self._project(view[k] or self._users[k], props) for k in keys]
        return [self._project(self._users[k], props) for k in keys]

    def role_assignments(self, filter_text: str | None, *, transitive: bool) -> list[JsonDict]:
        """``roleAssignments`` (direct) or beta ``transitiveRoleAssignments`` (also through groups).

        Transitive: a user's roles held through role-assignable groups are listed with the
        group's id as principalId, as Graph documents (group nesting is not supported there).
        """
        node: FilterNode | None = None
        if filter_text and filter_text.strip():
            try:
                node = parse_filter(filter_text)
            except FilterSyntaxError as exc:
                raise GraphError(400, "BadRequest", f"Invalid filter clause: {exc}") from exc
        principals = compared_values(node, "principalId") if node is not None else None
        if transitive and principals is None:
            raise GraphError(
                400, "Request_UnsupportedQuery", "transitiveRoleAssignments requires $filter on principalId (eq)."
            )
        if principals is not None and transitive:
            principals |= {
                gid for gid, group in self._groups.items() if principals & {m.lower() for m in group.get("members", [])}
            }
        out = []
        for assignment in self._assignments:
            if principals is not None and assignment["principalId"].lower() not in principals:
                continue
            rest = [p for p in _and_parts(node) if not (isinstance(p, Compare) and p.prop.lower() == "principalid")]
            if all(matches(assignment, part) for part in rest):
                out.append({k: v for k, v in assignment.items() if not k.startswith("_")})
        return out

    def holds_roles(self, user_id: str) -> bool:
        """Whether the user holds any role, directly or through a group, at any scope."""
        return bool(self.role_assignments(f"principalId eq '{user_id}'", transitive=True))

    # Data the control API sets beside users.

    def set_role_assignments(self, assignments: list[JsonDict]) -> None:
        self._assignments = [validate_assignment(a) for a in assignments]

    def set_groups(self, groups: list[JsonDict]) -> None:
        self._groups = {g["id"].lower(): g for g in (validate_object(item, "group") for item in groups)}

    def patch_user(self, key: str, body: Any) -> None:
        """``PATCH /users/{id}``: validate, check proxyAddresses uniqueness, then apply."""
        user = self._require(key)
        if not isinstance(body, dict):
            raise GraphError(400, "BadRequest", "Empty Payload, JSON content expected.")
        # Copied so the journal's record of the request body never aliases stored lists.
        changes = copy.deepcopy({k: v for k, v in body.items() if not k.startswith("@odata.")})
        for prop in changes:
            if prop in READ_ONLY_PROPERTIES:
                raise GraphError(400, "Request_BadRequest", f"Property '{prop}' is read-only and cannot be set.")
            if prop.startswith("_") or prop.lower() not in self._known:
                raise GraphError(400, "Request_BadRequest", f"Invalid property '{prop}'.")
        self._check_addresses(changes)
        uid = user["id"].lower()
        if "mail" in changes and isinstance(changes["mail"], str):
            self._check_mail_conflict(uid, changes["mail"])
        upn = changes.get("userPrincipalName")
        if isinstance(upn, str) and self._index["userPrincipalName"].get(upn.lower(), set()) - {uid}:
            msg = "Another object with the same value for property userPrincipalName already exists."
            raise GraphError(
                400,
                "Request_BadRequest",
                msg,
                [{"code": "ObjectConflict", "message": msg, "target": "userPrincipalName"}],
            )
        if self.replication_lag > 0:
            # Keep the first pre-PATCH copy while a lag window is still open.
            before = self._lagging_copy(uid) or copy.deepcopy(user)
            self._lagging[uid] = (before, time.monotonic() + self.replication_lag)
        self._unindex(uid, user)
        user.update(changes)
        if "mail" in changes:
            user["proxyAddresses"] = self._with_primary(user.get("proxyAddresses"), changes["mail"])
        self._reindex(uid, user)

    def reset_invitation(self, body: Any) -> JsonDict:
        """``POST /invitations`` with ``resetRedemption: true``: validate, then re-invite."""
        if not isinstance(body, dict):
            raise GraphError(400, "BadRequest", "Empty Payload, JSON content expected.")
        email = body.get("invitedUserEmailAddress")
        if not isinstance(email, str) or not email.strip():
            raise GraphError(400, "BadRequest", "Required property 'invitedUserEmailAddress' is missing or empty.")
        if not is_valid_invite_address(email):
            raise GraphError(
                400,
                "BadRequest",
                f"The email address '{email}' is invalid: the characters "
                '~!#$%^&*()+=[]{}\\/|;:"<>?, are not allowed and the local part '
                "cannot start or end with '.' or '-'.",
            )
        redirect = body.get("inviteRedirectUrl")
        if not isinstance(redirect, str) or not redirect.strip():
            raise GraphError(400, "BadRequest", "Required property 'inviteRedirectUrl' is missing or empty.")
        info = body.get("invitedUserMessageInfo")
        if info is not None and not isinstance(info, dict):
            raise GraphError(400, "BadRequest", "invitedUserMessageInfo must be an object.")
        cc = (info or {}).get("ccRecipients") or []
        if not isinstance(cc, list) or len(cc) > 1:
            raise GraphError(
                400, "BadRequest", "Only one cc recipient is supported in invitedUserMessageInfo.ccRecipients."
            )
        if body.get("resetRedemption") is not True:
            raise GraphError(
                400,
                "BadRequest",
                "The Graph emulator only implements reset invitations: send resetRedemption: true with invitedUser.id.",
            )
        invited = body.get("invitedUser")
        user_id = invited.get("id") if isinstance(invited, dict) else None
        if not isinstance(user_id, str) or not user_id:
            raise GraphError(400, "BadRequest", "invitedUser.id is required when resetRedemption is true.")
        user = self._users.get(user_id.lower())
        if user is None:
            raise GraphError(404, "Request_ResourceNotFound", _NOT_FOUND.format(user_id))
        seen = (self._lagging_copy(user_id.lower()) if self.lag_invitations else None) or user
        owned = {a.lower() for a in [seen.get("mail"), *(seen.get("otherMails") or [])] if isinstance(a, str)}
        if email.lower() not in owned:
            raise GraphError(400, "BadRequest", EMAIL_MISMATCH)
        if self.holds_roles(user["id"]):
            # App-only calls cannot reset a user who holds any directory role (graph.md §2).
            raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        now = utc_now_iso()
        invitation_id = str(uuid.uuid4())
        if self.stale_reads > 0:
            self._stale[user_id.lower()] = (copy.deepcopy(user), self.stale_reads)
        user["externalUserState"] = "PendingAcceptance"
        user["externalUserStateChangeDateTime"] = now
        user["_invitationCount"] = int(user.get("_invitationCount") or 0) + 1
        user["_lastInvitation"] = {
            "id": invitation_id,
            "invitedUserEmailAddress": email,
            "sendInvitationMessage": bool(body.get("sendInvitationMessage")),
            "at": now,
        }
        self._reindex_prop(user_id.lower(), user, "externalUserState")
        return {
            "id": invitation_id,
            "inviteRedeemUrl": "https://login.microsoftonline.com/redeem?rd=" + secrets.token_urlsafe(32),
            "invitedUserDisplayName": body.get("invitedUserDisplayName"),
            "invitedUserType": "Guest",
            "invitedUserEmailAddress": email,
            "sendInvitationMessage": bool(body.get("sendInvitationMessage", False)),
            "resetRedemption": True,
            "inviteRedirectUrl": redirect,
            "status": "PendingAcceptance",
            "invitedUserMessageInfo": _echo_message_info(info),
            "invitedUser": {"id": user["id"], "userPrincipalName": user.get("userPrincipalName")},
        }

    # internals ---------------------------------------------------------------------------

    def _lagging_copy(self, uid: str) -> JsonDict | None:
        """The user as replicas still see it after a recent PATCH, or None when caught up."""
        entry = self._lagging.get(uid)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._lagging[uid]
            return None
        return entry[0]

    def _lagging_view(self, node: FilterNode, found: set[str]) -> dict[str, JsonDict | None]:
        """Results as the lagging index has them: recently patched users matched by their old copy."""
        view: dict[str, JsonDict | None] = dict.fromkeys(found)
        for uid in list(self._lagging):
            before = self._lagging_copy(uid)
            if before is None or uid not in self._users:
                continue
            view.pop(uid, None)
            if matches(before, node):
                view[uid] = before
        return view

    def _find(self, key: str) -> JsonDict | None:
        lowered = key.lower()
        user = self._users.get(lowered)
        if user is None:
            owners = self._index["userPrincipalName"].get(lowered)
            if owners:
                user = self._users[next(iter(owners))]
        return user

    def _require(self, key: str) -> JsonDict:
        user = self._find(key)
        if user is None:
            raise GraphError(404, "Request_ResourceNotFound", _NOT_FOUND.format(key))
        return user

    def _select(self, select: str | None) -> tuple[str, ...]:
        if not select:
            return DEFAULT_SELECT
        props = []
        for raw in select.split(","):
            name = raw.strip()
            if not name:
                continue
            canonical = self._known.get(name.lower())
            if canonical is None:
                raise GraphError(
                    400, "BadRequest", f"Could not find a property named '{name}' on type 'microsoft.graph.user'."
                )
            props.append(canonical)
        return tuple(props) or DEFAULT_SELECT

    @staticmethod
    def _project(user: JsonDict, props: tuple[str, ...]) -> JsonDict:
        return {p: user.get(p) for p in props}

    def _evaluate(self, node: FilterNode) -> set[str]:
        if isinstance(node, BoolOp):
            sets = [self._evaluate(part) for part in node.parts]
            return set.intersection(*sets) if node.op == "and" else set.union(*sets)
        prop = _CANONICAL_FILTER.get(node.prop.lower())
        collection = prop in COLLECTION_FILTERABLE
        if prop is None or collection != isinstance(node, AnyEq):
            raise _unsupported_filter(node.prop)
        index = self._index[prop]
        found: set[str] = set()
        for value in node.values:
            found |= index.get(value, set())
        return found

    def _reindex(self, key: str, user: JsonDict) -> None:
        for prop in SCALAR_FILTERABLE + COLLECTION_FILTERABLE:
            self._reindex_prop(key, user, prop, add_only=True)
        for addr in _index_values(user, "proxyAddresses"):
            self._index["_smtp"].setdefault(_strip_smtp(addr), set()).add(key)

    def _reindex_prop(self, key: str, user: JsonDict, prop: str, add_only: bool = False) -> None:
        index = self._index[prop]
        if not add_only:
            for bucket in index.values():
                bucket.discard(key)
        for value in _index_values(user, prop):
            index.setdefault(value, set()).add(key)

    def _unindex(self, key: str, user: JsonDict) -> None:
        for prop in SCALAR_FILTERABLE + COLLECTION_FILTERABLE:
            index = self._index[prop]
            for value in _index_values(user, prop):
                index.get(value, set()).discard(key)
        for addr in _index_values(user, "proxyAddresses"):
            self._index["_smtp"].get(_strip_smtp(addr), set()).discard(key)

    def _check_addresses(self, changes: JsonDict) -> None:
        if (
            "mail" in changes
            and changes["mail"] is not None
            and not (isinstance(changes["mail"], str) and is_valid_invite_address(changes["mail"]))
        ):
            raise GraphError(
                400, "Request_BadRequest", "Invalid value specified for property 'mail' of resource 'User'."
            )
        if "otherMails" in changes:
            others = changes["otherMails"]
            if not isinstance(others, list) or not all(
                isinstance(a, str) and is_valid_invite_address(a) for a in others
            ):
                raise GraphError(
                    400, "Request_BadRequest", "Invalid value specified for property 'otherMails' of resource 'User'."
                )

    def _check_mail_conflict(self, uid: str, mail: str) -> None:
        lowered = mail.lower()
        owners = (self._index["mail"].get(lowered, set()) | self._index["_smtp"].get(lowered, set())) - {uid}
        if owners:
            other = self._users[min(owners, key=self._order.__getitem__)]
            raise GraphError(
                400,
                "Request_BadRequest",
                PROXY_CONFLICT,
                [
                    {"code": "ObjectConflict", "message": PROXY_CONFLICT, "target": "proxyAddresses"},
                    # The real second detail names the conflicting object; its exact target format
                    # is not documented, so the emulator uses the object id.
                    {"code": "ConflictingObjects", "message": PROXY_CONFLICT, "target": other["id"]},
                ],
            )

    @staticmethod
    def _with_primary(current: Any, mail: Any) -> list[str]:
        # Exchange-style: the old primary stays as a secondary (lower-case smtp:) address.
        addresses = [a for a in (current or []) if isinstance(a, str)]
        demoted = ["smtp:" + a[5:] if a.startswith("SMTP:") else a for a in addresses]
        if not isinstance(mail, str):
            return demoted
        rest = [a for a in demoted if _strip_smtp(a).lower() != mail.lower()]
        return ["SMTP:" + mail, *rest]


def _and_parts(node: FilterNode | None) -> tuple[FilterNode, ...]:
    if node is None:
        return ()
    if isinstance(node, BoolOp) and node.op == "and":
        return node.parts
    return (node,)


def _echo_message_info(info: JsonDict | None) -> JsonDict:
    """Graph echoes the message info with nulls (and a null cc entry) when not given."""
    info = info or {}
    cc = info.get("ccRecipients") or [{"emailAddress": {"name": None, "address": None}}]
    return {
        "messageLanguage": info.get("messageLanguage"),
        "ccRecipients": [{k: v for k, v in r.items() if k != "@odata.type"} if isinstance(r, dict) else r for r in cc],
        "customizedMessageBody": info.get("customizedMessageBody"),
    }
