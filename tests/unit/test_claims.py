"""The claim that makes delivery idempotent, over the in-memory table: new, finished, busy, lapsed, renewed,
released, races."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from shared.platform.errors import ClaimLostError, TransientError
from shared.platform.storage_stub import MemoryTable
from shared.reset.status import CLAIM, LEASE_ROW_KEY, Status, StatusStore, iso_time, utcnow
from tests.factories import status_record


@pytest.fixture
def table() -> MemoryTable:
    return MemoryTable()


@pytest.fixture
def store(table: MemoryTable) -> StatusStore:
    return StatusStore(table)


async def lapse(table: MemoryTable, request_id: str = "req-1") -> None:
    """Make the stored claim look as if its holder died a while ago (its expiry in the past)."""
    entity = await table.get_entity(request_id, LEASE_ROW_KEY)
    await table.update_entity({**entity, "Until": iso_time(utcnow() - timedelta(seconds=1))})


async def test_a_new_request_is_claimed_as_its_first_attempt(store: StatusStore) -> None:
    """The first delivery creates the record (Processing, attempt 1) and holds a short claim of its own."""
    before = utcnow()
    claim = await store.claim(status_record(), owner="a")
    assert claim.kind == "claimed" and (claim.record.status, claim.record.attempts) == (Status.PROCESSING, 1)
    assert claim.lease is not None and claim.lease.owner == "a" and claim.lease.until >= before + CLAIM
    assert [e["event"] for e in claim.record.history] == ["claimed"]
    assert await store.get("req-1") == claim.record
    stored = await store.read_lease("req-1")
    assert stored is not None and stored.owner == "a"


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED, Status.DRY_RUN_PASSED])
async def test_a_finished_request_is_not_claimed_again(store: StatusStore, status: Status) -> None:
    """A redelivery of a request that already ended does nothing and changes nothing."""
    ended = await store.create(status_record(status=status, attempts=1))
    claim = await store.claim(status_record(), owner="b")
    assert claim.kind == "finished" and claim.record == ended and claim.lease is None
    assert await store.get("req-1") == ended and await store.read_lease("req-1") is None


async def test_a_live_claim_of_another_delivery_makes_the_request_busy_until_it_can_lapse(store: StatusStore) -> None:
    """Two deliveries never work on one request at once: the second learns when the first's claim ends."""
    first = await store.claim(status_record(), owner="a")
    claim = await store.claim(status_record(), owner="b")
    assert first.lease is not None
    assert claim.kind == "busy" and claim.record == first.record and claim.busy_until == first.lease.until
    assert await store.get("req-1") == first.record


async def test_the_claim_holder_may_claim_again(store: StatusStore) -> None:
    """The delivery that holds the claim is not busy with itself."""
    await store.claim(status_record(), owner="a")
    claim = await store.claim(status_record(), owner="a")
    assert (claim.kind, claim.record.attempts) == ("claimed", 2)


async def test_a_lapsed_claim_is_taken_over_with_attempts_plus_one(table: MemoryTable, store: StatusStore) -> None:
    """A delivery that died holding the claim blocks the request only until the claim lapses."""
    await store.claim(status_record(), owner="a")
    await lapse(table)
    claim = await store.claim(status_record(), owner="b")
    assert claim.kind == "claimed" and claim.record.attempts == 2 and claim.lease is not None
    assert claim.lease.owner == "b" and [e["event"] for e in claim.record.history] == ["claimed", "claimed"]


async def test_the_heartbeat_renews_the_claim_without_touching_the_record(store: StatusStore) -> None:
    """Renewing moves the expiry forward in the claim's own entity, so the record's ETag (the reset's saves) holds."""
    first = await store.claim(status_record(), owner="a")
    assert first.lease is not None
    old_until, old_etag = first.lease.until, first.lease.etag
    await store.renew(first.lease)
    assert first.lease.until > old_until and first.lease.etag != old_etag
    stored = await store.read_lease("req-1")
    assert stored is not None and stored.until == first.lease.until
    # The reset's next ETag-guarded save of the record still succeeds after the renewal.
    saved = await store.save(first.record, phase="Inviting")
    assert saved.phase == "Inviting"


async def test_a_renewal_after_a_takeover_is_refused(table: MemoryTable, store: StatusStore) -> None:
    """A heartbeat that comes back after its claim lapsed and was taken over learns it lost it."""
    first = await store.claim(status_record(), owner="a")
    await lapse(table)
    await store.claim(status_record(), owner="b")
    assert first.lease is not None
    with pytest.raises(ClaimLostError):
        await store.renew(first.lease)


async def test_release_frees_the_request_at_once(store: StatusStore) -> None:
    """A released claim lets the next delivery in without waiting for it to lapse."""
    first = await store.claim(status_record(), owner="a")
    assert first.lease is not None and await store.release(first.lease) is True
    claim = await store.claim(status_record(), owner="b")
    assert (claim.kind, claim.record.attempts) == ("claimed", 2)


async def test_release_checks_the_owner(table: MemoryTable, store: StatusStore) -> None:
    """A delivery whose claim lapsed and was taken over cannot release the new holder's claim."""
    first = await store.claim(status_record(), owner="a")
    await lapse(table)
    second = await store.claim(status_record(), owner="b")
    assert first.lease is not None and second.lease is not None
    assert await store.release(first.lease) is False
    held = await store.read_lease("req-1")
    assert held is not None and held.owner == "b" and held.live()


