"""Checks the API fuzz adds to schemathesis's own (loaded through SCHEMATHESIS_HOOKS by test_api_fuzz.py).

- every 4xx the app writes is an RFC 9457 problem document whose status is the response's
  (the host's own answers have no body);
- no response body holds a setting value (the sentinels in FUZZ_SENTINELS);
- no response body holds a full email address the request itself did not send;
- the figures of the run (responses by status) are written to FUZZ_STATS for the test to read.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import schemathesis

# A whole address: not the tail of a masked one (a***e@contoso.com shows only the domain).
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+'\-*])[A-Za-z0-9._%+'\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def _text(response: Any) -> str:
    return str(response.content.decode("utf-8", errors="replace"))


def _sent(case: Any) -> str:
    parts = [json.dumps(case.body, default=str), json.dumps(case.query, default=str)]
    parts += [json.dumps(case.path_parameters, default=str), json.dumps(dict(case.headers or {}), default=str)]
    return "\n".join(parts)


@schemathesis.check
def problem_documents(ctx: Any, response: Any, case: Any) -> bool | None:
    """A refusal the app writes is application/problem+json with a matching status.

    The app never writes an empty 4xx; an empty one is the host's (a 401 for a missing key, a 405
    for a method no route declares, such as TRACE, which Functions cannot route to the app).
    """
    status = response.status_code
    if not 400 <= status < 500 or not response.content:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/problem+json"), f"{status} answered as {content_type!r}"
    body = json.loads(_text(response))
    assert body.get("status") == status and body.get("title"), f"not a problem document: {body}"
    return None


@schemathesis.check
def no_setting_values(ctx: Any, response: Any, case: Any) -> bool | None:
    """No answer echoes what a setting holds (names are fine: they say what to fix)."""
    text = _text(response)
    leaked = [s for s in os.environ.get("FUZZ_SENTINELS", "").split("\n") if s and s in text]
    assert not leaked, f"response shows setting value(s) {leaked}"
    return None


@schemathesis.check
def no_foreign_emails(ctx: Any, response: Any, case: Any) -> bool | None:
    """Addresses are masked in every answer; a full one may only be the caller's own input echoed."""
    sent = _sent(case).lower()
    foreign = [e for e in _EMAIL.findall(_text(response)) if e.lower() not in sent]
    assert not foreign, f"response shows full email address(es) {foreign}"
    return None


@schemathesis.check
class Figures:
    """Responses by status over the whole run, written once at the end (idempotent under replay)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, int]] = {}

    def after_response(self, ctx: Any, response: Any, case: Any) -> None:
        label = f"{case.method} {case.path}"
        self.seen[f"{case.id}:{label}:{response.status_code}"] = (label, response.status_code)

    def after_run(self, ctx: Any) -> None:
        path = os.environ.get("FUZZ_STATS")
        if not path:
            return
        by_status: dict[str, int] = {}
        by_operation: dict[str, int] = {}
        for label, status in self.seen.values():
            by_status[str(status)] = by_status.get(str(status), 0) + 1
            by_operation[label] = by_operation.get(label, 0) + 1
        with open(path, "w", encoding="utf-8") as out:
            json.dump({"responses": len(self.seen), "byStatus": by_status, "byOperation": by_operation}, out)
