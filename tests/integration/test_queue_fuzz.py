"""Generated queue bodies through the worker's entry point, against Azurite and the Graph emulator.

Wrong types, unknown fields, huge and deeply nested values, odd encodings, Base64 of garbage
and boundary lengths, mixed with requests that name real emulator guests. Each body is
delivered the way the host delivers it (again while the worker asks for a retry, up to the
poison threshold), the poison trigger runs, and then the body's request must have an outcome:
``Failed`` with an error code, or ``Succeeded``/``DryRunPassed``. Anything else the worker raises
counts as an unhandled exception. FUZZ_QUEUE_EXAMPLES sets the count (`make fuzz`: 10,000).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import string
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from azure.storage.queue import QueueClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.platform.errors import InvalidRequestError, ResetError
from shared.platform.settings import get_settings, reset_settings
from shared.reset.contract import MAX_MESSAGE_BYTES, parse_request, request_id_hint
from shared.reset.runtime import close_runtime, get_runtime, reset_runtime
from shared.reset.status import derive_request_id, utcnow
from shared.reset.worker import handle_poison_message, handle_request_message
from tests.factories import isolated_env
from tools.azurite import AzuriteEndpoints
from tools.graph_emulator.runner import EmulatorHandle

EXAMPLES = int(os.environ.get("FUZZ_QUEUE_EXAMPLES", "300"))
GUESTS = [f"5e0c1d2a-{n:04d}-4a5b-9c3d-{n:012d}" for n in range(1, 12)]
ADDRESSES = ["adele.vance@contoso.com", "lee.gu@contoso.com", "shared@northwind.example", "x@new.example"]
FIELDS = (
    "userId",
    "userPrincipalName",
    "email",
    "newEmail",
    "sendInvitationMessage",
    "inviteRedirectUrl",
    "messageLanguage",
    "ccRecipients",
    "customizedMessageBody",
    "requestId",
    "ticketId",
    "requestedBy",
    "onBehalfOf",
    "source",
    "callbackUrl",
    "dryRun",
)
BOUNDARIES = (
    0,
    1,
    2,
    35,
    36,
    63,
    64,
    127,
    128,
    129,
    253,
    254,
    255,
    256,
    257,
    369,
    370,
    2047,
    2048,
    2049,
    10_000,
    10_001,
)

lone_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
odd_text = st.text(
    alphabet=st.one_of(st.characters(), lone_surrogates, st.sampled_from("\x00\u200b\ufeff\uff0e\uff0f@#?/\\")),
    max_size=60,
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), odd_text)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4), max_leaves=12
)


@st.composite
def boundary_text(draw: st.DrawFn) -> str:
    length = draw(st.sampled_from(BOUNDARIES))
    kind = draw(st.sampled_from(["plain", "email", "url", "guid-ish"]))
    if kind == "email":
        return "a" * max(length - 12, 0) + "@contoso.com"
    if kind == "url":
        return "https://" + "a" * max(length - 12, 0) + ".com"
    if kind == "guid-ish":
        return "5e0c1d2a-0001-4a5b-9c3d-" + "0" * max(length - 24, 0)
    return draw(st.sampled_from(string.ascii_letters + "._:@-")) * length


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


plausible = {
    "userId": st.sampled_from(GUESTS) | st.uuids().map(str),
    "userPrincipalName": st.sampled_from(["adele.vance_contoso.com#EXT#@fabrikam.onmicrosoft.com", "no@such.upn"]),
    "email": st.sampled_from(ADDRESSES),
    "newEmail": st.sampled_from(ADDRESSES),
    "sendInvitationMessage": st.booleans(),
    "inviteRedirectUrl": st.sampled_from(["https://myapps.microsoft.com", "https://phish.example/x"]),
    "messageLanguage": st.sampled_from(["en-US", "de", "x"]),
    "ccRecipients": st.lists(st.sampled_from(ADDRESSES), max_size=2),
    "customizedMessageBody": st.text(max_size=30),
    "requestId": st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}\Z"),
    "ticketId": st.text(max_size=10),
    "callbackUrl": st.sampled_from(["https://prod.logic.azure.com/x?sig=s", "https://ｌｏｇｉｃ.azure.com/x"]),
    "dryRun": st.booleans(),
}


@st.composite
def request_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object shaped like a request: each field plausible, wrong-typed, a boundary or nested."""
    body: dict[str, Any] = {}
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
        choice = draw(st.sampled_from(["plausible", "junk", "boundary", "nested"]))
        if choice == "plausible" and field in plausible:
            body[field] = draw(plausible[field])
        elif choice == "boundary":
            body[field] = draw(boundary_text())
        elif choice == "nested":
            body[field] = json.loads(nested(draw(st.sampled_from([2, 50, 200]))))
        else:
            body[field] = draw(json_values)
    if draw(st.booleans()):
        body.setdefault("userId", draw(st.sampled_from(GUESTS)))
    if draw(st.integers(0, 9)) == 0:
        body[draw(odd_text)] = draw(json_values)  # an unknown field
    return body


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Queue message bodies as a producer might send them, and as no producer should."""
    kind = draw(
        st.sampled_from(
            ["object", "object", "object", "encoded", "base64", "garbage", "base64-garbage", "huge", "deep", "json"]
        )
    )
    if kind == "object":
        return _dumps(draw(request_objects())).encode("utf-8", errors="surrogatepass")
    if kind == "encoded":
        text = _dumps(draw(request_objects()))
        codec = draw(st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]))
        return text.encode(codec, errors="replace")
    if kind == "base64":
        inner = _dumps(draw(request_objects())).encode("utf-8", errors="surrogatepass")
        rounds = draw(st.integers(1, 2))
        for _ in range(rounds):
            inner = base64.b64encode(inner)
        return inner
    if kind == "garbage":
        return draw(st.binary(max_size=400))
    if kind == "base64-garbage":
        return base64.b64encode(draw(st.binary(max_size=300)))
    if kind == "huge":
        size = draw(st.sampled_from([MAX_MESSAGE_BYTES - 64, MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES + 1, 200_000]))
        field = draw(st.sampled_from(["ticketId", "customizedMessageBody", "zzz"]))
        return _dumps({"userId": GUESTS[0], field: "x" * size}).encode()
    if kind == "deep":
        depth = draw(st.sampled_from([100, 1_000, 10_000, 100_000]))
        where = draw(st.sampled_from(["body", "field"]))
        return (
            nested(depth) if where == "body" else '{"userId":"' + GUESTS[0] + '","ticketId":' + nested(depth) + "}"
        ).encode()
    return _dumps(draw(json_values)).encode("utf-8", errors="surrogatepass")


async def expected_request_id(body: bytes, message_id: str) -> str:
    """The id the worker files this body's outcome under (a request without one gets a derived id)."""
    try:
        request = parse_request(body)
    except InvalidRequestError:
        return request_id_hint(body) or message_id
    if request.request_id:
        return request.request_id
    return await derive_request_id((await get_runtime()).status, request, scope="queue", at=utcnow())


