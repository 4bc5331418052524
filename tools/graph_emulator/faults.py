"""Injected failures: explicit fault rules, seeded random chaos and a write token bucket.

Each source decides per request whether to answer with a ``Fault`` instead of the real
operation; ``app.py`` turns the fault into a Graph-shaped error (or a dropped connection).
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]

# Graph's code and message for the statuses tests usually inject.
DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad request (injected by the Graph emulator)."),
    401: ("InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
    403: ("Forbidden", "Generic authorization exception."),
    404: (
        "Request_ResourceNotFound",
        "Resource does not exist or one of its queried reference-property objects are not present.",
    ),
    409: ("Directory_ConcurrencyViolation", "Another operation on this object is in progress."),
    429: ("TooManyRequests", "Please retry again later."),
    500: ("InternalServerError", "An internal server error occurred."),
    502: ("BadGateway", "Bad gateway."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please retry later."),
    504: ("GatewayTimeout", "The operation timed out."),
}
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


def default_error(status: int) -> tuple[str, str]:
    """Graph's usual ``(code, message)`` for an injected status."""
    return DEFAULT_ERRORS.get(status, ("UnknownError", f"Injected HTTP {status}."))


def throttle_headers(information: str) -> dict[str, str]:
    """The diagnostic headers Graph adds to a 429 (graph.md §3)."""
    kind = "Write" if information == "WriteLimitExceeded" else "ReadWrite"
    return {
        "x-ms-throttle-scope": f"Tenant_Application/{kind}/emulator-app/emulator-tenant",
        "x-ms-throttle-information": information,
    }


@dataclass(frozen=True)
class Fault:
    """What to do instead of (or after) the real operation for one request."""

    source: str  # "rule", "chaos" or "writeBudget"
    status: int | None
    code: str | None = None
    message: str | None = None
    retry_after: str | None = None
    drop: bool = False
    after_processing: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    # Held this long before the fault is answered: longer than the client's timeout, it is a
    # timeout as the caller sees it (with after_processing: the write happened all the same).
    hold_ms: float = 0.0

    def describe(self) -> JsonDict:
        """A JSON-friendly summary for the journal."""
        return {
            "source": self.source,
            "status": self.status,
            "code": self.code,
            "retryAfter": self.retry_after,
            "drop": self.drop,
            "afterProcessing": self.after_processing,
            "holdMs": self.hold_ms,
        }


