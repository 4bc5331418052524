"""Generated tenants for large runs: ``count`` B2B guests with a realistic mix, and their domains' realms.

The mix (deterministic for a seed): about three in four guests redeemed, the rest still
``PendingAcceptance``; redeemed ones signed in through ExternalAzureAD, a Microsoft account,
email one-time passcode (issuer ``mail``) or Google; a pending guest has only the
``userPrincipalName`` identity every B2B user gets. Domains come from a fixed pool, so the
number of distinct domains does not grow with the tenant; their realms are mostly managed, some
unmanaged (viral), federated or unknown. Microsoft-account guests use consumer domains, which
have no Entra tenant (``Unknown``).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

JsonDict = dict[str, Any]

TENANT_DOMAIN = "emulator.onmicrosoft.com"
_EPOCH = datetime(2022, 1, 1, tzinfo=UTC)
_SPAN_DAYS = 3 * 365
# (issuer, weight) for redeemed guests.
_ISSUERS = (("ExternalAzureAD", 60), ("MicrosoftAccount", 15), ("mail", 20), ("google.com", 5))
_CONSUMER_DOMAINS = ("outlook.example", "hotmail.example", "live.example")
# Realm of the partner domains by position in the pool: every 10th unmanaged, then federated, then unknown.
_REALM_CYCLE = (
    ("Managed", False),
    ("Managed", True),
    ("Managed", False),
    ("Federated", False),
    ("Managed", False),
    ("Managed", False),
    ("Unknown", False),
    ("Managed", False),
    ("Managed", False),
    ("Managed", False),
)


def generated_id(index: int) -> str:
    """Stable object ids for generated guests (distinct from the fixture's and the tests' ids)."""
    return f"d0000000-0000-4000-8000-{index:012d}"


def partner_domain(index: int) -> str:
    return f"partner{index:03d}.example"


def partner_realms(domains: int) -> dict[str, JsonDict]:
    """The realm table for ``domains`` partner domains (consumer domains stay unknown)."""
    realms: dict[str, JsonDict] = {}
    for index in range(domains):
        kind, viral = _REALM_CYCLE[index % len(_REALM_CYCLE)]
        if kind != "Unknown":
            realms[partner_domain(index)] = {"nameSpaceType": kind, "isViral": viral, "brand": f"Partner {index}"}
    return realms


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_guests(count: int, *, seed: int = 0, domains: int = 100, start: int = 0) -> list[JsonDict]:
    """``count`` guests with ids ``generated_id(start)`` on, spread over ``domains`` partner domains."""
    rng = random.Random(seed)
    issuers = [name for name, weight in _ISSUERS for _ in range(weight)]
    users: list[JsonDict] = []
    for index in range(start, start + count):
        issuer = rng.choice(issuers)
        domain = (
            rng.choice(_CONSUMER_DOMAINS) if issuer == "MicrosoftAccount" else partner_domain(rng.randrange(domains))
        )
        local = f"guest.{index:06d}"
        mail = f"{local}@{domain}"
        upn = f"{local}_{domain}#EXT#@{TENANT_DOMAIN}"
        created = _EPOCH + timedelta(seconds=rng.randrange(_SPAN_DAYS * 86400))
        pending = rng.random() < 0.25
        identities: list[JsonDict] = [
            {"signInType": "userPrincipalName", "issuer": TENANT_DOMAIN, "issuerAssignedId": upn}
        ]
        if not pending:
            identities.append({"signInType": "federated", "issuer": issuer, "issuerAssignedId": None})
        changed = created if pending else created + timedelta(seconds=rng.randrange(30 * 86400))
        users.append(
            {
                "id": generated_id(index),
                "displayName": f"Guest {index:06d}",
                "userPrincipalName": upn,
                "mail": mail,
                "otherMails": [mail],
                "proxyAddresses": [f"SMTP:{mail}"],
                "userType": "Guest",
                "creationType": "Invitation",
                "accountEnabled": True,
                "externalUserState": "PendingAcceptance" if pending else "Accepted",
                "externalUserStateChangeDateTime": _iso(changed),
                "createdDateTime": _iso(created),
                "identities": identities,
            }
        )
    return users


def generate_tenant(count: int, *, seed: int = 0, domains: int = 100) -> JsonDict:
    """A fixture document: ``{"users": [...], "realms": {...}}``."""
    return {"users": generate_guests(count, seed=seed, domains=domains), "realms": partner_realms(domains)}
