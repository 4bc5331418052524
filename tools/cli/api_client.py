"""A small client of the app's own HTTP API, for admins who have a function key but no storage rights."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx

from shared.platform.errors import ApiAuthError, ApiRefusedError, TransientError

RETRY_DELAYS = (0.5, 1.0, 2.0)  # connection failures, 429 and 5xx; Retry-After wins when sent
MAX_RETRY_AFTER = 30.0


def api_base(url: str) -> str:
    """``https://app.azurewebsites.net``, with or without ``/api`` and a trailing slash."""
    base = url.strip().rstrip("/")
    return base.removesuffix("/api")


class ApiClient:
    """Calls /api/... with the ``x-functions-key`` header; transient failures are retried."""

    def __init__(self, url: str, key: str | None, *, timeout: float = 60.0, max_connections: int = 16) -> None:
        headers = {"x-functions-key": key} if key else {}
        self._http = httpx.AsyncClient(
            base_url=api_base(url) + "/api",
            headers={**headers, "User-Agent": "guest-reset-cli"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 202),
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"} if content is not None else {}
        last = "no answer"
        for attempt in range(len(RETRY_DELAYS) + 1):
            try:
                response = await self._http.request(method, path, content=content, params=params, headers=headers)
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
                delay = RETRY_DELAYS[attempt] if attempt < len(RETRY_DELAYS) else None
            else:
                if response.status_code in ok:
                    return response
                if response.status_code < 500 and response.status_code != 429:
                    raise self._refusal(method, path, response)
                last = f"HTTP {response.status_code}"
                delay = RETRY_DELAYS[attempt] if attempt < len(RETRY_DELAYS) else None
                retry_after = response.headers.get("retry-after", "")
                if delay is not None and retry_after.replace(".", "", 1).isdigit():
                    delay = min(float(retry_after), MAX_RETRY_AFTER)
            if delay is None:
                break
            await asyncio.sleep(delay)
        raise TransientError(
            f"the API at {self._http.base_url} is unavailable ({method} {path}: {last})", code="ApiUnavailable"
        )

    def _refusal(self, method: str, path: str, response: httpx.Response) -> ApiRefusedError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        detail = body.get("detail") if isinstance(body, dict) else None
        errors = body.get("errors") if isinstance(body, dict) and isinstance(body.get("errors"), list) else []
        status = response.status_code
        if status in (401, 403):
            return ApiAuthError(
                f"{method} {path} -> {status}: check --api-key (a function key; the poison "
                f"and breaker commands need the admin/master key){f' ({detail})' if detail else ''}",
                status=status,
            )
        if status == 404 and path.startswith(("/poison", "/breaker")):
            return ApiAuthError(f"{method} {path} -> 404: check --api-url", status=status)
        return ApiRefusedError(
            f"{method} {path} -> {status}: {detail or response.text[:300]}", status=status, errors=errors
        )

    async def submit(self, batch_json: bytes) -> list[dict[str, Any]]:
        """POST /api/resets with {"requests": [...]}; the accepted items, in order."""
        response = await self._call("POST", "/resets", content=batch_json, ok=(202,))
        items: list[dict[str, Any]] = response.json().get("accepted", [])
        return items

    async def status(self, request_id: str) -> dict[str, Any] | None:
        """GET /api/resets/{id}: the status body, or None when the API knows no such request."""
        try:
            response = await self._call("GET", f"/resets/{quote(request_id, safe='')}")
        except ApiRefusedError as error:
            if error.status == 404:
                return None
            raise
        body: dict[str, Any] = response.json()
        return body

    async def list_poison(self, params: dict[str, str]) -> dict[str, Any]:
        body: dict[str, Any] = (await self._call("GET", "/poison", params=params)).json()
        return body

    async def replay_poison(self, order: bytes) -> dict[str, Any]:
        body: dict[str, Any] = (await self._call("POST", "/poison/replay", content=order)).json()
        return body

    async def breaker(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self._call("GET", "/breaker")).json()
        return body

    async def close_breaker(self, order: bytes) -> dict[str, Any]:
        body: dict[str, Any] = (await self._call("POST", "/breaker/close", content=order)).json()
        return body