def _opt_str(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{name} must be a string or number")
    return str(value)


@dataclass
class FaultRule:
    """One ``POST /_emulator/faults`` rule; ``times=None`` means it never runs out.

    ``path`` is a regex *searched* in the normalised path after ``/v1.0`` (anchor it with
    ``^...$`` for an exact match; empty matches every path); ``method`` None or ``*`` = any.
    """

    method: str | None
    path: re.Pattern[str]
    status: int | None
    times: int | None = 1
    retry_after: str | None = None
    code: str | None = None
    message: str | None = None
    latency_ms: float = 0.0
    drop: bool = False
    after_processing: bool = False

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        """Validate a rule posted by a test; raise ``ValueError`` with a readable reason."""
        if not isinstance(data, dict):
            raise ValueError("a fault rule must be a JSON object")
        method = data.get("method")
        if method is not None and not isinstance(method, str):
            raise ValueError("method must be a string or null")
        try:
            path = re.compile(str(data.get("path") or ""))
        except re.error as exc:
            raise ValueError(f"path is not a valid regex: {exc}") from exc
        status, times = data.get("status"), data.get("times", 1)
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            raise ValueError("status must be an HTTP status code or null")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ValueError("times must be a positive integer or null (forever)")
        latency = data.get("latencyMs") or 0
        if not isinstance(latency, (int, float)) or latency < 0:
            raise ValueError("latencyMs must be a non-negative number")
        rule = cls(
            method=None if method in (None, "*") else method.upper(),
            path=path,
            status=status,
            times=times,
            retry_after=_opt_str(data.get("retryAfter"), "retryAfter"),
            code=_opt_str(data.get("code"), "code"),
            message=_opt_str(data.get("message"), "message"),
            latency_ms=float(latency),
            drop=bool(data.get("drop")),
            after_processing=bool(data.get("afterProcessing")),
        )
        if rule.status is None and not rule.drop and not rule.latency_ms:
            raise ValueError("a rule needs a status, drop: true or latencyMs")
        return rule

    def to_fault(self) -> Fault:
        """The fault this rule injects (defaults filled in from the status)."""
        code, message = default_error(self.status) if self.status else (None, None)
        headers = throttle_headers("ResourceUnitLimitExceeded") if self.status == 429 else {}
        return Fault(
            "rule",
            self.status,
            self.code or code,
            self.message or message,
            self.retry_after,
            self.drop,
            self.after_processing,
            headers,
        )

    def describe(self) -> JsonDict:
        """The rule as posted (for ``GET /_emulator/faults``)."""
        return {
            "method": self.method,
            "path": self.path.pattern,
            "status": self.status,
            "times": self.times,
            "retryAfter": self.retry_after,
            "code": self.code,
            "message": self.message,
            "latencyMs": self.latency_ms,
            "drop": self.drop,
            "afterProcessing": self.after_processing,
        }


class FaultRules:
    """Ordered rules; the first rule whose method and path regex match fires."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> None:
        self._rules.append(rule)

    def clear(self) -> None:
        self._rules.clear()

    def describe(self) -> list[JsonDict]:
        return [r.describe() for r in self._rules]

    def take(self, method: str, path: str) -> FaultRule | None:
        """Return the matching rule and use up one of its ``times``."""
        for rule in self._rules:
            if (rule.method is None or rule.method == method) and rule.path.search(path):
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times == 0:
                        self._rules.remove(rule)
                return rule
        return None


class Chaos:
    """Random 429/503/504/dropped connections/timeouts with a seeded RNG so runs are repeatable.

    ``pTimeout``: the request is processed (a write lands), then the answer is held ``timeoutMs``
    and is a 504: with ``timeoutMs`` above the client's timeout, the caller sees a timeout after
    Graph did the work, the case that tempts a second invitation.
    """

    def __init__(self) -> None:
        self.configure({})

    def configure(self, data: Any) -> None:
        """Apply ``{"p429", "p503", "p504", "pDrop", "pTimeout", "timeoutMs", "retryAfter", "seed"}``; ``{}`` = off."""
        data = data or {}
        if not isinstance(data, dict):
            raise ValueError("chaos settings must be a JSON object")
        probs = {k: data.get(k) or 0.0 for k in ("pDrop", "p429", "p503", "p504", "pTimeout")}
        for key, value in probs.items():
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be a probability between 0 and 1")
        if sum(probs.values()) > 1.0:
            raise ValueError("the probabilities must add up to at most 1")
        self._thresholds: list[tuple[float, str]] = []
        total = 0.0
        for key, value in probs.items():
            if value:
                total += float(value)
                self._thresholds.append((total, key))
        self._retry_after = _opt_str(data.get("retryAfter"), "retryAfter")
        timeout_ms = data.get("timeoutMs", 5000)
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
            raise ValueError("timeoutMs must be a non-negative number")
        self._timeout_ms = float(timeout_ms)
        self._rng = random.Random(data.get("seed"))
        self.settings: JsonDict = {
            **probs,
            "timeoutMs": self._timeout_ms,
            "retryAfter": self._retry_after,
            "seed": data.get("seed"),
        }

    def draw(self) -> Fault | None:
        """Roll once for a Graph request."""
        if not self._thresholds:
            return None
        roll = self._rng.random()
        for threshold, key in self._thresholds:
            if roll < threshold:
                if key == "pDrop":
                    return Fault("chaos", None, drop=True)
                if key == "pTimeout":
                    code, message = default_error(504)
                    return Fault("chaos", 504, code, message, after_processing=True, hold_ms=self._timeout_ms)
                status = int(key[1:])
                code, message = default_error(status)
                headers = throttle_headers("ResourceUnitLimitExceeded") if status == 429 else {}
                retry_after = self._retry_after if status in (429, 503) else None
                return Fault("chaos", status, code, message, retry_after, headers=headers)
        return None


class WriteBudget:
    """Token bucket over Graph writes, like the identity service's write quota."""

    def __init__(self) -> None:
        self.configure(None)

    def configure(self, data: Any) -> None:
        """Apply ``{"perSecond", "burst", "retryAfter"}``; ``None`` or ``{}`` turns it off."""
        if data is not None and not isinstance(data, dict):
            raise ValueError("write budget must be a JSON object or null")
        per_second = (data or {}).get("perSecond")
        if per_second is None:
            self.per_second = 0.0
            self.settings: JsonDict | None = None
            return
        burst = data.get("burst") if data else None
        if not isinstance(per_second, (int, float)) or per_second <= 0:
            raise ValueError("perSecond must be a positive number")
        if burst is None:
            burst = max(1.0, float(per_second))
        if not isinstance(burst, (int, float)) or burst < 1:
            raise ValueError("burst must be a number >= 1")
        self.per_second = float(per_second)
        self.burst = float(burst)
        self.retry_after = _opt_str((data or {}).get("retryAfter"), "retryAfter")
        self.tokens = self.burst
        self.updated = time.monotonic()
        self.settings = {"perSecond": per_second, "burst": burst, "retryAfter": self.retry_after}

    def take(self, method: str) -> Fault | None:
        """Spend a token for a write; when none is left return a 429 fault."""
        if not self.per_second or method not in WRITE_METHODS:
            return None
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        wait = (1.0 - self.tokens) / self.per_second
        retry_after = self.retry_after or str(max(1, math.ceil(wait)))
        code, message = default_error(429)
        return Fault("writeBudget", 429, code, message, retry_after, headers=throttle_headers("WriteLimitExceeded"))
