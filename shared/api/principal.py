"""The caller as App Service authentication (Easy Auth) describes it in X-MS-CLIENT-PRINCIPAL.

The platform strips and re-creates these headers only when App Service authentication is
on; the app honours them only when ALLOWED_CALLERS is set, which the deployment pairs with it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass

_OID = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
_APP = ("appid", "azp")
_NAME = ("preferred_username", "upn", "name", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn")


@dataclass(frozen=True)
class Caller:
    object_id: str | None
    app_id: str | None
    name: str | None

    @property
    def identities(self) -> set[str]:
        return {i.lower() for i in (self.object_id, self.app_id, self.name) if i}

    @property
    def label(self) -> str:
        return self.name or self.app_id or self.object_id or "unknown"


def _first(claims: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((claims[n] for n in names if claims.get(n)), None)


def caller_from_headers(headers: Mapping[str, str]) -> Caller | None:
    """The authenticated caller, or None when the request carries no principal header."""
    lowered = {k.lower(): v for k, v in headers.items()}
    encoded = lowered.get("x-ms-client-principal")
    if not encoded:
        name = lowered.get("x-ms-client-principal-name")
        oid = lowered.get("x-ms-client-principal-id")
        return Caller(oid, None, name) if (name or oid) else None
    try:
        data = json.loads(base64.b64decode(encoded))
        claims = {str(c["typ"]): str(c["val"]) for c in data.get("claims", []) if isinstance(c, dict)}
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError):
        return Caller(None, None, None)
    return Caller(_first(claims, _OID), _first(claims, _APP), _first(claims, _NAME))
