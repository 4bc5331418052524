"""Who is calling the HTTP API, and what it may do.

With ``REQUIRE_ENTRA_ID`` (or ``ALLOWED_CALLERS``) set, App Service authentication sits in front:
the platform strips any X-MS-CLIENT-PRINCIPAL header a client sends and writes its own, so the
caller is the validated token's immutable ids (``oid``, ``appid``/``azp``) and its capabilities
are the token's ``roles``. Without it the headers are forgeable and ignored: every caller is
"a function key holder" with ``KEY_CAPABILITIES``.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.platform.errors import AccessDeniedError
from shared.platform.settings import Capability, Settings
from shared.reset.capabilities import KEY_CALLER

_OID = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
_APP = ("appid", "azp", "http://schemas.microsoft.com/identity/claims/appid")
# Shown in audit text only, never used to decide anything: these claims can change.
_NAME = ("preferred_username", "upn", "name", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn")
_ROLE_TYPES = frozenset({"roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"})


def _guid(value: str | None) -> str | None:
    try:
        return str(uuid.UUID(value)) if value else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Caller:
    """An Entra ID principal as App Service authentication describes it."""

    object_id: str | None
    app_id: str | None
    name: str | None = None
    roles: frozenset[str] = frozenset()

    @property
    def ids(self) -> frozenset[str]:
        """The immutable ids ALLOWED_CALLERS is matched against (normalised GUIDs)."""
        return frozenset(i for i in (_guid(self.object_id), _guid(self.app_id)) if i)

    @property
    def audit_id(self) -> str | None:
        """The id written as requestedBy: the principal's object id, else its application id."""
        return _guid(self.object_id) or _guid(self.app_id)

    @property
    def owner(self) -> str | None:
        """The owner key stored on the requests this caller submits."""
        oid, app = _guid(self.object_id), _guid(self.app_id)
        return f"entra:{oid}" if oid else (f"entra-app:{app}" if app else None)


def _claims(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    found = []
    for claim in data.get("claims") or []:
        if isinstance(claim, dict) and isinstance(claim.get("typ"), str) and isinstance(claim.get("val"), str):
            found.append((claim["typ"], claim["val"]))
    return found


def _first(claims: list[tuple[str, str]], names: tuple[str, ...]) -> str | None:
    for name in names:
        for typ, val in claims:
            if typ == name and val:
                return val
    return None


def caller_from_headers(headers: Mapping[str, str]) -> Caller | None:
    """The authenticated caller, or None when the request carries no usable principal."""
    lowered = {k.lower(): v for k, v in headers.items()}
    encoded = lowered.get("x-ms-client-principal")
    if not encoded:
        oid = _guid(lowered.get("x-ms-client-principal-id"))
        return Caller(oid, None, lowered.get("x-ms-client-principal-name")) if oid else None
    try:
        data = json.loads(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    claims = _claims(data)
    role_types = _ROLE_TYPES | ({data["role_typ"]} if isinstance(data.get("role_typ"), str) else set())
    roles = frozenset(val for typ, val in claims if typ in role_types)
    caller = Caller(_first(claims, _OID), _first(claims, _APP), _first(claims, _NAME), roles)
    return caller if caller.ids else None


@dataclass(frozen=True)
class Access:
    """What one HTTP call may do: its owner key and its capabilities."""

    owner: str
    capabilities: frozenset[Capability]
    caller: Caller | None = None

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def may_read(self, submitted_by: str | None) -> bool:
        """Its own requests, or every request with Reset.ReadAll (records of unknown owner included)."""
        return self.can(Capability.READ_ALL) or (submitted_by is not None and submitted_by == self.owner)


def resolve_access(headers: Mapping[str, str], settings: Settings) -> Access:
    """The caller's access, or AccessDeniedError. Never echoes a setting's value."""
    if not settings.require_entra_id:
        return Access(KEY_CALLER, settings.key_capabilities)
    caller = caller_from_headers(headers)
    if caller is None or caller.owner is None:
        raise AccessDeniedError(
            401,
            "Authentication required",
            "this API expects a Microsoft Entra ID token (App Service authentication); no caller was identified",
        )
    if settings.allowed_callers and not caller.ids & settings.allowed_callers:
        raise AccessDeniedError(403, "Forbidden", "this caller is not allowed to use the API (ALLOWED_CALLERS)")
    granted = frozenset(c for c in Capability if c.value in caller.roles)
    return Access(caller.owner, granted, caller)
