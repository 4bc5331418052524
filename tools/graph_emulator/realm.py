"""The login host's public home-realm endpoint, ``GET /common/userrealm/{address}?api-version=2.1``.

Microsoft documents one use of it (learn.microsoft.com/power-automate/privacy-dsr-delete,
"Determining tenant type"): an address whose home tenant is unmanaged ("viral") answers with
``"IsViral": true``; Microsoft's Remove-Unmanaged-Guests sample asks the query form
``/common/userrealm?user=...&api-version=2.1`` and looks for ``"IsViral":true`` in the body.
``NameSpaceType`` (``Managed``, ``Federated``, ``Unknown``) is what the endpoint is known to
answer besides; Microsoft does not document its values. The answer depends only on the domain,
so the emulator keeps one realm per domain; a domain it does not know is ``Unknown``.
No token is involved: the journal records any Authorization header so a test can prove the
app never sends its Graph token here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

JsonDict = dict[str, Any]
NAMESPACE_TYPES = ("Managed", "Federated", "Unknown")

# Realms of the fixture's domains: litware.example is an unmanaged (viral) tenant, so its
# ExternalAzureAD guests (Brian Johnson, Pradeep Gupta) are what `find --unmanaged` reports.
DEFAULT_REALMS: dict[str, JsonDict] = {
    "contoso.com": {"nameSpaceType": "Managed", "brand": "Contoso"},
    "northwind.example": {"nameSpaceType": "Managed", "brand": "Northwind Traders"},
    "litware.example": {"nameSpaceType": "Managed", "isViral": True},
    "adatum.example": {"nameSpaceType": "Federated", "brand": "Adatum"},
}


@dataclass(frozen=True)
class Realm:
    """What the endpoint knows about one domain; ``status`` makes it answer with that HTTP error."""

    name_space_type: str = "Unknown"
    is_viral: bool = False
    brand: str | None = None
    status: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> Realm:
        if not isinstance(data, Mapping):
            raise ValueError(f"a realm must be an object like {{'nameSpaceType': 'Managed'}}, not {data!r}")
        kind = data.get("nameSpaceType", "Managed")
        if kind not in NAMESPACE_TYPES:
            raise ValueError(f"nameSpaceType must be one of {', '.join(NAMESPACE_TYPES)}, not {kind!r}")
        status = data.get("status")
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise ValueError("status must be an HTTP error status (400-599)")
        return cls(kind, bool(data.get("isViral", False)), data.get("brand"), status)

    def to_json(self) -> JsonDict:
        data: JsonDict = {"nameSpaceType": self.name_space_type, "isViral": self.is_viral, "brand": self.brand}
        if self.status is not None:
            data["status"] = self.status
        return data

    def answer(self, login: str, domain: str) -> JsonDict:
        body: JsonDict = {"NameSpaceType": self.name_space_type, "Login": login, "DomainName": domain}
        if self.name_space_type != "Unknown":
            body["FederationBrandName"] = self.brand or domain
            body["IsViral"] = self.is_viral
        body["cloud_instance_name"] = "microsoftonline.com"
        return body


class Realms:
    """The realm of every domain the emulator knows, and a journal of the lookups it answered."""

    def __init__(self) -> None:
        self._realms: dict[str, Realm] = {}
        self.journal: list[JsonDict] = []
        self.replace({})

    def replace(self, realms: Mapping[str, Any]) -> None:
        """The fixture realms plus ``realms`` (domain -> realm JSON); the journal is cleared."""
        merged = {**DEFAULT_REALMS, **realms}
        parsed = {domain.lower(): Realm.from_json(value) for domain, value in merged.items()}  # all or nothing
        self._realms = parsed
        self.journal.clear()

    def update(self, realms: Mapping[str, Any]) -> None:
        parsed = {domain.lower(): Realm.from_json(value) for domain, value in realms.items()}
        self._realms.update(parsed)

    def of(self, domain: str) -> Realm:
        return self._realms.get(domain.lower(), Realm())

    def describe(self) -> JsonDict:
        return {"realms": {d: r.to_json() for d, r in sorted(self._realms.items())}, "lookups": list(self.journal)}


def load_realms(path: Path | None) -> dict[str, Any]:
    """The optional ``realms`` object of a fixture file (generated tenants carry one)."""
    if path is None:
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    realms = data.get("realms") if isinstance(data, dict) else None
    return realms if isinstance(realms, dict) else {}


REALMS_KEY = web.AppKey("emulator_realms", Realms)
LATENCY_KEY: web.AppKey[Callable[[], float]] = web.AppKey("emulator_latency")  # Graph routes' latency, ms


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"error": code, "error_description": message}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


async def userrealm(request: web.Request) -> web.Response:
    """``/common/userrealm/{login}`` or ``/common/userrealm?user={login}``, api-version 2.1 only."""
    realms = request.app[REALMS_KEY]
    latency = request.app[LATENCY_KEY]()
    if latency:
        await asyncio.sleep(latency / 1000)
    login = request.match_info.get("login") or request.query.get("user") or ""
    entry: JsonDict = {
        "ts": time.time(),
        "login": login,
        "apiVersion": request.query.get("api-version"),
        "authorization": request.headers.get("Authorization"),
        "status": 200,
    }
    realms.journal.append(entry)
    if request.query.get("api-version") != "2.1":
        entry["status"] = 400
        return _error(400, "invalid_request", "The emulator answers api-version=2.1 only.")
    if login.count("@") != 1:
        entry["status"] = 400
        return _error(400, "invalid_request", "Give one address, like someone@contoso.com.")
    domain = login.rsplit("@", 1)[1].lower()
    realm = realms.of(domain)
    if realm.status is not None:
        entry["status"] = realm.status
        return _error(realm.status, "server_error", "Injected failure of the home-realm lookup.")
    return web.json_response(realm.answer(login, domain))


def _control_realms(request: web.Request) -> Realms:
    return request.app[REALMS_KEY]


async def get_realms(request: web.Request) -> web.Response:
    return web.json_response(_control_realms(request).describe())


async def put_realms(request: web.Request) -> web.Response:
    """Replace the realm table (the fixture's realms stay unless overridden): {"domain": {...}}."""
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError('send {"domain.example": {"nameSpaceType": "Managed", "isViral": true}}')
        _control_realms(request).replace(body)
    except ValueError as error:
        return web.json_response({"error": str(error)}, status=400)
    return web.json_response({"count": len(body)})


def add_login_routes(app: web.Application, realms: Realms, latency_ms: Callable[[], float]) -> None:
    """The userrealm endpoint and its control routes; added before the Graph catch-all route."""
    app[REALMS_KEY] = realms
    app[LATENCY_KEY] = latency_ms
    app.router.add_get("/common/userrealm", userrealm)
    app.router.add_get("/common/userrealm/{login}", userrealm)
    app.router.add_get("/_emulator/realms", get_realms)
    app.router.add_put("/_emulator/realms", put_realms)
