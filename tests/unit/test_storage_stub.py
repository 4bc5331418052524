"""The in-memory table and queue answer like azure-data-tables and azure-storage-queue over Azurite."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import EdmType, EntityProperty, UpdateMode

from shared.platform.errors import TransientError
from shared.platform.storage_stub import MemoryQueue, MemoryTable
from shared.reset.queues import Publisher


def entity(pk: str = "p", rk: str = "r", **props: Any) -> dict[str, Any]:
    return {"PartitionKey": pk, "RowKey": rk, **props}


async def keys(table: MemoryTable, query: str, **parameters: Any) -> list[str]:
    return [f"{e['PartitionKey']}/{e['RowKey']}" async for e in table.query_entities(query, parameters=parameters)]


async def test_writes_return_the_etag_that_reads_carry() -> None:
    """create/update/upsert return metadata with an etag; get_entity returns it in .metadata, new per write."""
    table = MemoryTable()
    created = await table.create_entity(entity(Name="a"))
    read = await table.get_entity("p", "r")
    assert read.metadata["etag"] == created["etag"] and read["Name"] == "a"
    updated = await table.update_entity(
        entity(Name="b"), etag=created["etag"], match_condition=MatchConditions.IfNotModified
    )
    assert updated["etag"] != created["etag"] == read.metadata["etag"]


async def test_the_sdk_errors_for_missing_existing_and_modified_entities() -> None:
    """ResourceNotFoundError, ResourceExistsError and ResourceModifiedError, where the SDK raises them."""
    table = MemoryTable()
    with pytest.raises(ResourceNotFoundError):
        await table.get_entity("p", "r")
    with pytest.raises(ResourceNotFoundError):
        await table.update_entity(entity())
    meta = await table.create_entity(entity())
    with pytest.raises(ResourceExistsError):
        await table.create_entity(entity())
    await table.update_entity(entity(N=1), etag=meta["etag"], match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceModifiedError):
        await table.update_entity(entity(N=2), etag=meta["etag"], match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ValueError, match="IfNotModified must be specified with etag"):
        await table.update_entity(entity(), match_condition=MatchConditions.IfNotModified)
    await table.delete_entity("p", "r")
    await table.delete_entity("p", "r")  # a missing entity is no error, as in the SDK
    assert table.entities == []


async def test_merge_keeps_other_properties_and_replace_drops_them() -> None:
    """UpdateMode.MERGE and REPLACE behave as the service does, for update and upsert alike."""
    table = MemoryTable()
    await table.upsert_entity(entity(A=1, B=2))
    await table.upsert_entity(entity(B=3), mode=UpdateMode.MERGE)
    assert dict(await table.get_entity("p", "r")) == entity(A=1, B=3)
    await table.update_entity(entity(C=4), mode=UpdateMode.REPLACE)
    assert dict(await table.get_entity("p", "r")) == entity(C=4)


async def test_values_come_back_with_the_types_the_sdk_gives() -> None:
    """None is not stored; int64 comes back as EntityProperty; datetimes come back in UTC; unsupported types fail."""
    table = MemoryTable()
    when = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    await table.create_entity(entity(S="x", I=7, F=1.5, B=True, N=None, D=when, L=EntityProperty(2**40, EdmType.INT64)))
    read = await table.get_entity("p", "r")
    assert (read["S"], read["I"], read["F"], read["B"], read["D"]) == ("x", 7, 1.5, True, when)
    assert "N" not in read and read["L"] == EntityProperty(2**40, EdmType.INT64)
    with pytest.raises(TypeError):
        await table.create_entity(entity(rk="r2", Bad=[1, 2]))


async def test_query_filters_the_app_uses() -> None:
    """Comparisons, and/or/not, parentheses and @parameters (quotes escaped) select the right entities."""
    table = MemoryTable()
    await table.create_entity(entity("bulk-a-1", "status", Status="Failed", ErrorCode="X", UpdatedAt="2024-05-01T10"))
    await table.create_entity(entity("bulk-a-2", "status", Status="Succeeded", UpdatedAt="2024-05-02T10"))
    await table.create_entity(
        entity("bulk-b-1", "status", Status="Failed", ErrorCode="O'Brien", UpdatedAt="2024-05-03")
    )
    await table.create_entity(entity("bulk-a-", "progress", Rows=3))
    assert await keys(table, "Status eq @s", s="Failed") == ["bulk-a-1/status", "bulk-b-1/status"]
    assert await keys(table, "ErrorCode eq @c", c="O'Brien") == ["bulk-b-1/status"]
    assert await keys(
        table,
        "PartitionKey ge @low and PartitionKey lt @high and RowKey eq @row",
        low="bulk-a-",
        high="bulk-a.",
        row="status",
    ) == [
        "bulk-a-1/status",
        "bulk-a-2/status",
    ]
    assert await keys(
        table, "Status eq @f and ( PartitionKey eq @a or PartitionKey eq @b )", f="Failed", a="bulk-a-1", b="bulk-a-2"
    ) == ["bulk-a-1/status"]
    assert await keys(table, "UpdatedAt gt '2024-05-01T10' and UpdatedAt le '2024-05-03'") == [
        "bulk-a-2/status",
        "bulk-b-1/status",
    ]
    assert await keys(table, "Status ne 'Failed'") == ["bulk-a-2/status"]
    assert await keys(table, "not (RowKey eq 'status')") == ["bulk-a-/progress"]
    assert await keys(table, "Rows ge 3 and Rows lt 4") == ["bulk-a-/progress"]


async def test_a_missing_property_or_another_type_never_matches() -> None:
    """Rows is an int: comparing it with a string matches nothing; entities without it never match."""
    table = MemoryTable()
    await table.create_entity(entity("a", "1", Rows=3))
    await table.create_entity(entity("b", "1"))
    assert await keys(table, "Rows eq '3'") == []
    assert await keys(table, "Rows ne 4") == ["a/1"]


async def test_a_filter_the_service_would_reject_is_an_http_error() -> None:
    """An unparseable filter fails as the service's 400 does, not as a silent empty result."""
    table = MemoryTable()
    await table.create_entity(entity())
    with pytest.raises(HttpResponseError, match="InvalidInput"):
        await keys(table, "Status eq")


