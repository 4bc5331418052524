"""In-memory doubles of the async storage clients the app uses: a table and a queue, for fast tests.

``MemoryTable`` covers what ``StatusStore`` and the bulk progress code call on azure-data-tables'
``TableClient``; ``MemoryQueue`` what ``Publisher`` calls on ``QueueClient``. Both raise the
azure.core errors the SDK raises, and entities go through the SDK's own (de)serializers, so a
value comes back with the type (and ``.metadata['etag']``) Azure Tables would give it. Each call
gives the event loop away once, like real I/O, so concurrent claims really interleave.
``fail(method, ...)`` scripts storage blips. Under mypy each double is a subclass of the SDK
client, which makes mypy check every overridden signature against the real one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.async_paging import AsyncItemPaged, AsyncList
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.data.tables import TableEntity, UpdateMode

# The SDK's own wire (de)serialization and filter parameter substitution: private, but using
# them is what makes the double agree with the client byte for byte (pinned in requirements.txt).
from azure.data.tables._deserialize import _convert_to_entity
from azure.data.tables._serialize import _add_entity_properties, _get_match_condition, _parameter_filter_substitution
from azure.storage.queue import QueueMessage

from shared.platform.scripted import ErrorSource, FailureScript

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient as _TableClient
    from azure.storage.queue.aio import QueueClient as _QueueClient
else:
    _TableClient = _QueueClient = object

T = TypeVar("T")

TABLE_METHODS = (
    "create_table",
    "get_entity",
    "create_entity",
    "update_entity",
    "upsert_entity",
    "delete_entity",
    "query_entities",
)
TABLE_WRITES = (
    "create_table",
    "create_entity",
    "update_entity",
    "upsert_entity",
    "delete_entity",
)
QUEUE_METHODS = ("create_queue", "send_message")

MAX_PAGE = 1000  # Azure Tables returns at most 1,000 entities per page
MAX_STRING_BYTES = 64 * 1024  # an Edm.String property holds at most 64 KiB (UTF-16)
MAX_MESSAGE_BYTES = 64 * 1024  # a queue message holds at most 64 KiB


def _entity_from_wire(wire: dict[str, Any]) -> TableEntity:
    entity: TableEntity = _convert_to_entity(wire)  # type: ignore[no-untyped-call]
    return entity


def _condition(etag: str | None, match_condition: MatchConditions | None) -> MatchConditions:
    """The SDK's check of etag and match condition (ValueError on a bad pair), before any request."""
    chosen = match_condition or MatchConditions.Unconditionally
    condition: MatchConditions = _get_match_condition(etag=etag, match_condition=chosen)  # type: ignore[no-untyped-call]
    return condition


def storage_fault() -> ServiceRequestError:
    """The default scripted blip: the request never got an answer (what a dropped connection raises)."""
    return ServiceRequestError("injected storage fault: connection reset")


def _service_error(kind: type[HttpResponseError], status: int, code: str, message: str) -> HttpResponseError:
    error = kind(message=f"{message}\nErrorCode:{code}")
    error.status_code = status
    error.error_code = code  # type: ignore[attr-defined]  # the SDK's decoded errors carry it too
    return error


# --- OData filters --------------------------------------------------------------------------


class FilterError(ValueError):
    """A filter outside the grammar the double understands (the service would answer 400)."""


@dataclass(frozen=True)
class _Compare:
    prop: str
    op: str
    value: Any


@dataclass(frozen=True)
class _Not:
    part: _Node


@dataclass(frozen=True)
class _Bool:
    op: str
    parts: tuple[_Node, ...]


