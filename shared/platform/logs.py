"""Masking of personal data and secrets before anything reaches a log, a result or a table.

Safety rule 6: logs never hold tokens, invitation redeem URLs or full email addresses.
"""

from __future__ import annotations

import logging
import re

_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+'\-*])([A-Za-z0-9._%+'\-]+)@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})")
_BEARER = re.compile(r"(?i)bearer\s+[A-Za-z0-9\-._~+/]+=*")
_REDEEM = re.compile(r"https://[^\s\"']*redeem[^\s\"']*", re.IGNORECASE)


def mask_email(address: str | None) -> str | None:
    """``adele.vance@contoso.com`` → ``a***e@contoso.com``; the domain stays for triage."""
    if not address:
        return address
    local, _, domain = address.partition("@")
    if not domain:
        return "***"
    hidden = local[0] + "***" + (local[-1] if len(local) > 1 else "")
    return f"{hidden}@{domain}"


def redact(text: str) -> str:
    """Mask every email, bearer token and redeem URL found in free text."""
    text = _BEARER.sub("Bearer ***", text)
    text = _REDEEM.sub("<redeem-url>", text)
    return _EMAIL.sub(lambda m: mask_email(m.group(0)) or "***", text)


class RedactingFilter(logging.Filter):
    """Last line of defence: rewrites a record's message so no secret or address leaks.

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
        return True


def app_logger() -> logging.Logger:
    """The one logger the app writes to, with the redacting filter attached.

    A filter on a logger only sees records created on that logger (not its children), so
    every module of the app logs through this single named logger.
    """
    logger = logging.getLogger("guest_reset")
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
        # httpx logs every request URL at INFO, and our $filter URLs carry (percent-encoded)
        # email addresses; the storage SDK's request logging is equally chatty.
        for noisy in ("httpx", "httpcore", "azure.core.pipeline.policies.http_logging_policy"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    return logger
