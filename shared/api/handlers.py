"""The HTTP API's behaviour, free of azure.functions: requests in, status + JSON body out.

function_app.py turns ``ApiRequest``/``ApiResponse`` into the Functions types and back.
Every error answer is an RFC 9457 problem (application/problem+json) that names settings at
most, never their values. Each call is resolved to an ``Access`` first (shared.api.principal).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from pydantic import ValidationError

from shared.api import triage
from shared.api.intake import accept, validate_submission
from shared.api.models import BreakerClose, ReplayOrder, ResetStatus, dump
from shared.api.openapi import document
from shared.api.principal import Access, resolve_access
from shared.platform.errors import AccessDeniedError, IntakeError, ResetError, SettingsError, UserNotFoundError
from shared.platform.logs import app_logger
from shared.platform.settings import Capability, get_settings
from shared.reset.breaker import resume_held
from shared.reset.contract import describe_validation_error
from shared.reset.runtime import get_runtime
from shared.reset.status import Status, StatusRecord

log = app_logger()
POLL_SECONDS = 10
JSON_TYPES = ("application/json", "text/json")


@dataclass(frozen=True)
class ApiRequest:
    method: str
    url: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    route_params: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def body_bytes(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body, separators=(",", ":")).encode()


def problem(
    status: int,
    title: str,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> ApiResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return ApiResponse(status, body, headers or {}, "application/problem+json")


Handler = Callable[[ApiRequest], Awaitable[ApiResponse]]  # what function_app.py calls
AccessHandler = Callable[[ApiRequest, Access], Awaitable[ApiResponse]]  # what guarded() wraps


def not_configured(error: SettingsError) -> ApiResponse:
    log.error("the app is not configured: %s", error)
    return problem(503, "Not configured", "; ".join(error.public_problems()), headers={"Retry-After": "30"})


def guarded(
    *methods: str, needs: Capability | None = None, anonymous: bool = False, reports_settings: bool = False
) -> Callable[[AccessHandler], Handler]:
    """405 for other methods, 401/403 for callers that may not call, problems for our errors.

    ``reports_settings``: the handler answers broken settings itself (health), so it runs even then.
    """

    def wrap(handler: AccessHandler) -> Handler:
        async def run(request: ApiRequest) -> ApiResponse:
            if request.method.upper() not in methods:
                return problem(
                    405, "Method not allowed", f"use {' or '.join(methods)}", headers={"Allow": ", ".join(methods)}
                )
            nobody = Access("anonymous", frozenset())
            if anonymous:
                return await handler(request, nobody)
            try:
                try:
                    settings = get_settings()
                except SettingsError:
                    if reports_settings:
                        return await handler(request, nobody)
                    raise
                access = resolve_access(request.headers, settings)
                # Operating needs the admin key, which the host checks; behind Entra ID, the role too.
                if needs is not None and settings.require_entra_id and not access.can(needs):
                    return problem(403, "Capability missing", f"this caller lacks {needs.value}")
                return await handler(request, access)
            except AccessDeniedError as denied:
                headers = {"WWW-Authenticate": "Bearer"} if denied.status == 401 else {}
                return problem(denied.status, denied.title, denied.detail, headers=headers)
            except SettingsError as error:
                return not_configured(error)
            except ResetError as error:
                if error.permanent:
                    return problem(400, "Invalid request", error.message)
                log.warning("storage unavailable for an API call: %s", error.message)
                return problem(503, "Temporarily unavailable", error.message, headers={"Retry-After": "5"})

        run.__name__ = handler.__name__
        run.__doc__ = handler.__doc__
        return run

    return wrap


def _status_url(request: ApiRequest, request_id: str) -> str:
    return urljoin(request.url, f"/api/resets/{quote(request_id, safe='')}")


@guarded("POST")
async def submit_resets(request: ApiRequest, access: Access) -> ApiResponse:
    """POST /api/resets: validate all, record Accepted, enqueue, answer 202 with status URLs."""
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type not in JSON_TYPES and not content_type.endswith("+json"):
        return problem(415, "Unsupported media type", "send the body as application/json")
    runtime = await get_runtime()
    try:
        validated = validate_submission(
            request.body, runtime=runtime, idempotency_key=request.header("idempotency-key"), access=access
        )
        receipts = await accept(runtime, validated, access)
    except IntakeError as error:
        return problem(error.status, error.title, error.detail, error.errors)
    urls = [_status_url(request, r.request_id) for r in receipts]
    items = [
        {"requestId": r.request_id, "status": r.status, "statusUrl": url, "duplicate": r.duplicate}
        for r, url in zip(receipts, urls, strict=True)
    ]
    headers = {"Retry-After": str(POLL_SECONDS)}
    if len(items) == 1:
        headers["Location"] = urls[0]
    return ApiResponse(202, {"accepted": items}, headers)


@guarded("GET")
async def get_reset(request: ApiRequest, access: Access) -> ApiResponse:
    """GET /api/resets/{requestId}: 202 while running, 200 with the outcome, 404 if unknown or not the caller's."""
    request_id = request.route_params.get("requestId", "")
    runtime = await get_runtime()
    record = await runtime.status.get(request_id) if request_id else None
    if record is None or not access.may_read(record.submitted_by):
        # The same answer whether the request does not exist or belongs to someone else.
        return problem(404, "Not found", "no reset request with this id is visible to this caller")
    body = record.public()
    link = await _redeem_url_for(record, access)
    if link:
        body["redeemUrl"] = link
    body = dump(ResetStatus.model_validate(body))
    if not record.status.terminal:
        return ApiResponse(202, body, {"Retry-After": str(POLL_SECONDS), "Location": _status_url(request, request_id)})
    return ApiResponse(200, body)


