"""Telling a caller's flow that its request ended: POST the outcome to its callbackUrl."""

from __future__ import annotations

import asyncio
import fnmatch
import ssl
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


def callback_allowed(url: str, settings: Settings) -> bool:
    """Safety rule 5: https hosts matching CALLBACK_ALLOWED_HOSTS, nothing else."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and any(
        fnmatch.fnmatchcase(host, pattern) for pattern in settings.callback_allowed_hosts
    )


async def notify(record: StatusRecord, settings: Settings, *, delays: tuple[float, ...] = DELAYS) -> bool:
    """POST the outcome with retries; a failure is logged and never changes the outcome."""
    url = record.callback_url
    if not url:
        return False
    if not callback_allowed(url, settings):
        log.warning("callback host is not on CALLBACK_ALLOWED_HOSTS; not called")
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
