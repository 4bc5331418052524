"""The in-memory doubles agree with the real thing: the Graph stub with the SDK adapter over the emulator,
MemoryTable and MemoryQueue with the storage SDK over Azurite. Same script on both sides, same answers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.data.tables import EdmType, EntityProperty, TableItem, UpdateMode
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient

from shared.platform.errors import ResetError
from shared.platform.storage_stub import MemoryQueue, MemoryTable
from shared.reset.graph import GraphGateway, GuestUser, InvitationBody, SentInvitation
from shared.reset.graph_sdk import SdkGraphGateway
from shared.reset.graph_stub import StubGraphGateway
from shared.reset.throttle import RetryPolicy, WriteBudget
from tests.factories import settings
from tools.azurite import AzuriteEndpoints
from tools.graph_emulator.runner import EmulatorHandle

FIXTURE = Path(__file__).resolve().parents[2] / "tools" / "graph_emulator" / "users.json"
ADELE = "5e0c1d2a-0001-4a5b-9c3d-000000000001"
BRIAN = "5e0c1d2a-0002-4a5b-9c3d-000000000002"
ROLF = "5e0c1d2a-0004-4a5b-9c3d-000000000004"
GAIL = "5e0c1d2a-0012-4a5b-9c3d-000000000012"  # a role through a role-assignable group
URSULA = "5e0c1d2a-0013-4a5b-9c3d-000000000013"  # a custom role at an administrative-unit scope
UNKNOWN = "5e0c1d2a-00ff-4a5b-9c3d-0000000000ff"


async def outcome(call: Awaitable[Any]) -> Any:
    """What a call produced, comparable across implementations: a normalised value or the error's kind."""
    try:
        value = await call
    except ResetError as error:
        return (type(error).__name__, error.code, error.message, error.status)
    except Exception as error:  # the storage SDK's errors: their messages carry request ids and times
        return type(error).__name__
    return _normal(value)


def _normal(value: Any) -> Any:
    if isinstance(value, GuestUser):
        # The change time is set by each side's own clock when an invitation is sent.
        return (value.id, value.user_principal_name, value.mail, value.other_mails, value.external_user_state)
    if isinstance(value, SentInvitation):
        return (value.status, value.confirmed_by_read_back, value.id is not None)
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict) and "etag" in value:
        return ("written", sorted(value), bool(value["etag"]))  # the write's metadata: its values differ by nature
    if isinstance(value, TableItem):
        return ("TableItem", value.name)
    return value


def invite(user_id: str, email: str) -> InvitationBody:
    return InvitationBody(user_id=user_id, email=email, redirect_url="https://myapps.microsoft.com", send_message=False)


async def graph_script(graph: GraphGateway) -> list[Any]:
    """Every gateway call the app makes, on fixture users that exercise each branch."""
    steps: list[Callable[[], Awaitable[Any]]] = [
        lambda: graph.find_user(user_id=ADELE),
        lambda: graph.find_user(upn="ADELE.VANCE_contoso.com#EXT#@fabrikam.onmicrosoft.com"),
        lambda: graph.find_user(email="Brian.J@tailspin.example"),
        lambda: graph.find_user(email="shared@northwind.example"),
        lambda: graph.find_user(email="nobody@nowhere.example"),
        lambda: graph.find_user(user_id=UNKNOWN),
        lambda: graph.users_owning_email("taken@contoso.com"),
        lambda: graph.users_owning_email("taken.alias@contoso.com"),
        lambda: graph.users_owning_email("shared@northwind.example"),
        lambda: graph.users_owning_email("free@contoso.com"),
        lambda: graph.find_user(email="nora.nomail@litware.example"),
        lambda: graph.role_assignments(ROLF),
        lambda: graph.role_assignments(GAIL),
        lambda: graph.role_assignments(URSULA),
        lambda: graph.role_assignments(ADELE),
        lambda: graph.role_assignments(UNKNOWN),
        lambda: graph.wait_for_address(BRIAN, "brian.j@tailspin.example", within=0),
        lambda: graph.wait_for_address(BRIAN, "not.brian@tailspin.example", within=0),
        lambda: graph.tenant_id(),
        lambda: graph.read_user(BRIAN),
    ]
    out = [await outcome(step()) for step in steps]
    brian = await graph.read_user(BRIAN)
    out.append(await outcome(graph.set_sign_in_email(brian, "taken@contoso.com")))
    out.append(await outcome(graph.set_sign_in_email(brian, "brian.j@tailspin.example")))
    out.append(await outcome(graph.read_user(BRIAN)))
    out.append(await outcome(graph.reset_redemption(invite(ADELE, "adele.vance@contoso.com"))))
    out.append(await outcome(graph.read_user(ADELE)))
    out.append(await outcome(graph.reset_redemption(invite(ADELE, "stranger@contoso.com"))))
    out.append(await outcome(graph.reset_redemption(invite(ROLF, "rolf.admin@adatum.example"))))
    out.append(await outcome(graph.reset_redemption(invite(GAIL, "gail.group@adatum.example"))))
    out.append(await outcome(graph.reset_redemption(invite(UNKNOWN, "x@contoso.com"))))
    return out