async def _redeem_url_for(record: StatusRecord, access: Access) -> str | None:
    """The redeem URL, handed over once, to a caller allowed to see it, while the invitation is pending.

    A reset that sent no email keeps the link until then; the read and the erasure are one
    conditional write, so two pollers never both get it. A guest who is no longer
    PendingAcceptance (redeemed already, or deleted) no longer needs it: it is erased unshown.
    """
    if not (record.redeem_url and record.status is Status.SUCCEEDED and access.can(Capability.READ_REDEEM_URL)):
        return None
    runtime = await get_runtime()
    try:
        user = await runtime.graph.read_user(record.user_id or "")
    except UserNotFoundError:
        await runtime.status.erase_redeem_url(record, "userGone")
        return None
    except ResetError as error:
        if not error.permanent:
            raise  # 503: ask again later, the link stays
        log.warning("could not check whether the invitation is pending (%s); link kept, not shown", error.code)
        return None
    if user.external_user_state != "PendingAcceptance":
        await runtime.status.erase_redeem_url(record, "notPending")
        return None
    return await runtime.status.hand_over_redeem_url(record, to=access.owner)


@guarded("GET", reports_settings=True)
async def health(request: ApiRequest, access: Access) -> ApiResponse:
    """GET /api/health: settings valid and storage reachable (setting names only, never their values)."""
    try:
        get_settings()
    except SettingsError as error:
        log.error("health: the app is not configured: %s", error)
        return ApiResponse(503, {"status": "unhealthy", "problems": error.public_problems()})
    try:
        runtime = await get_runtime()
        await runtime.status.get("health-probe")
    except ResetError as error:
        return ApiResponse(503, {"status": "unhealthy", "problems": [error.message]})
    except Exception as error:  # a storage client that cannot even be built (bad endpoint)
        return ApiResponse(503, {"status": "unhealthy", "problems": [f"storage: {type(error).__name__}"]})
    return ApiResponse(200, {"status": "healthy", "problems": []})


@guarded("GET", anonymous=True)
async def openapi(request: ApiRequest, access: Access) -> ApiResponse:
    """GET /api/openapi.json: the OpenAPI 2.0 document for a Power Automate custom connector."""
    parts = urlsplit(request.url)
    return ApiResponse(200, document(parts.netloc or "localhost", scheme=parts.scheme or "https"))


@guarded("GET", needs=Capability.OPERATE)
async def list_poison(request: ApiRequest, access: Access) -> ApiResponse:
    """GET /api/poison (admin): failed requests with their error codes."""
    raw_max = request.params.get("max", "100")
    if not raw_max.isdigit() or not 1 <= int(raw_max) <= triage.MAX_LIST:
        return problem(400, "Invalid query", "max must be a whole number from 1 to 1000")
    request_id = request.params.get("requestId")
    items = await triage.list_failed(
        await get_runtime(),
        request_ids=[request_id] if request_id else None,
        error_code=request.params.get("errorCode") or None,
        limit=int(raw_max),
    )
    return ApiResponse(200, {"items": items})


@guarded("POST", needs=Capability.OPERATE)
async def replay_poison(request: ApiRequest, access: Access) -> ApiResponse:
    """POST /api/poison/replay (admin): move failed requests back to the request queue."""
    try:
        order = ReplayOrder.model_validate_json(request.body or b"{}", by_alias=True, by_name=False)
    except ValidationError as error:
        return problem(400, "Invalid replay order", "see errors", describe_validation_error(error))
    report = await triage.replay(
        await get_runtime(), request_ids=order.request_ids, error_code=order.error_code, maximum=order.max
    )
    return ApiResponse(200, report.to_dict())


@guarded("GET", needs=Capability.OPERATE)
async def breaker_status(request: ApiRequest, access: Access) -> ApiResponse:
    """GET /api/breaker (admin): the invitation circuit breaker's state."""
    state = await (await get_runtime()).gate.state()
    return ApiResponse(200, state.to_dict())


@guarded("POST", needs=Capability.OPERATE)
async def close_breaker(request: ApiRequest, access: Access) -> ApiResponse:
    """POST /api/breaker/close (admin): close the breaker and send held requests back to the queue."""
    try:
        order = BreakerClose.model_validate_json(request.body or b"{}", by_alias=True, by_name=False)
    except ValidationError as error:
        return problem(400, "Invalid body", "see errors", describe_validation_error(error))
    runtime = await get_runtime()
    # Behind Entra ID the audit names the principal (as requestedBy does), not what it wrote.
    closed_by = access.caller.audit_id if access.caller else None
    state = await runtime.gate.close(closed_by or order.closed_by or "admin API")
    resumed = await resume_held(runtime)
    return ApiResponse(200, {"breaker": state.to_dict(), "resumed": resumed, "resumedCount": len(resumed)})
