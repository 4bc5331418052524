"""The few error types of the app, each with a stable code and whether retrying can help.

Failures are classified here and only here: the worker asks an error whether it is
permanent (poison at once) or transient (retry with backoff, then poison).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ResetError(Exception):
    """A failure with a stable ``code``, a message that says what to do, and a retry verdict."""

    permanent: bool = True
    default_code: str = "ResetFailed"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        graph_request_id: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.graph_request_id = graph_request_id
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "permanent": self.permanent,
            "graphRequestId": self.graph_request_id,
            "httpStatus": self.status,
        }


class InvalidRequestError(ResetError):
    """The message does not follow contract v1; fix the producer, retrying will not help."""

    default_code = "InvalidRequest"

    def __init__(self, message: str, *, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class UserNotFoundError(ResetError):
    default_code = "UserNotFound"


class AmbiguousUserError(ResetError):
    default_code = "AmbiguousUser"


class PolicyRefusedError(ResetError):
    """A safety rule refused the reset (not a guest, domain rule, email owned, roles...)."""

    default_code = "PolicyRefused"


class GraphRequestError(ResetError):
    """Microsoft Graph refused the call for a reason that a retry will not change."""

    default_code = "GraphRequestFailed"


class TransientError(ResetError):
    """Throttling, an outage or a network fault: worth retrying later."""

    permanent = False
    default_code = "Transient"


class AmbiguousOutcomeError(TransientError):
    """A write may or may not have been applied (timeout, 5xx, dropped connection)."""

    default_code = "GraphOutcomeUnknown"


class OutcomeUnknownError(ResetError):
    """An invitation may have gone out, and Graph gives no evidence either way: a person decides.

    Permanent on purpose: sending again on a guess could email the guest twice (safety rule 7).
    """

    default_code = "OutcomeUnknown"


class HoldError(ResetError):
    """The delivery must wait, neither failed nor retried: it goes back on the queue with a delay.

    The worker re-enqueues a copy that stays invisible for ``delay`` seconds and completes this
    delivery, so no host delivery (``maxDequeueCount``) is spent on waiting. ``held`` marks a
    hold by the invitation circuit breaker (the status says Held and why); otherwise the delivery
    only waits (its invitation slot, Graph's Retry-After, the write budget, its deadline).
    ``limited``: a wait for the request's own sake counts towards the worker's cap on holds; one
    whose end someone else decides (the breaker, the pacing) does not.
    """

    permanent = False
    default_code = "Held"

    def __init__(
        self, message: str, *, delay: float, code: str | None = None, held: bool = True, limited: bool = False
    ) -> None:
        super().__init__(message, code=code)
        self.delay = delay
        self.held = held
        self.limited = limited


class ClaimLostError(TransientError):
    """This delivery's claim on a request lapsed and another delivery took it over."""

    default_code = "ClaimLost"


class DeadlineExceededError(TransientError):
    """The delivery's time is up before a Graph call could start; nothing was sent by that call."""

    default_code = "DeliveryDeadline"


class IntakeError(ResetError):
    """A submission to the HTTP API refused as a whole; ``status`` is the HTTP status to answer with."""

    default_code = "SubmissionRefused"

    def __init__(self, status: int, title: str, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail, status=status)
        self.status: int = status
        self.title = title
        self.detail = detail
        self.errors = errors or []


class AccessDeniedError(ResetError):
    """An HTTP call refused before any handler runs (401 without a principal, 403 outside ALLOWED_CALLERS)."""

    default_code = "AccessDenied"

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail, status=status)
        self.status: int = status
        self.title = title
        self.detail = detail


class BulkFileChangedError(ResetError):
    """A bulk file's bytes differ between the validation pass and the sending pass."""

    default_code = "BulkFileChanged"


class UsageError(ResetError):
    """A bad command-line option or input file (the CLI exits with 2)."""

    default_code = "UsageError"


class ApiRefusedError(ResetError):
    """The API answered 4xx: the submission or the order is wrong, nothing will change on retry."""

    default_code = "ApiRefused"

    def __init__(self, message: str, *, status: int, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, status=status)
        self.errors = errors or []


class ApiAuthError(ApiRefusedError):
    """401/403/404 on a known route: wrong key, wrong key level, or wrong URL."""

    default_code = "ApiNotAuthorized"


