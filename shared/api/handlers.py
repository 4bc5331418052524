"""The HTTP API's behaviour, free of azure.functions: requests in, status + JSON body out.

function_app.py turns ``ApiRequest``/``ApiResponse`` into the Functions types and back.
Every error answer is an RFC 9457 problem (application/problem+json).
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
from shared.api.principal import Caller, caller_from_headers
from shared.platform.errors import IntakeError, ResetError, SettingsError
from shared.platform.logs import app_logger
from shared.platform.settings import get_settings
from shared.reset.breaker import resume_held
from shared.reset.contract import describe_validation_error
from shared.reset.runtime import get_runtime

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


Handler = Callable[[ApiRequest], Awaitable[ApiResponse]]


def guarded(*methods: str) -> Callable[[Handler], Handler]:
    """405 for other methods, 403 for callers outside ALLOWED_CALLERS, problems for our errors."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: ApiRequest) -> ApiResponse:
            if request.method.upper() not in methods:
                return problem(
                    405, "Method not allowed", f"use {' or '.join(methods)}", headers={"Allow": ", ".join(methods)}
                )
            try:
                refusal = _authorize(request)
                if refusal is not None:
                    return refusal
                return await handler(request)
            except SettingsError as error:
                return problem(503, "Not configured", str(error))
            except ResetError as error:
                if error.permanent:
                    return problem(400, "Invalid request", error.message)
                log.warning("storage unavailable for an API call: %s", error.message)
                return problem(503, "Temporarily unavailable", error.message, headers={"Retry-After": "5"})

        run.__name__ = handler.__name__
        run.__doc__ = handler.__doc__
        return run

    return wrap


def _authorize(request: ApiRequest) -> ApiResponse | None:
    try:
        allowed = get_settings().allowed_callers
    except SettingsError:
        return None  # each handler reports the settings problem in its own shape

    caller = caller_from_headers(dict(request.headers))
    if allowed and caller is not None and not (caller.identities & allowed):
        return problem(403, "Forbidden", f"caller {caller.label} is not in ALLOWED_CALLERS")
    return None


def _caller(request: ApiRequest) -> Caller | None:
    return caller_from_headers(dict(request.headers)) if get_settings().allowed_callers else None


def _status_url(request: ApiRequest, request_id: str) -> str:
    return urljoin(request.url, f"/api/resets/{quote(request_id, safe='')}")


@guarded("POST")
async def submit_resets(request: ApiRequest) -> ApiResponse:
    """POST /api/resets: validate all, record Accepted, enqueue, answer 202 with status URLs."""
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type not in JSON_TYPES and not content_type.endswith("+json"):
        return problem(415, "Unsupported media type", "send the body as application/json")
    runtime = await get_runtime()
    try:
        validated = validate_submission(
            request.body, runtime=runtime, idempotency_key=request.header("idempotency-key"), caller=_caller(request)
        )
    except IntakeError as error:
        return problem(error.status, error.title, error.detail, error.errors)
    receipts = await accept(runtime, validated)
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
async def get_reset(request: ApiRequest) -> ApiResponse:
    """GET /api/resets/{requestId}: 202 while running, 200 with the outcome, 404 if unknown."""
    request_id = request.route_params.get("requestId", "")
    runtime = await get_runtime()
    record = await runtime.status.get(request_id) if request_id else None
    if record is None:
        return problem(404, "Not found", f"no reset request with id {request_id!r}")
    body = record.public()
    if record.send_invitation_message is False and record.redeem_url:
        body["redeemUrl"] = record.redeem_url
    body = dump(ResetStatus.model_validate(body))
    if not record.status.terminal:
        return ApiResponse(202, body, {"Retry-After": str(POLL_SECONDS), "Location": _status_url(request, request_id)})
    return ApiResponse(200, body)


@guarded("GET")
async def health(request: ApiRequest) -> ApiResponse:
    """GET /api/health: settings valid and storage reachable."""
    try:
        settings = get_settings()
    except SettingsError as error:
        return ApiResponse(503, {"status": "unhealthy", "problems": error.problems})
    try:
        runtime = await get_runtime()
        await runtime.status.get("health-probe")
    except ResetError as error:
        return ApiResponse(503, {"status": "unhealthy", "problems": [error.message]})
    except Exception as error:  # a storage client that cannot even be built (bad endpoint)
        return ApiResponse(503, {"status": "unhealthy", "problems": [f"storage: {type(error).__name__}"]})
    return ApiResponse(200, {"status": "healthy", "problems": [], "graph": urlsplit(settings.graph_base_url).netloc})


@guarded("GET")
async def openapi(request: ApiRequest) -> ApiResponse:
    """GET /api/openapi.json: the OpenAPI 2.0 document for a Power Automate custom connector."""
    parts = urlsplit(request.url)
    return ApiResponse(200, document(parts.netloc or "localhost", scheme=parts.scheme or "https"))


@guarded("GET")
async def list_poison(request: ApiRequest) -> ApiResponse:
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


@guarded("POST")
async def replay_poison(request: ApiRequest) -> ApiResponse:
    """POST /api/poison/replay (admin): move failed requests back to the request queue."""
    try:
        order = ReplayOrder.model_validate_json(request.body or b"{}", by_alias=True, by_name=False)
    except ValidationError as error:
        return problem(400, "Invalid replay order", "see errors", describe_validation_error(error))
    report = await triage.replay(
        await get_runtime(), request_ids=order.request_ids, error_code=order.error_code, maximum=order.max
    )
    return ApiResponse(200, report.to_dict())


@guarded("GET")
async def breaker_status(request: ApiRequest) -> ApiResponse:
    """GET /api/breaker (admin): the invitation circuit breaker's state."""
    state = await (await get_runtime()).gate.store.read_breaker()
    return ApiResponse(200, state.to_dict())


@guarded("POST")
async def close_breaker(request: ApiRequest) -> ApiResponse:
    """POST /api/breaker/close (admin): close the breaker and send held requests back to the queue."""
    try:
        order = BreakerClose.model_validate_json(request.body or b"{}", by_alias=True, by_name=False)
    except ValidationError as error:
        return problem(400, "Invalid body", "see errors", describe_validation_error(error))
    caller = caller_from_headers(dict(request.headers))
    runtime = await get_runtime()
    state = await runtime.gate.close(order.closed_by or (caller.label if caller else "admin API"))
    resumed = await resume_held(runtime)
    return ApiResponse(200, {"breaker": state.to_dict(), "resumed": resumed, "resumedCount": len(resumed)})
