"""The claim that makes delivery idempotent, over the in-memory table: new, finished, busy, lease expired, races."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from shared.platform.errors import TransientError
from shared.platform.storage_stub import MemoryTable
from shared.reset.status import LEASE, Status, StatusStore, utcnow
from tests.factories import status_record


@pytest.fixture
def table() -> MemoryTable:
    return MemoryTable()


@pytest.fixture
def store(table: MemoryTable) -> StatusStore:
    return StatusStore(table)


async def test_a_new_request_is_claimed_as_its_first_attempt(store: StatusStore) -> None:
    """The first delivery creates the record: Processing, attempt 1, a lease held by this delivery."""
    before = utcnow()
    claim = await store.claim(status_record(), owner="a")
    record = claim.record
    assert claim.kind == "claimed" and (record.status, record.attempts, record.lease_owner) == (
        Status.PROCESSING,
        1,
        "a",
    )
    assert record.lease_until is not None and record.lease_until >= before + LEASE
    assert [e["event"] for e in record.history] == ["claimed"]
    assert await store.get("req-1") == record


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED, Status.DRY_RUN_PASSED])
async def test_a_finished_request_is_not_claimed_again(store: StatusStore, status: Status) -> None:
    """A redelivery of a request that already ended does nothing and changes nothing."""
    ended = await store.create(status_record(status=status, attempts=1))
    claim = await store.claim(status_record(), owner="b")
    assert claim.kind == "finished" and claim.record == ended
    assert await store.get("req-1") == ended


async def test_a_live_lease_of_another_delivery_makes_the_request_busy(store: StatusStore) -> None:
    """Two deliveries of one request never work on it at once: the second backs off, the record unchanged."""
    first = await store.claim(status_record(), owner="a")
    claim = await store.claim(status_record(), owner="b")
    assert claim.kind == "busy" and claim.record == first.record
    assert await store.get("req-1") == first.record


async def test_the_lease_holder_may_claim_again(store: StatusStore) -> None:
    """The delivery that holds the lease is not busy with itself."""
    await store.claim(status_record(), owner="a")
    claim = await store.claim(status_record(), owner="a")
    assert (claim.kind, claim.record.attempts) == ("claimed", 2)


async def test_an_expired_lease_is_taken_over_with_attempts_plus_one(store: StatusStore) -> None:
    """A delivery that died holding the lease does not block the request once the lease has run out."""
    first = await store.claim(status_record(), owner="a")
    await store.save(first.record, lease_until=utcnow() - timedelta(seconds=1))
    claim = await store.claim(status_record(), owner="b")
    assert claim.kind == "claimed"
    assert (claim.record.attempts, claim.record.lease_owner) == (2, "b")
    assert [e["event"] for e in claim.record.history] == ["claimed", "claimed"]


async def test_a_released_lease_is_claimed_at_once(store: StatusStore) -> None:
    """After a transient failure the lease is given back, so the redelivery need not wait for it to expire."""
    first = await store.claim(status_record(), owner="a")
    await store.release(first.record, "transientFailure", code="GraphUnavailable")
    claim = await store.claim(status_record(), owner="b")
    assert (claim.kind, claim.record.attempts) == ("claimed", 2)


async def test_a_request_accepted_by_the_api_is_claimed_by_its_first_delivery(store: StatusStore) -> None:
    """The HTTP intake records Accepted (attempt 0); the worker's claim makes it attempt 1."""
    await store.create(status_record(status=Status.ACCEPTED, message_hash="h-api"))
    claim = await store.claim(status_record(message_hash="h-queue"), owner="a")
    assert (claim.kind, claim.record.attempts, claim.record.status) == ("claimed", 1, Status.PROCESSING)
    assert claim.record.message_hash == "h-api"


async def test_of_two_concurrent_first_claims_exactly_one_wins(table: MemoryTable, store: StatusStore) -> None:
    """Two deliveries racing to create the record: one claims, the other sees its live lease."""
    claims = await asyncio.gather(*(store.claim(status_record(), owner=o) for o in ("a", "b")))
    assert sorted(c.kind for c in claims) == ["busy", "claimed"]
    assert table.calls.count("create_entity") == 2, "both found no record and raced to create it"
    stored = await store.get("req-1")
    assert stored is not None and stored.attempts == 1
    assert stored.lease_owner == next(c.record.lease_owner for c in claims if c.kind == "claimed")


async def test_of_two_concurrent_takeovers_of_an_expired_lease_exactly_one_wins(
    table: MemoryTable, store: StatusStore
) -> None:
    """Both read the expired record; the ETag lets one save its claim and sends the other back to look again."""
    first = await store.claim(status_record(), owner="a")
    await store.save(first.record, lease_until=utcnow() - timedelta(seconds=1))
    updates_before = table.calls.count("update_entity")
    claims = await asyncio.gather(*(store.claim(status_record(), owner=o) for o in ("b", "c")))
    assert sorted(c.kind for c in claims) == ["busy", "claimed"]
    assert table.calls.count("update_entity") - updates_before == 2, "both tried to save a claim"
    stored = await store.get("req-1")
    assert stored is not None and stored.attempts == 2


async def test_a_stale_copy_of_a_record_cannot_overwrite_a_newer_one(store: StatusStore) -> None:
    """save() is conditional on the ETag read: a writer holding an old copy gets StatusConflict."""
    claimed = (await store.claim(status_record(), owner="a")).record
    await store.save(claimed, phase="Inviting")
    with pytest.raises(TransientError) as raised:
        await store.save(replace(claimed), status=Status.FAILED)
    assert raised.value.code == "StatusConflict"


async def test_a_storage_blip_while_claiming_is_a_transient_failure() -> None:
    """The table answering nothing is retried by the host, never mistaken for a finished request."""
    table = MemoryTable()
    table.fail("get_entity")
    with pytest.raises(TransientError) as raised:
        await StatusStore(table).claim(status_record(), owner="a")
    assert raised.value.code == "StorageUnavailable"
    assert table.entities == []