async def test_taking_a_claim_fences_off_the_previous_holder(table: MemoryTable, store: StatusStore) -> None:
    """The takeover bumps the record under its ETag, so the old holder's next save fails instead of overwriting."""
    first = await store.claim(status_record(), owner="a")
    await lapse(table)
    await store.claim(status_record(), owner="b")
    with pytest.raises(TransientError) as raised:
        await store.save(first.record, status=Status.SUCCEEDED)
    assert raised.value.code == "StatusConflict"


async def test_a_request_accepted_by_the_api_is_claimed_by_its_first_delivery(store: StatusStore) -> None:
    """The HTTP intake records Accepted (attempt 0); the worker's claim makes it attempt 1."""
    await store.create(status_record(status=Status.ACCEPTED, message_hash="h-api"))
    claim = await store.claim(status_record(message_hash="h-queue"), owner="a")
    assert (claim.kind, claim.record.attempts, claim.record.status) == ("claimed", 1, Status.PROCESSING)
    assert claim.record.message_hash == "h-api"


async def test_of_two_concurrent_first_claims_exactly_one_wins(table: MemoryTable, store: StatusStore) -> None:
    """Two deliveries racing for a new request: one creates the claim (then the record), the other sees busy."""
    claims = await asyncio.gather(*(store.claim(status_record(), owner=o) for o in ("a", "b")))
    assert sorted(c.kind for c in claims) == ["busy", "claimed"]
    # Both found nothing and raced to create the claim; only the winner went on to create the record.
    assert table.calls.count("create_entity") == 3
    winner = next(c for c in claims if c.kind == "claimed")
    stored = await store.get("req-1")
    held = await store.read_lease("req-1")
    assert stored is not None and stored.attempts == 1
    assert held is not None and winner.lease is not None and held.owner == winner.lease.owner


async def test_of_two_concurrent_takeovers_of_a_lapsed_claim_exactly_one_wins(
    table: MemoryTable, store: StatusStore
) -> None:
    """Both read the lapsed claim; its ETag lets one take it and sends the other back to look again."""
    await store.claim(status_record(), owner="a")
    await lapse(table)
    before = table.calls.count("update_entity")
    claims = await asyncio.gather(*(store.claim(status_record(), owner=o) for o in ("b", "c")))
    assert sorted(c.kind for c in claims) == ["busy", "claimed"]
    # Both tried to replace the lapsed claim under its ETag; only the winner went on to bump the record.
    assert table.calls.count("update_entity") - before == 3
    stored = await store.get("req-1")
    assert stored is not None and stored.attempts == 2


async def test_a_delivery_that_died_between_claim_and_bump_blocks_others_only_until_its_claim_lapses(
    table: MemoryTable, store: StatusStore
) -> None:
    """The claim was taken but the record never bumped: busy while it lives, taken over once lapsed."""
    await store.create(status_record(status=Status.ACCEPTED))
    table.fail("update_entity")  # the bump of the Accepted record never lands: the delivery died here
    with pytest.raises(TransientError):
        await store.claim(status_record(), owner="a")
    assert await store.read_lease("req-1") is None, "a failed bump gives the claim back"
    # Now as if the delivery had died between the two writes: its claim is there, the bump is not.
    await store._table.create_entity(
        {"PartitionKey": "req-1", "RowKey": LEASE_ROW_KEY, "Owner": "a", "Until": iso_time(utcnow() + CLAIM)}
    )
    busy = await store.claim(status_record(), owner="b")
    assert busy.kind == "busy"
    await lapse(table)
    taken = await store.claim(status_record(), owner="b")
    assert (taken.kind, taken.record.attempts, taken.record.status) == ("claimed", 1, Status.PROCESSING)


async def test_a_bump_that_loses_a_race_gives_the_claim_back_and_reads_again(
    table: MemoryTable, store: StatusStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record changed between the read and the bump: the claim is released and the next try wins."""
    accepted = await store.create(status_record(status=Status.ACCEPTED))
    assert accepted is not None
    await store.save(accepted, source="changed meanwhile")  # the copy read below is now stale
    real = store._claim_state
    reads = 0

    async def stale_first(request_id: str) -> tuple[object, object]:
        nonlocal reads
        reads += 1
        record, lease = await real(request_id)
        return (accepted if reads == 1 else record), lease

    monkeypatch.setattr(store, "_claim_state", stale_first)
    claim = await store.claim(status_record(), owner="a")
    assert (claim.kind, claim.record.attempts, claim.record.source) == ("claimed", 1, "changed meanwhile")
    assert reads == 2 and table.calls.count("delete_entity") == 1, "the first claim was given back"
    held = await store.read_lease("req-1")
    assert held is not None and claim.lease is not None and held.etag == claim.lease.etag


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
    table.fail("query_entities")
    with pytest.raises(TransientError) as raised:
        await StatusStore(table).claim(status_record(), owner="a")
    assert raised.value.code == "StorageUnavailable"
    assert table.entities == []


async def test_a_record_id_no_table_key_can_hold_is_simply_unknown(table: MemoryTable, store: StatusStore) -> None:
    """An id with / # ? is answered "no such record" without asking the table (which would answer 400)."""
    for bad in ("a/b", "a#b", "a?b", "x" * 600):
        assert await store.get(bad) is None
    assert "get_entity" not in table.calls
