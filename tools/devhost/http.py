"""aiohttp front end: HTTP-triggered functions under /<routePrefix>/<route>, plus the host's admin API.

Like Core Tools, the devhost by default does not enforce function or admin keys: every authLevel
is served anonymously, so never expose it beyond localhost. With the development-only settings
DEVHOST_MASTER_KEY (and DEVHOST_FUNCTION_KEY) it checks keys as the host does: `x-functions-key`
or `?code=`, the master key for every level, the function key for `function` level, else 401.
Timer functions are not scheduled; run them with `POST /admin/functions/<name>` (body
`{"input": ""}`), as you would against a real host.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import azure.functions as func
from aiohttp import web
from multidict import CIMultiDict

from tools.devhost.functions import FunctionSpec, Invocation

log = logging.getLogger("devhost")

_PARAM = re.compile(r"\{([^{}]+)\}")
# Route constraints honoured loosely; any other constraint just matches one path segment.
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:true|false)",
    "guid": r"[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}",
    "float": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
}


class Host(Protocol):
    """What the HTTP front end needs from the devhost."""

    @property
    def route_prefix(self) -> str: ...

    @property
    def functions(self) -> Mapping[str, FunctionSpec]: ...

    async def invoke(self, spec: FunctionSpec, value: Any, detail: str) -> Invocation: ...

    def start_admin(self, spec: FunctionSpec, text: str) -> None: ...


@dataclass(frozen=True)
class _Param:
    name: str
    optional: bool
    default: str | None


@dataclass(frozen=True)
class Route:
    """A compiled route template for one HTTP function."""

    spec: FunctionSpec
    pattern: re.Pattern[str]
    params: tuple[_Param, ...]
    methods: frozenset[str] | None
    # Literal routes win over parameterised ones, catch-alls come last (as in ASP.NET routing).
    order: tuple[int, int, int]


def _parse_param(token: str, index: int) -> tuple[_Param, str, bool]:
    catch_all = token.startswith("*")
    token = token.lstrip("*")
    default = None
    if "=" in token:
        token, default = token.split("=", 1)
    optional = token.endswith("?") or default is not None
    name, _, constraint = token.rstrip("?").partition(":")
    pattern = ".*" if catch_all else _CONSTRAINTS.get(constraint.split("(")[0].lower(), "[^/]+")
    return _Param(name, optional or catch_all, default), f"(?P<p{index}>{pattern})", catch_all


def compile_route(spec: FunctionSpec, prefix: str) -> Route:
    """Turn `prefix/route` (with {x}, {x:int}, {x?}, {*rest}) into an anchored regex."""
    template = "/".join(part for part in (prefix, str(spec.trigger.get("route") or spec.name)) if part)
    params: list[_Param] = []
    regex, literal, catch_alls = "", 0, 0
    for segment in (s for s in template.split("/") if s):
        whole = _PARAM.fullmatch(segment)
        if whole:
            param, group, catch_all = _parse_param(whole.group(1), len(params))
            params.append(param)
            catch_alls += catch_all
            regex += f"(?:/{group})?" if param.optional else f"/{group}"
            continue
        position, piece = 0, "/"
        for match in _PARAM.finditer(segment):
            param, group, _ = _parse_param(match.group(1), len(params))
            params.append(param)
            piece += re.escape(segment[position : match.start()]) + group
            position = match.end()
        literal += len(_PARAM.sub("", segment))
        regex += piece + re.escape(segment[position:])
    methods = spec.trigger.get("methods")
    return Route(
        spec=spec,
        pattern=re.compile(f"^{regex}/?$", re.IGNORECASE),
        params=tuple(params),
        methods=frozenset(str(m).upper() for m in methods) if methods else None,
        order=(catch_alls, len(params), -literal),
    )


def to_response(value: Any) -> web.Response:
    """Convert what an HTTP function returned into an aiohttp response, like the worker does."""
    if value is None:
        return web.Response(status=204)
    if isinstance(value, str | bytes):
        return web.Response(status=200, body=value.encode() if isinstance(value, str) else value)
    if not isinstance(value, func.HttpResponse):
        raise TypeError(f"HTTP function returned {type(value).__name__}, not func.HttpResponse")
    headers: CIMultiDict[str] = CIMultiDict()
    for key, item in value.headers.items():
        headers.add(key, item)
    if "Content-Type" not in headers:
        mimetype, charset = str(value.mimetype), str(value.charset)
        headers["Content-Type"] = f"{mimetype}; charset={charset}" if mimetype.startswith("text/") else mimetype
    return web.Response(status=int(value.status_code), body=value.get_body(), headers=headers)


def build_app(host: Host) -> web.Application:
    """The aiohttp application: admin endpoints first, then every HTTP function behind one dispatcher."""
    routes = sorted(
        (compile_route(s, host.route_prefix) for s in host.functions.values() if s.trigger_type == "httpTrigger"),
        key=lambda r: r.order,
    )

    async def status(_: web.Request) -> web.Response:
        return web.json_response({"state": "Running", "functions": sorted(host.functions)})

    async def admin_invoke(request: web.Request) -> web.Response:
        wanted = request.match_info["name"].lower()
        spec = next((s for n, s in host.functions.items() if n.lower() == wanted), None)
        if spec is None:
            return web.json_response({"error": f"function '{wanted}' not found"}, status=404)
        if spec.trigger_type == "httpTrigger":
            return web.json_response({"error": "HTTP functions are called on their route"}, status=400)
        try:
            payload = json.loads(await request.text() or "{}")
        except ValueError:
            return web.json_response({"error": 'body must be JSON like {"input": "..."}'}, status=400)
        text = payload.get("input", "") if isinstance(payload, dict) else ""
        host.start_admin(spec, text if isinstance(text, str) else json.dumps(text))
        return web.Response(status=202)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for route in routes:
            match = route.pattern.match(request.path)
            if match is None:
                continue
            if route.methods is not None and request.method not in route.methods:
                allowed |= route.methods
                continue
            return await _call(host, route, match, request)
        if allowed:
            return web.Response(status=405, headers={"Allow": ", ".join(sorted(allowed))})
        return web.Response(status=404)

    # The Functions host accepts request bodies up to 100 MB (FUNCTIONS_REQUEST_BODY_SIZE_LIMIT);
    # aiohttp would stop at 1 MB with its own text answer, before the function could respond.
    app = web.Application(client_max_size=100 * 1024 * 1024)
    app.router.add_get("/admin/host/status", status)
    app.router.add_post("/admin/functions/{name}", admin_invoke)
    # [\s\S]: a path may hold a (percent-encoded) newline, which "." would not match.
    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatch)
    return app


def key_accepted(spec: FunctionSpec, request: web.Request, environ: Mapping[str, str] | None = None) -> bool:
    """The host's key check, when DEVHOST_MASTER_KEY is set; always True otherwise."""
    env = os.environ if environ is None else environ
    master = env.get("DEVHOST_MASTER_KEY", "")
    level = str(spec.trigger.get("authLevel") or "function").lower()
    if not master or level == "anonymous":
        return True
    given = request.headers.get("x-functions-key") or request.query.get("code") or ""
    keys = [master] + ([env.get("DEVHOST_FUNCTION_KEY", "")] if level == "function" else [])
    return any(key and hmac.compare_digest(given.encode(), key.encode()) for key in keys)


async def _call(host: Host, route: Route, match: re.Match[str], request: web.Request) -> web.Response:
    if not key_accepted(route.spec, request):
        return web.Response(status=401)
    route_params: dict[str, str] = {}
    for index, param in enumerate(route.params):
        value = match.group(f"p{index}")
        if value is not None and value != "":
            route_params[param.name] = value
        elif param.default is not None:
            route_params[param.name] = param.default
    req = func.HttpRequest(
        method=request.method,
        url=str(request.url),
        headers=dict(request.headers),
        params=dict(request.query),
        route_params=route_params,
        body=await request.read(),
    )
    result = await host.invoke(route.spec, req, f" {request.method} {request.path}")
    if not result.ok:
        return web.Response(status=500)
    try:
        return to_response(result.value)
    except (TypeError, ValueError) as exc:
        log.error("function '%s': %s", route.spec.name, exc)
        return web.Response(status=500)