class SettingsError(Exception):
    """One or more app settings are missing or invalid; the message lists all of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{len(problems)} app setting problem(s); fix them in local.settings.json "
            f"or the function app's configuration:\n{lines}"
        )

    @property
    def names(self) -> list[str]:
        """The settings at fault, without their values (a value may be a secret or a host name)."""
        found = (_SETTING_NAME.match(p) for p in self.problems)
        return sorted({m.group(1) for m in found if m} or {"(unnamed setting)"})

    def public_problems(self) -> list[str]:
        """What an HTTP caller may learn: which settings to fix, never what they hold."""
        return [f"{name} is missing or invalid; the function app's log says why" for name in self.names]


_SETTING_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)")


# Graph 403 bodies that need a different fix than "grant the permission".
_FORBIDDEN_HINTS = (
    (
        "suspicious activity",
        "InvitationsBlocked",
        "Microsoft blocked invitations for this tenant; open a support ticket, it does not lift by itself",
    ),
    (
        "invitations are blocked",
        "InvitationsBlocked",
        "Microsoft blocked invitations for this tenant; open a support ticket, it does not lift by itself",
    ),
    (
        "not allowed for your company",
        "InvitationsDisabled",
        "B2B invitations are disabled or restricted in the tenant's external collaboration settings",
    ),
    ("cross-tenant access", "CrossTenantAccessBlocked", "cross-tenant access settings block this guest's home tenant"),
)

# Failures that stop every invitation of the tenant, not just this one: the first of them opens
# the invitation circuit breaker (shared.reset.breaker) instead of failing the request.
BREAKER_CODES = frozenset({"InvitationsBlocked", "InvitationsDisabled"})

# The least-privileged Microsoft Graph application permission Microsoft documents for each call
# the app makes (docs/graph.md lists the sources).
USERS_PERMISSION = "User.ReadWrite.All"  # read and update users; POST /invitations with resetRedemption
ROLES_PERMISSION = "RoleManagement.Read.Directory"  # the role check (role assignments)

PERMISSION_HINT = (
    f"grant the app's identity the Microsoft Graph application permissions {USERS_PERMISSION} "
    f"(users and the reset itself) and {ROLES_PERMISSION} (the role check), "
    "e.g. with infra/scripts/grant-graph-permission.sh, and wait for them to propagate"
)


@dataclass(frozen=True)
class GraphCall:
    """What one kind of Graph call needs, so that its failures say exactly what to fix."""

    permission: str
    # Set when a 400/404 means the endpoint itself is not served (not "no such user").
    unavailable_code: str | None = None
    unavailable_hint: str = ""


USER_CALL = GraphCall(USERS_PERMISSION)
ROLE_CALL = GraphCall(
    ROLES_PERMISSION,
    unavailable_code="RoleCheckUnavailable",
    unavailable_hint=(
        "the role check could not be read, so nothing was changed; ROLE_CHECK=transitive reads Graph's "
        "beta transitiveRoleAssignments, which Microsoft may change: set ROLE_CHECK=direct to read the "
        "v1.0 roleAssignments instead (direct roles only)"
    ),
)


def _permission_hint(permission: str) -> str:
    return (
        f"grant the app's identity the Microsoft Graph application permission {permission} "
        "(infra/scripts/grant-graph-permission.sh grants every permission the app needs) "
        "and wait for it to propagate"
    )


def classify_graph_response(
    status: int,
    body: Mapping[str, Any] | None,
    headers: Mapping[str, str],
    *,
    call: GraphCall | None = None,
) -> ResetError:
    """Turn a failed Graph response into our error: permanent or transient, with request-id.

    ``call`` says what the call needs: a plain 403 then names the missing permission.
    """
    error = (body or {}).get("error") if isinstance(body, Mapping) else None
    error = error if isinstance(error, Mapping) else {}
    graph_code = str(error.get("code") or "")
    graph_message = str(error.get("message") or f"Graph answered HTTP {status}")
    inner = error.get("innerError") or error.get("innererror") or {}
    request_id = headers.get("request-id") or (inner.get("request-id") if isinstance(inner, Mapping) else None)
    retry_after = parse_retry_after(headers.get("retry-after"))
    kw: dict[str, Any] = {"graph_request_id": request_id, "status": status}

    if status == 429:
        return TransientError(
            f"Graph throttled the request ({graph_message}); retrying after the wait it asked for",
            code="GraphThrottled",
            retry_after=retry_after,
            **kw,
        )
    if status >= 500 or status == 408:
        return TransientError(
            f"Graph is unavailable (HTTP {status}: {graph_message})",
            code="GraphUnavailable",
            retry_after=retry_after,
            **kw,
        )
    if status == 409 and graph_code == "Directory_ConcurrencyViolation":
        # Graph documents this one as retryable: two writes raced on the same object.
        return TransientError(graph_message, code="GraphConcurrencyViolation", **kw)
    if status == 401:
        return GraphRequestError(
            f"Graph refused the app's token ({graph_message}); {PERMISSION_HINT}",
            code="GraphUnauthorized",
            **kw,
        )
    if status == 403:
        lowered = graph_message.lower()
        for needle, code, hint in _FORBIDDEN_HINTS:
            if needle in lowered:
                return GraphRequestError(f"{graph_message} ({hint})", code=code, **kw)
        if call is not None:
            return GraphRequestError(
                f"Graph denied the call ({graph_message}): the app lacks the application permission "
                f"{call.permission}; {_permission_hint(call.permission)}",
                code="GraphPermissionMissing",
                **kw,
            )
        return GraphRequestError(
            f"Graph denied the operation ({graph_message}); {PERMISSION_HINT}. "
            "App-only resets also cannot touch users who hold directory roles.",
            code="GraphForbidden",
            **kw,
        )
    if call is not None and call.unavailable_code and status in (400, 404):
        return GraphRequestError(
            f"Graph answered HTTP {status} {graph_code}: {graph_message} ({call.unavailable_hint})",
            code=call.unavailable_code,
            **kw,
        )
    if status == 404:
        return UserNotFoundError(
            f"Graph has no such user ({graph_message}); check the userId/userPrincipalName",
            **kw,
        )
    if status == 400 and "doesn't match any emails" in graph_message:
        return GraphRequestError(graph_message, code="EmailNotOnUser", **kw)
    if status == 400 and "proxyAddresses" in graph_message:
        return PolicyRefusedError(
            f"{graph_message} The new email already belongs to another directory object.",
            code="EmailInUse",
            **kw,
        )
    return GraphRequestError(
        f"Graph rejected the request (HTTP {status} {graph_code}: {graph_message})",
        code="GraphBadRequest" if status == 400 else f"Graph{status}",
        **kw,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header; integer or fractional, None if absent/invalid."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