_Node = _Compare | _Not | _Bool

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<typed>(?:datetime|guid|X|binary)'(?:[^']|'')*')
      | (?P<str>'(?:[^']|'')*')
      | (?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[LlDdFfMm]?)
      | (?P<paren>[()])
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<bad>\S)
    )""",
    re.VERBOSE,
)
_OPERATORS = {"eq", "ne", "gt", "ge", "lt", "le"}


def _literal(kind: str, text: str) -> Any:
    if kind == "str":
        return text[1:-1].replace("''", "'")
    if kind == "num":
        if text[-1] in "Ll":
            return int(text[:-1])
        if text[-1] in "DdFfMm" or any(c in text for c in ".eE"):
            return float(text.rstrip("DdFfMm"))
        return int(text)
    prefix, _, quoted = text.partition("'")
    inner = quoted[:-1].replace("''", "'")
    if prefix == "datetime":
        return _aware(datetime.fromisoformat(inner.replace("Z", "+00:00")))
    if prefix == "guid":
        return uuid.UUID(inner)
    return bytes.fromhex(inner)


class _Parser:
    """Recursive descent: or > and > not > (group | property operator literal)."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        for match in _TOKEN.finditer(text.strip()):
            kind = match.lastgroup or "bad"
            if kind == "bad":
                raise FilterError(f"unexpected character {match.group(kind)!r} in filter {text!r}")
            self.tokens.append((kind, match.group(kind)))
        self.pos = 0
        self.text = text

    def parse(self) -> _Node:
        node = self._or()
        if self.pos != len(self.tokens):
            raise FilterError(f"unexpected {self.tokens[self.pos][1]!r} in filter {self.text!r}")
        return node

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _next(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            raise FilterError(f"filter {self.text!r} ends too early")
        self.pos += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token[0] == "word" and token[1].lower() == word:
            self.pos += 1
            return True
        return False

    def _or(self) -> _Node:
        parts = [self._and()]
        while self._keyword("or"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else _Bool("or", tuple(parts))

    def _and(self) -> _Node:
        parts = [self._not()]
        while self._keyword("and"):
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else _Bool("and", tuple(parts))

    def _not(self) -> _Node:
        return _Not(self._not()) if self._keyword("not") else self._atom()

    def _atom(self) -> _Node:
        kind, text = self._next()
        if (kind, text) == ("paren", "("):
            node = self._or()
            if self._next() != ("paren", ")"):
                raise FilterError(f"missing ')' in filter {self.text!r}")
            return node
        if kind != "word":
            raise FilterError(f"expected a property name, got {text!r} in filter {self.text!r}")
        op_kind, op = self._next()
        if op_kind != "word" or op.lower() not in _OPERATORS:
            raise FilterError(f"expected one of {sorted(_OPERATORS)} after {text}, got {op!r}")
        value_kind, value = self._next()
        if value_kind == "word" and value.lower() in {"true", "false"}:
            return _Compare(text, op.lower(), value.lower() == "true")
        if value_kind not in {"str", "num", "typed"}:
            raise FilterError(f"expected a literal after {text} {op}, got {value!r}")
        return _Compare(text, op.lower(), _literal(value_kind, value))


def parse_filter(text: str) -> _Node:
    return _Parser(text).parse()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _compare(left: Any, op: str, right: Any) -> bool:
    # Values of different types never match, whatever the operator (the service's rule), and
    # neither does a property the entity does not have.
    if left is None or _kind(left) != _kind(right):
        return False
    if isinstance(left, datetime):
        left, right = _aware(left), _aware(right)
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    if op == "gt":
        return bool(left > right)
    if op == "ge":
        return bool(left >= right)
    if op == "lt":
        return bool(left < right)
    return bool(left <= right)


def matches(node: _Node, values: dict[str, Any]) -> bool:
    """Whether an entity (property name → typed value) satisfies the parsed filter."""
    if isinstance(node, _Bool):
        results = (matches(part, values) for part in node.parts)
        return all(results) if node.op == "and" else any(results)
    if isinstance(node, _Not):
        return not matches(node.part, values)
    return _compare(values.get(node.prop), node.op, node.value)


# --- the table --------------------------------------------------------------------------------


def _typed(value: Any, edm: str | None) -> Any:
    """A wire value as a filter compares it."""
    if edm == "Edm.Int64":
        return int(value)
    if edm == "Edm.DateTime":
        return _aware(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    if edm == "Edm.Guid":
        return uuid.UUID(str(value))
    if edm == "Edm.Binary":
        return base64.b64decode(value)
    if edm == "Edm.Double":
        return float(value)
    return value


@dataclass
class _Row:
    wire: dict[str, Any]  # the JSON the SDK sent, "@odata.type" annotations included
    timestamp: datetime
    etag: str

    def entity(self, select: str | None = None) -> TableEntity:
        wire = dict(self.wire)
        if select:
            wanted = {name.strip() for name in select.split(",")}
            wire = {k: v for k, v in wire.items() if k.split("@", 1)[0] in wanted}
        stamp = self.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return _entity_from_wire({**wire, "odata.etag": self.etag, "Timestamp": stamp})

    def values(self) -> dict[str, Any]:
        out = {
            name: _typed(value, self.wire.get(f"{name}@odata.type"))
            for name, value in self.wire.items()
            if "@" not in name
        }
        out["Timestamp"] = self.timestamp
        return out


def _check_values(wire: dict[str, Any]) -> None:
    for name, value in wire.items():
        if isinstance(value, str) and len(value.encode("utf-16-le")) > MAX_STRING_BYTES:
            raise _service_error(
                HttpResponseError, 400, "PropertyValueTooLarge", f"The property value of {name} exceeds 64 KiB."
            )


class MemoryTable(_TableClient):
    """An async ``TableClient`` double over a dict (see the module docstring)."""

    def __init__(self, table_name: str = "GuestResetStatus", *, exists: bool = True) -> None:
        self.table_name = table_name
        self.exists = exists
        self.closed = False
        self.calls: list[str] = []
        self.failures = FailureScript(TABLE_METHODS, writes=TABLE_WRITES)
        self._rows: dict[tuple[str, str], _Row] = {}
        self._last_stamp = datetime.min.replace(tzinfo=UTC)

    def fail(
        self, method: str, error: ErrorSource = storage_fault, *, times: int | None = 1, applied: bool = False
    ) -> None:
        """The next ``times`` calls of ``method`` raise ``error`` (by default a dropped connection).

        ``applied=True`` (writes only): the write lands, then the error is raised, as when the
        response was lost on the way back.
        """
        self.failures.add(method, error, times=times, applied=applied)

    @property
    def entities(self) -> list[TableEntity]:
        """Every stored entity as the SDK would return it, in table order (a test's view)."""
        return [self._rows[key].entity() for key in sorted(self._rows)]

    async def _call(self, method: str, action: Callable[[], T]) -> T:
        self.calls.append(method)
        await asyncio.sleep(0)
        return self.failures.apply(method, action)

    def _require_table(self) -> None:
        if not self.exists:
            raise _service_error(
                ResourceNotFoundError, 404, "TableNotFound", f"The table specified does not exist: {self.table_name}"
            )

    def _stamp(self) -> tuple[datetime, str]:
        # Strictly increasing, so every write gets a new ETag even within one clock tick.
        now = max(datetime.now(UTC), self._last_stamp + timedelta(microseconds=1))
        self._last_stamp = now
        text = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return now, f"W/\"datetime'{quote(text)}'\""

    def _store(self, key: tuple[str, str], wire: dict[str, Any]) -> dict[str, Any]:
        _check_values(wire)
        timestamp, etag = self._stamp()
        self._rows[key] = _Row(wire, timestamp, etag)
        return {"date": timestamp, "etag": etag, "version": "2019-02-02"}

    def _missing(self) -> HttpResponseError:
        return _service_error(ResourceNotFoundError, 404, "ResourceNotFound", "The specified resource does not exist.")

    async def create_table(self, **kwargs: Any) -> Any:
        def create() -> None:
            if self.exists:
                raise _service_error(
                    ResourceExistsError, 409, "TableAlreadyExists", "The table specified already exists."
                )
            self.exists = True

        await self._call("create_table", create)
        from azure.data.tables import TableItem

        return TableItem(name=self.table_name)

    async def get_entity(
        self, partition_key: str, row_key: str, *, select: str | list[str] | None = None, **kwargs: Any
    ) -> TableEntity:
        chosen = ",".join(select) if isinstance(select, list) else select

        def get() -> TableEntity:
            self._require_table()
            row = self._rows.get((partition_key, row_key))
            if row is None:
                raise self._missing()
            return row.entity(chosen)

        return await self._call("get_entity", get)

    async def create_entity(self, entity: Any, **kwargs: Any) -> dict[str, Any]:
        wire = _add_entity_properties(entity)
        key = (wire["PartitionKey"], wire["RowKey"])

        def create() -> dict[str, Any]:
            self._require_table()
            if key in self._rows:
                raise _service_error(
                    ResourceExistsError, 409, "EntityAlreadyExists", "The specified entity already exists."
                )
            return self._store(key, wire)

        return await self._call("create_entity", create)

    async def update_entity(
        self,
        entity: Any,
        mode: str | UpdateMode = UpdateMode.MERGE,
        *,
        etag: str | None = None,
        match_condition: MatchConditions | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        if match_condition and not etag and isinstance(entity, TableEntity):
            etag = entity.metadata.get("etag")
        condition = _condition(etag, match_condition)
        if mode not in (UpdateMode.MERGE, UpdateMode.REPLACE):
            raise ValueError(f"Mode type '{mode}' is not supported.")
        wire = _add_entity_properties(entity)
        key = (wire["PartitionKey"], wire["RowKey"])

        def update() -> dict[str, Any]:
            self._require_table()
            row = self._rows.get(key)
            if row is None:
                raise self._missing()
            if condition == MatchConditions.IfNotModified and row.etag != etag:
                raise _service_error(
                    ResourceModifiedError,
                    412,
                    "UpdateConditionNotSatisfied",
                    "The update condition specified in the request was not satisfied.",
                )
            return self._store(key, wire if mode == UpdateMode.REPLACE else {**row.wire, **wire})

        return await self._call("update_entity", update)

    async def upsert_entity(
        self, entity: Any, mode: str | UpdateMode = UpdateMode.MERGE, **kwargs: Any
    ) -> dict[str, Any]:
        if mode not in (UpdateMode.MERGE, UpdateMode.REPLACE):
            raise ValueError(f"Update mode {mode} is not supported.")
        wire = _add_entity_properties(entity)
        key = (wire["PartitionKey"], wire["RowKey"])

        def upsert() -> dict[str, Any]:
            self._require_table()
            row = self._rows.get(key)
            merged = {**row.wire, **wire} if row is not None and mode == UpdateMode.MERGE else wire
            return self._store(key, merged)

        return await self._call("upsert_entity", upsert)

    async def delete_entity(self, *args: Any, **kwargs: Any) -> None:
        # The SDK's two call forms: (partition_key, row_key) or (entity); a missing entity is no error.
        entity = kwargs.pop("entity", None) or (args[0] if args and not isinstance(args[0], str) else None)
        if entity is not None:
            key = (entity["PartitionKey"], entity["RowKey"])
        else:
            key = (kwargs.pop("partition_key", None) or args[0], kwargs.pop("row_key", None) or args[1])
        etag = kwargs.pop("etag", None)
        match_condition = kwargs.pop("match_condition", None)
        if match_condition and not etag and isinstance(entity, TableEntity):
            etag = entity.metadata.get("etag")
        condition = _condition(etag, match_condition)

        def delete() -> None:
            self._require_table()
            row = self._rows.get(key)
            if row is None:
                return
            if condition == MatchConditions.IfNotModified and row.etag != etag:
                raise _service_error(
                    ResourceModifiedError,
                    412,
                    "UpdateConditionNotSatisfied",
                    "The update condition specified in the request was not satisfied.",
                )
            del self._rows[key]

        await self._call("delete_entity", delete)

    def query_entities(
        self,
        query_filter: str,
        *,
        results_per_page: int | None = None,
        select: str | list[str] | None = None,
        parameters: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncItemPaged[TableEntity]:
        # Substituted as the SDK does (it needs "@name" followed by a space), then evaluated here.
        text = _parameter_filter_substitution(parameters, query_filter)
        chosen = ",".join(select) if isinstance(select, list) else select
        page_size = min(results_per_page or MAX_PAGE, MAX_PAGE)

        def find(start: tuple[str, str] | None) -> tuple[list[TableEntity], tuple[str, str] | None]:
            self._require_table()
            try:
                node = parse_filter(text)
            except FilterError as error:
                raise _service_error(HttpResponseError, 400, "InvalidInput", str(error)) from None
            keys = [k for k in sorted(self._rows) if (start is None or k >= start)]
            found = [k for k in keys if matches(node, self._rows[k].values())]
            page, rest = found[:page_size], found[page_size:]
            return [self._rows[k].entity(chosen) for k in page], (rest[0] if rest else None)

        async def get_next(token: Any) -> tuple[list[TableEntity], tuple[str, str] | None]:
            if token is None:
                return await self._call("query_entities", lambda: find(None))
            await asyncio.sleep(0)
            return find(token)

        async def extract(page: tuple[list[TableEntity], Any]) -> tuple[Any, AsyncList[TableEntity]]:
            return page[1], AsyncList(page[0])

        return AsyncItemPaged(get_next, extract)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()


# --- the queue --------------------------------------------------------------------------------


class MemoryQueue(_QueueClient):
    """An async ``QueueClient`` double that keeps what is sent (see the module docstring)."""

    def __init__(self, queue_name: str = "queue", *, exists: bool = True) -> None:
        self.queue_name = queue_name
        self.exists = exists
        self.closed = False
        self.messages: list[str] = []
        # Messages sent invisible for a while (held requests), with their visibility timeout.
        self.hidden: list[tuple[str, int]] = []
        self.failures = FailureScript(QUEUE_METHODS, writes=QUEUE_METHODS)

    def fail(
        self, method: str, error: ErrorSource = storage_fault, *, times: int | None = 1, applied: bool = False
    ) -> None:
        """The next ``times`` calls of ``method`` raise ``error`` (by default a dropped connection)."""
        self.failures.add(method, error, times=times, applied=applied)

    def decoded(self) -> list[Any]:
        """The messages sent so far, parsed as JSON (what the app sends)."""
        return [json.loads(text) for text in self.messages]

    async def create_queue(
        self,
        *,
        metadata: dict[str, str] | None = None,
        timeout: int | None = None,  # noqa: ASYNC109  (the SDK's server-side timeout, kept for its signature)
        **kwargs: Any,
    ) -> None:
        def create() -> None:
            if self.exists:
                raise _service_error(ResourceExistsError, 409, "QueueAlreadyExists", "Queue already exists")
            self.exists = True

        await asyncio.sleep(0)
        self.failures.apply("create_queue", create)

    async def send_message(
        self,
        content: object | None,
        *,
        visibility_timeout: int | None = None,
        time_to_live: int | None = None,
        timeout: int | None = None,  # noqa: ASYNC109  (the SDK's server-side timeout, kept for its signature)
        **kwargs: Any,
    ) -> QueueMessage:
        text = "" if content is None else str(content)

        def send() -> QueueMessage:
            if not self.exists:
                raise _service_error(ResourceNotFoundError, 404, "QueueNotFound", "The specified queue does not exist.")
            if len(text.encode("utf-8")) > MAX_MESSAGE_BYTES:
                raise _service_error(
                    HttpResponseError, 413, "RequestBodyTooLarge", "The request body is too large (64 KiB at most)."
                )
            self.messages.append(text)
            if visibility_timeout:
                self.hidden.append((text, visibility_timeout))
            now = datetime.now(UTC)
            return QueueMessage(
                content=text,
                id=str(uuid.uuid4()),
                inserted_on=now,
                expires_on=now + timedelta(seconds=time_to_live or 7 * 24 * 3600),
                pop_receipt=uuid.uuid4().hex,
                next_visible_on=now + timedelta(seconds=visibility_timeout or 0),
            )

        await asyncio.sleep(0)
        return self.failures.apply("send_message", send)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()
