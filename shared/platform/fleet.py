"""State every instance of the app shares: small table entities changed with optimistic concurrency.

One Azure Table (``RESET_STATE_TABLE``) holds one entity per app-wide concern: the Graph write
budget with its shared pause, the invitation pace, the invitation circuit breaker.
``FleetState.update`` reads an entity, lets the caller compute its new values, and writes them
back only if nobody changed the entity meanwhile (ETag), retrying on a conflict. Every storage
operation is counted, so the cost of coordination shows up in the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from shared.platform import telemetry
from shared.platform.errors import TransientError

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

T = TypeVar("T")
PARTITION = "fleet"
# Conflicts only happen when instances change the same entity within one round trip of each other
# (each instance has at most one change in flight per entity); past this many in a row something
# is wrong with storage, not with contention.
MAX_ATTEMPTS = 20
# After a change made from the remembered entity met a conflict (another instance is writing it
# too), this many changes read first before trusting the remembered entity again.
READ_FIRST_AFTER_CONFLICT = 8

# What a change function returns: the entity's new properties (None: leave it as it is), and
# the caller's answer.
Change = Callable[[dict[str, Any]], tuple[dict[str, Any] | None, T]]


@dataclass
class StorageOps:
    """Operations spent by this instance, by kind (the figures the fleet benchmark prints)."""

    reads: int = 0
    writes: int = 0
    conflicts: int = 0

    @property
    def total(self) -> int:
        return self.reads + self.writes


class FleetState:
    """Read-modify-write of named entities in one table, safe under any number of concurrent instances."""

    def __init__(self, table: TableClient) -> None:
        self._table = table
        self.ops = StorageOps()
        self._ensured = False
        # The entity as this instance last read or wrote it (properties, ETag): while no other
        # instance writes it, the next change starts from it and skips the read (one operation,
        # not two); the ETag makes that safe, a conflict sends the change back to reading.
        self._known: dict[str, tuple[dict[str, Any], str]] = {}
        self._read_first: dict[str, int] = {}

    async def ensure(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        if not self._ensured:
            with contextlib.suppress(ResourceExistsError):
                await self._table.create_table()
            self._ensured = True

    def _count(self, key: str, operation: str, result: str = "ok") -> None:
        if operation == "read":
            self.ops.reads += 1
        else:
            self.ops.writes += 1
        if result == "conflict":
            self.ops.conflicts += 1
        telemetry.count("guest_reset.fleet.storage_ops", entity=key, operation=operation, result=result)

    async def read(self, key: str) -> dict[str, Any]:
        """The entity's properties (empty when it does not exist yet)."""
        values, _ = await self._get(key)
        return values

    async def _get(self, key: str) -> tuple[dict[str, Any], str | None]:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            entity = await self._table.get_entity(PARTITION, key)
        except ResourceNotFoundError:
            self._count(key, "read")
            return {}, None
        except AzureError as error:
            raise _unavailable(key, error) from error
        self._count(key, "read")
        values = {k: v for k, v in entity.items() if k not in {"PartitionKey", "RowKey"}}
        return values, entity.metadata.get("etag")

    async def update(self, key: str, change: Change[T]) -> T:
        """Apply ``change`` to the entity's current properties atomically; returns its answer.

        ``change`` may run more than once (once per conflict), so it must be a pure function of
        the properties it is given. The entity as this instance last wrote it stands in for a read
        only when the change writes: the ETag then proves it current. An answer that writes
        nothing always comes from a fresh read.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        trust_known = self._read_first.get(key, 0) == 0
        if not trust_known:
            self._read_first[key] -= 1
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                # Jitter so that instances which collided do not collide again on the next round.
                await asyncio.sleep(random.uniform(0, 0.005 * min(attempt, 8)))
            known = self._known.pop(key, None) if attempt == 0 and trust_known else None
            etag: str | None = None
            values: dict[str, Any] | None = None
            if known is not None:
                current, etag = dict(known[0]), known[1]
                values, answer = change(dict(current))
                if values is None:
                    # Nothing to write, so no ETag can confirm the remembered entity: another
                    # instance may have changed it (an answer like "already open" must be true).
                    known = None
            if known is None:
                current, etag = await self._get(key)
                if etag is not None:
                    self._known[key] = (dict(current), etag)
                values, answer = change(dict(current))
            if values is None:
                return answer
            entity = {"PartitionKey": PARTITION, "RowKey": key, **values}
            try:
                if etag is None:
                    meta = await self._table.create_entity(entity)
                else:
                    meta = await self._table.update_entity(
                        entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
            except (ResourceModifiedError, ResourceExistsError):
                self._count(key, "write", "conflict")
                self._known.pop(key, None)
                if known is not None:
                    self._read_first[key] = READ_FIRST_AFTER_CONFLICT
                continue
            except AzureError as error:
                self._known.pop(key, None)
                raise _unavailable(key, error) from error
            self._count(key, "write")
            new_etag = (meta or {}).get("etag")
            if new_etag:
                self._known[key] = (dict(values), new_etag)
            return answer
        raise TransientError(f"app-wide state {key!r} kept changing under us", code="StorageUnavailable")

    async def merge(self, key: str, values: dict[str, Any]) -> None:
        """Set some properties without reading first: one operation, never a conflict.

        For news that must spread fast and may overwrite a concurrent change (a pause: if two
        instances pause at the same moment, one Retry-After wins and the other instance keeps
        its own longer pause locally). Optimistic writers of the entity see the new ETag and
        re-read, so nothing they write drops these values.
        """
        from azure.core.exceptions import AzureError
        from azure.data.tables import UpdateMode

        self._known.pop(key, None)
        try:
            await self._table.upsert_entity({"PartitionKey": PARTITION, "RowKey": key, **values}, mode=UpdateMode.MERGE)
        except AzureError as error:
            raise _unavailable(key, error) from error
        self._count(key, "write")

    async def aclose(self) -> None:
        await self._table.close()


def _unavailable(key: str, error: Exception) -> TransientError:
    return TransientError(f"app-wide state {key!r} unavailable: {type(error).__name__}", code="StorageUnavailable")
