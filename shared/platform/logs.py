"""Logging for the whole app: masking of personal data and secrets, and the request context on every record.

Safety rule 6: logs never hold tokens, invitation redeem URLs or full email addresses. Context
(``requestId``, ``ticketId``, ``dequeueCount``, ``attempt``, ``code``...) is bound once per delivery
with ``bind_request`` and rides on every record written while it is bound (``contextvars``, so each
concurrent invocation on the worker's event loop sees its own), without ``extra=`` at call sites.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from shared.platform.errors import ResetError

LOGGER_NAME = "guest_reset"
# The record attributes context may set; anything else would be a typo at a call site.
CONTEXT_FIELDS = frozenset({"requestId", "ticketId", "dequeueCount", "attempt", "code", "userId", "messageId"})

_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+'\-*])([A-Za-z0-9._%+'\-]+)@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})")
_BEARER = re.compile(r"(?i)bearer\s+[A-Za-z0-9\-._~+/]+=*")
_REDEEM = re.compile(r"https://[^\s\"']*redeem[^\s\"']*", re.IGNORECASE)
# Query parameters that carry a secret: a Logic Apps trigger's SAS signature, a function key.
_URL_SECRET = re.compile(r"(?i)([?&](?:sig|code|token|access_token|client_secret|key)=)[^&#\s\"']+")


def mask_email(address: str | None) -> str | None:
    """``adele.vance@contoso.com`` → ``a***e@contoso.com``; the domain stays for triage."""
    if not address:
        return address
    local, _, domain = address.partition("@")
    if not domain or not local:
        return f"***@{domain}" if domain else "***"
    hidden = local[0] + "***" + (local[-1] if len(local) > 1 else "")
    return f"{hidden}@{domain}"


def mask_url_secrets(url: str) -> str:
    """A callback URL as kept at rest: where it goes stays readable, every query value is masked.

    A Logic Apps trigger URL is a bearer credential (its ``sig``); the other values are masked too
    so that no future signature scheme slips through.
    """
    base, sep, query = url.partition("?")
    if not sep:
        return url
    fragment = ""
    if "#" in query:
        query, fragment = query.split("#", 1)
        fragment = "#***"
    masked = "&".join(f"{part.partition('=')[0]}=***" for part in query.split("&") if part)
    return f"{base}?{masked}{fragment}"


def redact(text: str) -> str:
    """Mask every email, bearer token, URL secret and redeem URL found in free text."""
    text = _BEARER.sub("Bearer ***", text)
    text = _REDEEM.sub("<redeem-url>", text)
    text = _URL_SECRET.sub(r"\1***", text)
    return _EMAIL.sub(lambda m: mask_email(m.group(0)) or "***", text)


_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("guest_reset_log_context", default=_EMPTY)


def current_context() -> Mapping[str, Any]:
    """The fields bound for the code running now (empty outside a delivery)."""
    return _context.get()


def _checked(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - CONTEXT_FIELDS
    if unknown:
        raise ValueError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    return {k: v for k, v in fields.items() if v is not None}


@contextlib.contextmanager
def bind_request(**fields: Any) -> Iterator[None]:
    """Bind context for the duration of a block (a delivery, a poison record, a bulk file)."""
    token = _context.set(MappingProxyType({**_context.get(), **_checked(fields)}))
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the context bound now (e.g. ``attempt`` once the claim is known).

    Inside ``bind_request`` the addition ends with the block, because the block restores the
    context it found; outside one it lasts for the current task only.
    """
    _context.set(MappingProxyType({**_context.get(), **_checked(fields)}))


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record as attributes (custom dimensions downstream)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class RedactingFilter(logging.Filter):
    """Last line of defence: rewrites a record's message and traceback so no secret or address leaks.

    Code masks what it logs on purpose; this catches what an exception message carries.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
            if record.exc_text != formatted:
                # Handlers that read exc_info themselves (OpenTelemetry's, for exception.message
                # and exception.stacktrace) get an exception whose text is redacted too.
                record.exc_info = _redacted_exc_info(record.exc_info)
        return True


_STAND_INS: dict[type[BaseException], type[Exception]] = {}


def _redacted_exc_info(exc_info: Any) -> Any:
    """(type, value, traceback) with the value replaced by a look-alike carrying the redacted message.

    The look-alike has the original's name and module, so a stack trace still names the real
    exception; its cause chain is dropped (the record's exc_text keeps it, redacted).
    """
    kind, value, traceback = exc_info
    stand_in = _STAND_INS.get(kind)
    if stand_in is None:
        stand_in = type(kind.__name__, (Exception,), {"__module__": kind.__module__, "__qualname__": kind.__qualname__})
        _STAND_INS[kind] = stand_in
    return stand_in, stand_in(redact(str(value))), traceback


_FILTERS: tuple[logging.Filter, ...] = (ContextFilter(), RedactingFilter())


def install_filters(target: logging.Logger | logging.Handler) -> None:
    """Attach the context and redaction filters to a logger or handler (once)."""
    for wanted in _FILTERS:
        if not any(isinstance(f, type(wanted)) for f in target.filters):
            target.addFilter(wanted)


def configure_logging() -> None:
    """Redact and add context on every handler present: the host's, and any the app installs.

    A filter on a handler sees every record that handler emits, whichever library logged it
    (an SDK's exception text, the host's record of an invocation that raised). Called when the
    runtime is built; handlers added later go through ``install_filters``.
    """
    install_filters(app_logger())
    for handler in logging.getLogger().handlers:
        install_filters(handler)


def app_logger() -> logging.Logger:
    """The one logger the app writes to, with the context and redaction filters attached.

    A filter on a logger only sees records created on that logger (not its children), so
    every module of the app logs through this single named logger.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        install_filters(logger)
        # httpx logs every request URL at INFO, and our $filter URLs carry (percent-encoded)
        # email addresses; the storage SDK's request logging is equally chatty.
        for noisy in ("httpx", "httpcore", "azure.core.pipeline.policies.http_logging_policy"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    return logger


def redacted(error: BaseException) -> BaseException:
    """The exception with its message redacted, for raising to the host (which logs it as it is)."""
    if isinstance(error, ResetError):
        error.message = redact(error.message)
        error.args = (error.message,)
        return error
    text = str(error)
    cleaned = redact(text)
    if cleaned == text:
        return error
    return RuntimeError(f"{type(error).__name__}: {cleaned}")