async def test_the_graph_stub_answers_like_the_adapter_over_the_emulator(emulator: EmulatorHandle) -> None:
    """Lookups, owners, roles, the email switch, invitations and Graph's refusals: the same on both."""
    emulator.control.reset()
    sdk = SdkGraphGateway(
        settings(GRAPH_BASE_URL=emulator.base_url), budget=WriteBudget(1000), policy=RetryPolicy((0.0,), 1)
    )
    try:
        expected = await graph_script(sdk)
    finally:
        await sdk.aclose()
    stub = StubGraphGateway()
    stub.load_fixture(json.loads(FIXTURE.read_text(encoding="utf-8")))
    assert await graph_script(stub) == expected
    assert len(stub.invitations) == emulator.control.user(ADELE)["_invitationCount"] == 1


def row(pk: str, rk: str, **props: Any) -> dict[str, Any]:
    return {"PartitionKey": pk, "RowKey": rk, **props}


async def table_script(table: TableClient) -> list[Any]:
    """The table calls StatusStore and the bulk code make, plus the edge cases the double must get right."""
    out: list[Any] = [await outcome(table.create_table()), await outcome(table.create_table())]
    when = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    first = row(
        "req-1", "status", Status="Failed", Attempts=2, DryRun=False, At=when, Big=EntityProperty(2**40, EdmType.INT64)
    )
    meta = await table.create_entity(first)
    out.append(await outcome(table.create_entity(first)))
    read = await table.get_entity("req-1", "status")
    out.append(sorted((k, type(v).__name__, v) for k, v in read.items()))
    out.append(read.metadata["etag"] == meta["etag"])
    out.append(await outcome(table.get_entity("req-1", "missing")))
    kept = {"etag": meta["etag"], "match_condition": MatchConditions.IfNotModified}
    out.append(await outcome(table.update_entity(row("req-1", "status", Status="Succeeded"), **kept)))
    out.append(await outcome(table.update_entity(row("req-1", "status", Status="Failed"), **kept)))
    out.append(await outcome(table.update_entity(row("req-9", "status", Status="Failed"))))
    await table.upsert_entity(row("req-2", "status", Status="Failed", ErrorCode="O'Brien", UpdatedAt="2024-05-02"))
    await table.upsert_entity(row("req-2", "status", Attempts=1), mode=UpdateMode.MERGE)
    await table.upsert_entity(row("bulk-f", "progress", Rows=3))
    await table.upsert_entity(row("bulk-g", "progress", Rows=3), mode=UpdateMode.REPLACE)
    out.append(await outcome(table.delete_entity("req-404", "status")))
    queries: list[tuple[str, dict[str, Any]]] = [
        ("Status eq @s", {"s": "Failed"}),
        ("ErrorCode eq @c", {"c": "O'Brien"}),
        (
            "PartitionKey ge @low and PartitionKey lt @high and RowKey eq @row",
            {"low": "req-", "high": "req.", "row": "status"},
        ),
        ("Status eq @f and ( PartitionKey eq @a or PartitionKey eq @b )", {"f": "Failed", "a": "req-2", "b": "req-3"}),
        ("Rows ne 4", {}),
        ("Rows eq '3'", {}),
        ("Attempts ge 1 and Attempts lt 2", {}),
        ("UpdatedAt gt '2024-05-01' and not (Status eq 'Succeeded')", {}),
        ("At lt @t", {"t": when + timedelta(seconds=1)}),
    ]
    for query, parameters in queries:
        found = [f"{e['PartitionKey']}/{e['RowKey']}" async for e in table.query_entities(query, parameters=parameters)]
        out.append((query, found))
    pages = table.query_entities("RowKey ne 'x'", results_per_page=2).by_page()
    out.append([len([e async for e in page]) async for page in pages])
    out.append(await outcome(table.create_entity(row("big", "status", Text="x" * 40_000))))
    return out


async def test_the_memory_table_answers_like_azurite(azurite: AzuriteEndpoints) -> None:
    """Errors, etags, value types, merge/replace, filters with parameters and paging: the same on both."""
    name = f"Parity{uuid.uuid4().hex[:10]}"
    async with TableClient.from_connection_string(azurite.connection_string, name) as real:
        expected = await table_script(real)
        await real.delete_table()
    assert await table_script(MemoryTable(name, exists=False)) == expected


async def queue_script(queue: QueueClient) -> list[Any]:
    # create_queue hands back the response headers (its annotation says None): only success counts.
    created = [await outcome(queue.create_queue()) for _ in range(2)]
    out: list[Any] = [c if isinstance(c, tuple) else "created" for c in created]
    sent = await queue.send_message('{"requestId":"r1"}')
    out.append((sent.content, sent.id is not None))
    out.append(await outcome(queue.send_message("x" * 70_000)))
    return out


async def test_the_memory_queue_answers_like_azurite(azurite: AzuriteEndpoints) -> None:
    """create_queue twice, a send, and a message over 64 KiB: the same on both."""
    name = f"parity-{uuid.uuid4().hex[:10]}"
    async with QueueClient.from_connection_string(azurite.connection_string, name) as real:
        expected = await queue_script(real)
        await real.delete_queue()
    assert await queue_script(MemoryQueue(name, exists=False)) == expected


@pytest.fixture(autouse=True)
def quiet_azure_logs() -> None:
    import logging

    logging.getLogger("azure").setLevel(logging.WARNING)