@pytest.fixture
def fuzz_env(azurite: AzuriteEndpoints, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in isolated_env(azurite.connection_string, emulator.base_url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("shared.reset.callbacks.DELAYS", ())
    emulator.control.reset()
    reset_settings()
    reset_runtime()
    yield
    reset_runtime()
    reset_settings()


def test_generated_queue_bodies_each_end_with_an_outcome(fuzz_env: None, azurite: AzuriteEndpoints) -> None:
    """0 unhandled exceptions; every body ends Failed with a code, or Succeeded / DryRunPassed."""
    loop = asyncio.new_event_loop()
    app_settings = get_settings()
    poison = QueueClient.from_connection_string(azurite.connection_string, app_settings.poison_queue)
    results = QueueClient.from_connection_string(azurite.connection_string, app_settings.result_queue)
    outcomes: Counter[str] = Counter()
    unhandled: list[str] = []
    counter = iter(range(10**9))

    async def one(body: bytes) -> None:
        message_id = f"fuzz-{next(counter)}"
        for dequeue_count in range(1, app_settings.max_dequeue_count + 1):
            try:
                await handle_request_message(body, message_id=message_id, dequeue_count=dequeue_count)
                break
            except ResetError as error:
                if error.permanent:
                    unhandled.append(f"{type(error).__name__}: {error.code}")
                    return
            except Exception as error:
                unhandled.append(f"{type(error).__name__}: {str(error)[:200]}")
                return
        else:  # every delivery asked for a retry: the host moves the message to poison as it is
            poison.send_message(body.decode("utf-8", errors="replace"))
        for message in poison.receive_messages(max_messages=32, visibility_timeout=60):
            await handle_poison_message(message.content.encode(), message_id=message.id)
            poison.delete_message(message)
        try:
            request_id = await expected_request_id(body, message_id)
        except RecursionError:
            request_id = message_id
        record = await (await get_runtime()).status.get(request_id)
        if record is None or not record.status.terminal or (record.status == "Failed" and not record.error_code):
            state = record.status if record else "no record"
            unhandled.append(f"no outcome ({state}) for a body starting {body[:80]!r}")
            return
        outcomes[f"{record.status}:{record.error_code or ''}"] += 1
        if sum(outcomes.values()) % 500 == 0:
            results.clear_messages()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies())
    def deliver(body: bytes) -> None:
        loop.run_until_complete(one(body))

    try:
        deliver()
    finally:
        loop.run_until_complete(close_runtime())
        loop.close()
    figures = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]))
    print(f"\nqueue fuzz: {sum(outcomes.values())} bodies with an outcome, {len(unhandled)} unhandled; {figures}")
    for problem, count in Counter(unhandled).most_common(20):
        print(f"  unhandled x{count}: {problem}")
    assert unhandled == [], Counter(unhandled).most_common(20)
    assert sum(outcomes.values()) >= EXAMPLES * 0.9
    assert any(k.startswith("Succeeded") for k in outcomes) and any(k.startswith("Failed") for k in outcomes)
