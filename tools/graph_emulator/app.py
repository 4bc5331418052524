"""The aiohttp application: Graph routes under ``/v1.0`` and test controls under ``/_emulator``.

Graph requests go through one catch-all handler (journal, latency, auth, faults, dispatch)
so per-request work stays small; the emulator logs nothing per request.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from .faults import Chaos, Fault, FaultRule, FaultRules, WriteBudget
from .state import Directory, GraphError, JsonDict, load_fixture, validate_user

DEFAULT_USERS_PATH = Path(__file__).with_name("users.json")
_SLASHES = re.compile(r"/{2,}")
_AGS_DIAGNOSTIC = json.dumps(
    {
        "ServerInfo": {
            "DataCenter": "Emulator",
            "Slice": "E",
            "Ring": "0",
            "ScaleUnit": "000",
            "RoleInstance": "graph-emulator",
        }
    }
)
_WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/'
    'common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'
)
_PAGE_SIZE = 100
_VERSIONS = ("/v1.0", "/beta")
# The application permissions the app's deployment grants (infra/app/graph-permission.bicep).
DEFAULT_APP_PERMISSIONS = ("User.ReadWrite.All", "RoleManagement.Read.Directory")
# For each operation, the application permissions Microsoft documents as sufficient (any one).
_READ_USERS = frozenset({"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
_WRITE_USERS = frozenset({"User.ReadWrite.All", "Directory.ReadWrite.All"})
# A reset needs User.ReadWrite.All; User.Invite.All is not enough when resetRedemption is true.
_RESET_INVITATION = frozenset({"User.ReadWrite.All", "Directory.ReadWrite.All"})
_READ_ROLES = frozenset(
    {
        "RoleManagement.Read.Directory",
        "RoleManagement.Read.All",
        "Directory.Read.All",
        "RoleManagement.ReadWrite.Directory",
        "Directory.ReadWrite.All",
    }
)
_DENIED = "Insufficient privileges to complete the operation."


class EmulatorState:
    """Everything a running emulator holds; ``reset()`` returns it to the fixture."""

    def __init__(
        self,
        users_path: Path | None,
        journal_limit: int = 200_000,
        app_permissions: tuple[str, ...] = DEFAULT_APP_PERMISSIONS,
    ) -> None:
        self.users_path = users_path
        self.configured_permissions = frozenset(app_permissions)
        self.app_permissions = self.configured_permissions
        self.directory = Directory()
        self.journal: deque[JsonDict] = deque(maxlen=journal_limit)
        self.seq = 0
        self.rules = FaultRules()
        self.chaos = Chaos()
        self.budget = WriteBudget()
        self.latency_ms = 0.0
        self.reset()

    def reset(self) -> None:
        """Reload the fixture and switch every injected behaviour off."""
        if self.users_path:
            self.directory.load(load_fixture(self.users_path))
        else:
            self.directory.replace_all([])
        self.app_permissions = self.configured_permissions
        self.journal.clear()
        self.rules.clear()
        self.chaos.configure({})
        self.budget.configure(None)
        self.latency_ms = 0.0
        self.directory.stale_reads = 0
        self.directory.replication_lag = 0.0
        self.directory.lag_reads = self.directory.lag_index = self.directory.lag_invitations = True


STATE_KEY = web.AppKey("emulator_state", EmulatorState)


class _Reply:
    """Per-request ids that every Graph response and error body carries."""

    __slots__ = ("client_request_id", "request_id")

    def __init__(self, client_request_id: str | None) -> None:
        self.request_id = str(uuid.uuid4())
        self.client_request_id = client_request_id or str(uuid.uuid4())

    def headers(self) -> dict[str, str]:
        return {
            "request-id": self.request_id,
            "client-request-id": self.client_request_id,
            "x-ms-ags-diagnostic": _AGS_DIAGNOSTIC,
            "Cache-Control": "no-cache",
        }

    def json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> web.Response:
        headers = self.headers()
        headers["Content-Type"] = "application/json"
        if extra:
            headers.update(extra)
        return web.Response(status=status, body=json.dumps(payload).encode(), headers=headers)

    def error(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[JsonDict] | None = None,
        extra: dict[str, str] | None = None,
    ) -> web.Response:
        # Graph's innerError date has no zone suffix.
        date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        error: JsonDict = {
            "code": code,
            "message": message,
            "innerError": {"date": date, "request-id": self.request_id, "client-request-id": self.client_request_id},
        }
        if details:
            error["details"] = details
        return self.json(status, {"error": error}, extra)

    def empty(self, status: int) -> web.Response:
        return web.Response(status=status, headers=self.headers())


def _query_value(query: dict[str, str], name: str) -> str | None:
    # Graph v1.0 accepts system query options with or without the "$" prefix.
    return query.get("$" + name, query.get(name))


def _fault_response(reply: _Reply, fault: Fault) -> web.Response:
    extra = dict(fault.headers)
    if fault.retry_after is not None:
        extra["Retry-After"] = fault.retry_after
    status = fault.status or 500
    return reply.error(status, fault.code or "UnknownError", fault.message or "Injected fault.", extra=extra)


def _drop(request: web.Request) -> web.Response:
    """Close the socket without a response, as a dying gateway would."""
    request.protocol.force_close()
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=499)  # never written: the transport is already closed


@dataclass(slots=True)
class _Call:
    """One Graph request as the emulator sees it, shared by the steps that handle it."""

    request: web.Request
    reply: _Reply
    entry: JsonDict
    method: str
    graph_path: str | None  # normalised path after the version; None when not under /v1.0 or /beta
    version: str
    query: dict[str, str]
    body: Any
    body_invalid: bool

    @property
    def base(self) -> str:
        return f"{self.request.scheme}://{self.request.host}{self.version}"


async def graph_handler(request: web.Request) -> web.StreamResponse:
    """Every non-control route: journal, latency, auth, faults, then the Graph operation."""
    state = request.app[STATE_KEY]
    arrived = time.time()
    path = _SLASHES.sub("/", request.path).rstrip("/") or "/"
    version = next((v for v in _VERSIONS if path == v or path.startswith(v + "/")), "")
    graph_path = path[len(version) :] if version else None
    headers = request.headers
    reply = _Reply(headers.get("client-request-id"))
    body: Any = None
    body_invalid = False
    if request.body_exists:
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body_invalid = True
    state.seq += 1
    entry: JsonDict = {
        "seq": state.seq,
        "ts": arrived,
        "method": request.method,
        "path": graph_path if graph_path is not None else path,
        "version": version.lstrip("/") or None,
        "rawPath": request.path,
        "query": dict(request.query),
        "status": None,
        "requestId": reply.request_id,
        "clientRequestId": reply.client_request_id,
        "authorization": headers.get("Authorization"),
        "consistencyLevel": headers.get("ConsistencyLevel"),
        "body": body,
        "fault": None,
        "throttled": False,
        "processed": False,
    }
    state.journal.append(entry)
    if state.latency_ms:
        await asyncio.sleep(state.latency_ms / 1000)

    call = _Call(request, reply, entry, request.method, graph_path, version, entry["query"], body, body_invalid)
    response = await _guarded(state, call)
    if response is None:
        return _drop(request)
    entry["status"] = response.status
    entry["throttled"] = response.status == 429
    return response


async def _guarded(state: EmulatorState, call: _Call) -> web.Response | None:
    """Auth and fault handling around the operation; ``None`` means drop the connection."""
    authorization = call.entry["authorization"] or ""
    token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    if not token:
        return call.reply.error(
            401, "InvalidAuthenticationToken", "Access token is empty.", extra={"WWW-Authenticate": _WWW_AUTHENTICATE}
        )

    fault: Fault | None = None
    rule = state.rules.take(call.method, call.entry["path"])
    if rule is not None:
        call.entry["fault"] = {"source": "rule", **rule.describe()}
        if rule.latency_ms:
            await asyncio.sleep(rule.latency_ms / 1000)
        if rule.status is not None or rule.drop:
            fault = rule.to_fault()
    if fault is None:
        fault = state.budget.take(call.method) or state.chaos.draw()
    if fault is not None:
        call.entry["fault"] = fault.describe()
        if not fault.after_processing:
            return None if fault.drop else _fault_response(call.reply, fault)

    response = _operate(state, call)
    call.entry["processed"] = response.status < 400
    if fault is not None:
        # afterProcessing: the directory changed, but the caller only sees the fault.
        return None if fault.drop else _fault_response(call.reply, fault)
    return response


def _operate(state: EmulatorState, call: _Call) -> web.Response:
    if call.body_invalid:
        return call.reply.error(
            400,
            "BadRequest",
            "Unable to read JSON request payload. "
            "Please ensure Content-Type header is set "
            "and payload is of valid JSON format.",
        )
    try:
        return _dispatch(state, call)
    except GraphError as exc:
        return call.reply.error(exc.status, exc.code, exc.message, details=exc.details)


def _not_found_segment(segment: str) -> GraphError:
    return GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")


def _not_implemented(call: _Call) -> GraphError:
    return GraphError(
        405, "Request_BadRequest", f"The Graph emulator does not implement {call.method} {call.graph_path}."
    )


def _require(state: EmulatorState, allowed: frozenset[str]) -> None:
    """403 as Graph answers it when the app holds none of the permissions that allow the call."""
    if not state.app_permissions & allowed:
        raise GraphError(403, "Authorization_RequestDenied", _DENIED)


def _dispatch(state: EmulatorState, call: _Call) -> web.Response:
    """Route a Graph path (already without the version) to the directory operation."""
    directory = state.directory
    if call.graph_path is None:
        version = call.request.path.strip("/").split("/")[0]
        raise GraphError(400, "BadRequest", f"Invalid version: {version}. The Graph emulator serves /v1.0 and /beta.")
    segments = [s for s in call.graph_path.split("/") if s]
    lowered = [s.lower() for s in segments]
    method, reply, base = call.method, call.reply, call.base
    select = _query_value(call.query, "select")
    if lowered[:2] == ["rolemanagement", "directory"] and len(segments) == 3:
        return _role_assignments(state, call, lowered[2])
    if call.version == "/beta":
        raise GraphError(
            400,
            "BadRequest",
            "The Graph emulator serves /beta only for roleManagement/directory/transitiveRoleAssignments.",
        )
    if not segments:
        return reply.json(
            200,
            {
                "@odata.context": f"{base}/$metadata",
                "value": [
                    {"name": "users", "kind": "EntitySet", "url": "users"},
                    {"name": "invitations", "kind": "EntitySet", "url": "invitations"},
                ],
            },
        )
    if lowered == ["invitations"]:
        if method != "POST":
            raise _not_implemented(call)
        _require(state, _RESET_INVITATION)
        invitation = directory.reset_invitation(call.body)
        return reply.json(201, {"@odata.context": f"{base}/$metadata#invitations/$entity", **invitation})
    if lowered[0] != "users":
        raise _not_found_segment(segments[1] if lowered[0] == "invitations" else segments[0])
    if len(segments) == 1:
        if method != "GET":
            raise _not_implemented(call)
        _require(state, _READ_USERS)
        return _list_users(directory, call)
    if len(segments) == 2:
        if method == "GET":
            _require(state, _READ_USERS)
            user = directory.get_user(segments[1], select)
            ctx = f"users({select})/$entity" if select else "users/$entity"
            return reply.json(200, {"@odata.context": f"{base}/$metadata#{ctx}", **user})
        if method == "PATCH":
            _require(state, _WRITE_USERS)
            directory.patch_user(segments[1], call.body)
            return reply.empty(204)
        raise _not_implemented(call)
    raise _not_found_segment(segments[2])


def _role_assignments(state: EmulatorState, call: _Call, collection: str) -> web.Response:
    """v1.0 ``roleAssignments`` and beta-only ``transitiveRoleAssignments``, as Graph documents them."""
    transitive = collection == "transitiveroleassignments"
    if collection != "roleassignments" and not transitive:
        raise _not_found_segment(collection)
    if transitive and call.version != "/beta":
        raise _not_found_segment("transitiveRoleAssignments")
    if call.method != "GET":
        raise _not_implemented(call)
    _require(state, _READ_ROLES)
    count = (_query_value(call.query, "count") or "").lower() == "true"
    if transitive:
        # Documented: 404 without ConsistencyLevel: eventual; $count and $filter are required too.
        if (call.entry["consistencyLevel"] or "").lower() != "eventual":
            raise GraphError(
                404, "Request_ResourceNotFound", "Resource not found for the segment 'transitiveRoleAssignments'."
            )
        if not count:
            raise GraphError(400, "Request_UnsupportedQuery", "transitiveRoleAssignments requires $count=true.")
    found = state.directory.role_assignments(_query_value(call.query, "filter"), transitive=transitive)
    select = _query_value(call.query, "select")
    if select:
        wanted = [p.strip() for p in select.split(",") if p.strip()]
        found = [{p: item.get(p) for p in wanted} for item in found]
    name = "transitiveRoleAssignments" if transitive else "roleAssignments"
    payload: JsonDict = {"@odata.context": f"{call.base}/$metadata#roleManagement/directory/{name}"}
    if count:
        payload["@odata.count"] = len(found)
    payload["value"] = found
    return call.reply.json(200, payload)


def _list_users(directory: Directory, call: _Call) -> web.Response:
    query = call.query
    select = _query_value(query, "select")
    count = (_query_value(query, "count") or "").lower() == "true"
    eventual = (call.entry["consistencyLevel"] or "").lower() == "eventual"
    top_text = _query_value(query, "top")
    page_size = _PAGE_SIZE
    if top_text is not None:
        if not top_text.isdigit() or not 1 <= int(top_text) <= 999:
            raise GraphError(
                400,
                "Request_BadRequest",
                f"Invalid page size specified: '{top_text}'. Must be between 1 and 999 inclusive.",
            )
        page_size = int(top_text)
    users = directory.list_users(
        filter_text=_query_value(query, "filter"), select=select, eventual=eventual, count=count
    )
    # The skip token is the emulator's own format (an offset); Graph's is opaque.
    skip_text = query.get("$skiptoken") or "0"
    offset = int(skip_text) if skip_text.isdigit() else 0
    ctx = f"users({select})" if select else "users"
    payload: JsonDict = {"@odata.context": f"{call.base}/$metadata#{ctx}"}
    if count:
        payload["@odata.count"] = len(users)
    if offset + page_size < len(users):
        next_query = {**query, "$skiptoken": str(offset + page_size)}
        payload["@odata.nextLink"] = f"{call.base}/users?{urlencode(next_query)}"
    payload["value"] = users[offset : offset + page_size]
    return call.reply.json(200, payload)


# --- /_emulator control API (no auth; tests and benchmarks drive the emulator here) ---------

ControlFn = Callable[[EmulatorState, Any, web.Request], Any]


def _control(fn: ControlFn) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Wrap a control function: parse the JSON body, map ValueError/KeyError to 400/404."""

    async def handler(request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            body = json.loads(raw) if raw.strip() else None
            result = fn(request.app[STATE_KEY], body, request)
        except KeyError as exc:
            return web.json_response({"error": f"not found: {exc.args[0]}"}, status=404)
        except ValueError as exc:  # includes json.JSONDecodeError
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(result)

    return handler


def _add_fault(state: EmulatorState, body: Any, _: web.Request) -> JsonDict:
    rule = FaultRule.from_json(body)
    state.rules.add(rule)
    return rule.describe()


def _clear_faults(state: EmulatorState, _body: Any, _: web.Request) -> JsonDict:
    state.rules.clear()
    return {"cleared": True}


def _set_chaos(state: EmulatorState, body: Any, _: web.Request) -> JsonDict:
    state.chaos.configure(body)
    return state.chaos.settings


def _set_latency(state: EmulatorState, body: Any, _: web.Request) -> JsonDict:
    ms = (body or {}).get("ms", 0) if isinstance(body, dict) or body is None else body
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms < 0:
        raise ValueError("ms must be a non-negative number")
    state.latency_ms = float(ms)
    return {"ms": state.latency_ms}


def _set_stale_reads(state: EmulatorState, body: Any, _: web.Request) -> JsonDict:
    count = (body or {}).get("count", 0) if isinstance(body, dict) or body is None else body
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError("count must be a non-negative integer")
    state.directory.stale_reads = count
    return {"count": count}


def _set_replication_lag(state: EmulatorState, body: Any, _: web.Request) -> JsonDict:
    body = body if isinstance(body, dict) else {"seconds": body or 0}
    seconds = body.get("seconds", 0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError("seconds must be a non-negative number")
    directory = state.directory
    directory.replication_lag = float(seconds)
    directory.lag_reads = bool(body.get("reads", True))
    directory.lag_index = bool(body.get("index", True))
    directory.lag_invitations = bool(body.get("invitations", True))
    return {
        "seconds": directory.replication_lag,
        "reads": directory.lag_reads,
        "index": directory.lag_index,
        "invitations": directory.lag_invitations,
    }


def _set_app_permissions(state: EmulatorState, body: Any, _: web.Request) -> JsonDict:
    permissions = body.get("permissions") if isinstance(body, dict) else body
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise ValueError('send {"permissions": ["User.ReadWrite.All", ...]}')
    state.app_permissions = frozenset(permissions)
    return {"permissions": sorted(state.app_permissions)}


def _set_role_assignments(state: EmulatorState, body: Any, _: web.Request) -> JsonDict:
    assignments = body.get("roleAssignments") if isinstance(body, dict) else body
    groups = body.get("groups") if isinstance(body, dict) else None
    if not isinstance(assignments, list):
        raise ValueError('send {"roleAssignments": [...], "groups": [...]} (groups optional)')
    state.directory.set_role_assignments(assignments)
    if isinstance(groups, list):
        state.directory.set_groups(groups)
    return {"roleAssignments": len(assignments)}


def _set_write_budget(state: EmulatorState, body: Any, _: web.Request) -> JsonDict | None:
    state.budget.configure(body)
    return state.budget.settings


def _get_journal(state: EmulatorState, _body: Any, request: web.Request) -> list[JsonDict]:
    method = (request.query.get("method") or "").upper()
    contains = request.query.get("pathContains")
    since = int(request.query.get("since") or 0)
    return [
        e
        for e in state.journal
        if (not method or e["method"] == method) and (contains is None or contains in e["path"]) and e["seq"] > since
    ]


def _clear_journal(state: EmulatorState, _body: Any, _: web.Request) -> JsonDict:
    state.journal.clear()
    return {"cleared": True}


def _list_all_users(state: EmulatorState, _body: Any, _: web.Request) -> list[JsonDict]:
    return state.directory.snapshot()


def _replace_users(state: EmulatorState, body: Any, _: web.Request) -> JsonDict:
    users = body.get("users") if isinstance(body, dict) else body
    if not isinstance(users, list):
        raise ValueError('send a list of users or {"users": [...]}')
    validated = [validate_user(u) for u in users]  # all or nothing
    state.directory.replace_all(validated)
    return {"count": len(validated)}


def _put_user(state: EmulatorState, body: Any, _: web.Request) -> JsonDict:
    return state.directory.put_user(body)


def _get_one_user(state: EmulatorState, _body: Any, request: web.Request) -> JsonDict:
    user = state.directory.raw_user(request.match_info["user_id"])
    if user is None:
        raise KeyError(request.match_info["user_id"])
    return user


def _delete_user(state: EmulatorState, _body: Any, request: web.Request) -> JsonDict:
    if not state.directory.remove_user(request.match_info["user_id"]):
        raise KeyError(request.match_info["user_id"])
    return {"deleted": True}


def _reset(state: EmulatorState, _body: Any, _: web.Request) -> JsonDict:
    state.reset()
    return {"reset": True, "users": len(state.directory)}


def _health(state: EmulatorState, _body: Any, _: web.Request) -> JsonDict:
    return {"status": "ok", "journal": len(state.journal)}


def _add_control_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/_emulator/health", _control(_health))
    r.add_post("/_emulator/reset", _control(_reset))
    r.add_get("/_emulator/faults", _control(lambda s, _b, _r: s.rules.describe()))
    r.add_post("/_emulator/faults", _control(_add_fault))
    r.add_delete("/_emulator/faults", _control(_clear_faults))
    r.add_get("/_emulator/chaos", _control(lambda s, _b, _r: s.chaos.settings))
    r.add_post("/_emulator/chaos", _control(_set_chaos))
    r.add_post("/_emulator/latency", _control(_set_latency))
    r.add_post("/_emulator/stale-reads", _control(_set_stale_reads))
    r.add_post("/_emulator/write-budget", _control(_set_write_budget))
    r.add_post("/_emulator/replication-lag", _control(_set_replication_lag))
    r.add_get("/_emulator/app-permissions", _control(lambda s, _b, _r: {"permissions": sorted(s.app_permissions)}))
    r.add_post("/_emulator/app-permissions", _control(_set_app_permissions))
    r.add_put("/_emulator/role-assignments", _control(_set_role_assignments))
    r.add_get("/_emulator/journal", _control(_get_journal))
    r.add_delete("/_emulator/journal", _control(_clear_journal))
    r.add_get("/_emulator/users", _control(_list_all_users))
    r.add_put("/_emulator/users", _control(_replace_users))
    r.add_post("/_emulator/users", _control(_put_user))
    r.add_get("/_emulator/users/{user_id}", _control(_get_one_user))
    r.add_delete("/_emulator/users/{user_id}", _control(_delete_user))


def create_app(
    users_path: Path | None = DEFAULT_USERS_PATH,
    *,
    journal_limit: int = 200_000,
    app_permissions: tuple[str, ...] = DEFAULT_APP_PERMISSIONS,
) -> web.Application:
    """Build the emulator application (fixture loaded, all faults off).

    ``app_permissions`` are the Graph application permissions the emulated app was granted;
    a call none of them allows is answered 403 Authorization_RequestDenied, as Graph does.
    """
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[STATE_KEY] = EmulatorState(users_path, journal_limit, app_permissions)
    _add_control_routes(app)
    app.router.add_route("*", "/{tail:.*}", graph_handler)
    return app
