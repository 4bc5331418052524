"""Telling a caller's flow that its request ended: POST the outcome to its callbackUrl."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import unicodedata
from typing import Any
from urllib.parse import urlsplit

from shared.platform import telemetry
from shared.platform.logs import app_logger
from shared.platform.settings import Settings
from shared.reset.status import StatusRecord

log = app_logger()
DELAYS = (1.0, 2.0, 4.0)


# Certificate verification for callbacks: the system's trust store. Tests point it at their own CA.
TLS_VERIFY: ssl.SSLContext | bool = True


# Tests run their receiver on 127.0.0.1; in the app a callback never goes to a private address.
PRIVATE_ADDRESSES_ALLOWED = False

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalise_host(host: str) -> str | None:
    """A host name as DNS compares it: IDNA A-labels, lower case, no trailing dot; None if it is not one.

    A host that NFKC normalisation would change (full-width letters, a full-width dot or
    solidus, ligatures) is refused outright rather than mapped: no real callback host is
    written that way, and a URL parser elsewhere may map it differently from us.
    """
    if not host or unicodedata.normalize("NFKC", host) != host:
        return None
    host = host[:-1] if host.endswith(".") else host
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = ascii_host.split(".")
    return ascii_host if len(ascii_host) <= 253 and all(_LABEL.match(label) for label in labels) else None


def host_matches(host: str, pattern: str) -> bool:
    """``pattern`` is an exact host, or ``*.domain`` for any host below ``domain`` (dot-bounded)."""
    if pattern.startswith("*."):
        base = normalise_host(pattern[2:])
        return base is not None and host.endswith("." + base)
    return host == normalise_host(pattern)


def callback_allowed(url: str, settings: Settings) -> bool:
    """Safety rule 5: https, no userinfo, a normalised host on CALLBACK_ALLOWED_HOSTS, nothing else."""
    if "\\" in url or any(unicodedata.category(c).startswith("C") for c in url):
        return False  # parsers disagree on backslashes and control characters
    try:
        parts = urlsplit(url)  # raises on a netloc that NFKC would turn into / ? # @ :
        parts.port  # noqa: B018 (a port that is not a number raises)
    except ValueError:
        return False
    if parts.scheme != "https" or "@" in parts.netloc:
        return False
    host = normalise_host(parts.hostname or "")
    return host is not None and any(host_matches(host, pattern) for pattern in settings.callback_allowed_hosts)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolves_to_public_addresses(url: str) -> bool:
    """Every address the callback host resolves to is a public one (no private, loopback or
    link-local target such as the instance metadata endpoint), checked just before the call."""
    parts = urlsplit(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname or "", parts.port or 443, type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        return False
    addresses = {str(info[4][0]) for info in infos}
    return bool(addresses) and (PRIVATE_ADDRESSES_ALLOWED or all(_public(a) for a in addresses))


async def notify(record: StatusRecord, settings: Settings, *, delays: tuple[float, ...] = DELAYS) -> bool:
    """POST the outcome with retries; a failure is logged and never changes the outcome."""
    url = record.callback_url
    if not url:
        return False
    if not callback_allowed(url, settings):
        log.warning("callback host is not on CALLBACK_ALLOWED_HOSTS; not called")
        return False
    if not await resolves_to_public_addresses(url):
        log.warning("callback host does not resolve to public addresses only; not called")
        return False
    payload: dict[str, Any] = record.public()
    # The host only: a Logic Apps callback URL carries its signature in the query string.
    attributes = {"http.request.method": "POST", "server.address": urlsplit(url).hostname or ""}
    with telemetry.span("POST callback", kind="client", **attributes) as span:
        delivered = await _post(url, payload, delays)
        span.set_attribute("delivered", delivered)
    return delivered


async def _post(url: str, payload: dict[str, Any], delays: tuple[float, ...]) -> bool:
    import httpx

    async with httpx.AsyncClient(timeout=10.0, follow_redirects=False, verify=TLS_VERIFY) as client:
        for attempt, delay in enumerate((*delays, None), start=1):
            try:
                with telemetry.quiet():
                    response = await client.post(url, json=payload)
                if response.status_code < 400:
                    log.info("callback delivered")
                    return True
                if 400 <= response.status_code < 500 and response.status_code not in {408, 429}:
                    log.warning("callback refused with HTTP %d; not retried", response.status_code)
                    return False
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                problem = type(error).__name__
            if delay is None:
                break
            log.info("callback attempt %d failed (%s); retrying", attempt, problem)
            await asyncio.sleep(delay)
    log.warning("callback gave up after %d attempts", len(delays) + 1)
    return False
