"""Telling a caller's flow that its request ended: POST the outcome to its callbackUrl.

Delivery runs off the reset's critical path: once the outcome is stored, the worker (or the
poison handler) queues a callback job on the callback queue, and its own trigger POSTs. Each job
makes a few quick attempts within a bounded time, then comes back later as a delayed job; the
result (delivered, or failed with why) is recorded on the request. A callback failure of any
kind never changes the outcome and never makes the host redeliver the request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shared.platform import telemetry
from shared.platform.errors import InvalidRequestError, ResetError, TransientError
from shared.platform.logs import app_logger, bind, bind_request, redacted
from shared.platform.settings import Settings
from shared.reset.contract import parse_json
from shared.reset.runtime import Runtime, get_runtime
from shared.reset.status import StatusRecord, StatusStore

log = app_logger()
# Within one job: a second attempt after a short pause, each attempt capped (about 21 s at most).
DELAYS = (1.0,)
ATTEMPT_TIMEOUT = 10.0
# Later jobs, seconds after the previous one ended; after the last, the callback is given up.
REDELIVERY_DELAYS = (30.0, 120.0, 600.0, 1800.0)
DELIVERED, FAILED = "Delivered", "Failed"


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
    return await _unsafe_target(url) is None


async def _unsafe_target(url: str) -> Attempt | None:
    """Why ``url`` must not be called now (a failed lookup may pass later, a private address never)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 443
    except ValueError:
        return Attempt(False, retry=False, problem="the URL is not valid")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return Attempt(False, retry=True, problem="the host did not resolve")
    addresses = {str(info[4][0]) for info in infos}
    if not addresses or not (PRIVATE_ADDRESSES_ALLOWED or all(_public(a) for a in addresses)):
        return Attempt(False, retry=False, problem="the host does not resolve to public addresses only")
    return None


@dataclass(frozen=True)
class Attempt:
    """How one job's POSTs went: delivered, or the problem and whether trying later can help."""

    delivered: bool
    retry: bool = False
    problem: str | None = None


async def post_outcome(url: str, payload: dict[str, Any], *, delays: tuple[float, ...] = DELAYS) -> Attempt:
    """POST ``payload`` to ``url``; every failure is caught and described, none is raised.

    The host must resolve to public addresses only, checked just before the POST.
    """
    import httpx

    unsafe = await _unsafe_target(url)
    if unsafe is not None:
        return unsafe
    problem = "not attempted"
    try:
        async with httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT, follow_redirects=False, verify=TLS_VERIFY) as client:
            for delay in (*delays, None):
                try:
                    with telemetry.quiet():
                        response = await client.post(url, json=payload)
                except Exception as error:  # InvalidURL, TLS, DNS, timeouts: all just "not delivered"
                    problem = type(error).__name__
                else:
                    if response.status_code < 400:
                        return Attempt(True)
                    problem = f"HTTP {response.status_code}"
                    if response.status_code < 500 and response.status_code not in {408, 429}:
                        return Attempt(False, retry=False, problem=problem)
                if delay is not None:
                    await asyncio.sleep(delay)
    except Exception as error:  # the client itself could not be built (a bad TLS context)
        return Attempt(False, retry=False, problem=type(error).__name__)
    return Attempt(False, retry=True, problem=problem)


async def queue_callback(runtime: Runtime, record: StatusRecord) -> None:
    """After the outcome is stored: a job on the callback queue, if the request wants a callback."""
    if record.callback_url and record.status.terminal and record.callback_status not in {DELIVERED, FAILED}:
        job = {"requestId": record.request_id, "attempt": 1, "traceparent": telemetry.current_traceparent()}
        await runtime.publisher.send_callback({k: v for k, v in job.items() if v is not None})


async def handle_callback_message(body: bytes, *, message_id: str, dequeue_count: int = 1) -> None:
    """One callback job: POST the stored outcome, record how it went, come back later if worth it.

    Raises only when storage fails before anything was POSTed (the host retries the job).
    """
    try:
        job = parse_json(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, InvalidRequestError):
        job = None
    traceparent = job.get("traceparent") if isinstance(job, dict) else None
    with (
        bind_request(messageId=message_id, dequeueCount=dequeue_count),
        telemetry.span(
            "deliver callback",
            kind="consumer",
            traceparent=traceparent if isinstance(traceparent, str) else None,
            dequeueCount=dequeue_count,
        ),
    ):
        request_id = job.get("requestId") if isinstance(job, dict) else None
        if not isinstance(request_id, str):
            log.warning("a callback job that names no request was dropped")
            return
        attempt = job.get("attempt") if isinstance(job, dict) else None
        attempt = attempt if isinstance(attempt, int) and attempt > 0 else 1
        bind(requestId=request_id, attempt=attempt)
        runtime = await get_runtime()
        try:
            record = await runtime.status.get(request_id)
        except ResetError as error:
            raise redacted(error) from None
        if record is None or not record.status.terminal or not record.callback_url:
            return
        if record.callback_status in {DELIVERED, FAILED}:
            return
        if not callback_allowed(record.callback_url, runtime.settings):
            await _record(runtime.status, record, FAILED, "the host is not on CALLBACK_ALLOWED_HOSTS")
            return
        # The host only: a Logic Apps callback URL carries its signature in the query string.
        host = urlsplit(record.callback_url).hostname or ""
        attributes = {"http.request.method": "POST", "server.address": host}
        with telemetry.span("POST callback", kind="client", **attributes) as span:
            result = await post_outcome(record.callback_url, record.public())
            span.set_attribute("delivered", result.delivered)
        if result.delivered:
            log.info("callback delivered")
            await _record(runtime.status, record, DELIVERED, None)
        elif result.retry and attempt <= len(REDELIVERY_DELAYS):
            delay = REDELIVERY_DELAYS[attempt - 1]
            log.info("callback attempt %d failed (%s); trying again in %.0fs", attempt, result.problem, delay)
            again = {"requestId": request_id, "attempt": attempt + 1, "traceparent": traceparent}
            try:
                await runtime.publisher.send_callback({k: v for k, v in again.items() if v is not None}, delay=delay)
            except ResetError as error:
                await _record(runtime.status, record, FAILED, f"{result.problem}; the next try could not be queued")
                log.warning("callback given up: its next try could not be queued: %s", error.message)
        else:
            log.warning("callback given up after attempt %d: %s", attempt, result.problem)
            await _record(runtime.status, record, FAILED, result.problem)


async def _record(store: StatusStore, record: StatusRecord, state: str, problem: str | None) -> None:
    """Note the callback's fate on the request, best effort (the POST is done whatever happens here)."""
    event = "callbackDelivered" if state == DELIVERED else "callbackFailed"
    current: StatusRecord | None = record
    for _ in range(3):
        if current is None:
            return
        try:
            await store.note(current, event, changes={"callback_status": state}, problem=problem)
            return
        except TransientError as error:
            if error.code != "StatusConflict":
                log.warning("could not record the callback's fate: %s", error.message)
                return
        try:
            current = await store.get(record.request_id)
        except ResetError:
            return
    log.warning("could not record the callback's fate: the status kept changing")