async def test_results_come_in_pages_of_the_size_asked_for() -> None:
    """results_per_page splits the result into pages, in PartitionKey/RowKey order."""
    table = MemoryTable()
    for n in range(5):
        await table.create_entity(entity("p", f"r{n}", RowKeyCopy=f"r{n}"))
    pages = table.query_entities("PartitionKey eq 'p'", results_per_page=2).by_page()
    sizes = [len([e async for e in page]) async for page in pages]
    assert sizes == [2, 2, 1]


async def test_scripted_blips_fail_the_next_calls_then_clear() -> None:
    """fail() makes the next N calls raise an AzureError; applied=True lands the write first."""
    table = MemoryTable()
    table.fail("get_entity", times=2)
    await table.create_entity(entity())
    for _ in range(2):
        with pytest.raises(AzureError):
            await table.get_entity("p", "r")
    assert (await table.get_entity("p", "r"))["PartitionKey"] == "p"
    table.fail("create_entity", applied=True)
    with pytest.raises(AzureError):
        await table.create_entity(entity(rk="r2"))
    assert [e["RowKey"] for e in table.entities] == ["r", "r2"]


async def test_a_table_that_was_never_created_is_not_found_until_created() -> None:
    """Like Azurite: entity calls on a missing table fail; create_table twice is ResourceExistsError."""
    table = MemoryTable(exists=False)
    with pytest.raises(ResourceNotFoundError):
        await table.create_entity(entity())
    await table.create_table()
    with pytest.raises(ResourceExistsError):
        await table.create_table()
    await table.create_entity(entity())


async def test_a_string_over_64_kib_is_refused() -> None:
    """The service's limit for one string property holds here too."""
    with pytest.raises(HttpResponseError, match="PropertyValueTooLarge"):
        await MemoryTable().create_entity(entity(Big="x" * 40_000))


async def test_the_queue_keeps_what_the_publisher_sends_and_blips_when_told() -> None:
    """Publisher over MemoryQueue: messages kept in order; a blip becomes StorageUnavailable; 64 KiB is the limit."""
    results, poison, requests = MemoryQueue("res"), MemoryQueue("poi"), MemoryQueue("req")
    publisher = Publisher(results=results, poison=poison, requests=requests)
    await publisher.ensure()
    await publisher.send_result({"requestId": "r1"})
    assert results.decoded() == [{"requestId": "r1"}]
    results.fail("send_message")
    with pytest.raises(TransientError) as raised:
        await publisher.send_result({"requestId": "r2"})
    assert raised.value.code == "StorageUnavailable" and "res" in raised.value.message
    with pytest.raises(TransientError):
        await publisher.send_poison({"body": "x" * 70_000})
    assert poison.messages == []
    with pytest.raises(ResourceExistsError):
        await results.create_queue()
