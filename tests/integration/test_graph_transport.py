"""How the SDK gateway names a transport failure decides whether an invitation may be sent again.

Only a connection never made proves nothing reached Graph; a connection lost after the request
went out may hide an applied invitation. Checked through the real adapter and HTTP stack against
the emulator (which drops connections on request) and a port nobody listens on.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import pytest

from shared.platform.errors import AmbiguousOutcomeError, TransientError
from shared.reset.graph import InvitationBody
from shared.reset.graph_sdk import SdkGraphGateway
from shared.reset.throttle import RetryPolicy, WriteBudget
from tests.factories import settings
from tools.graph_emulator.runner import EmulatorHandle

ADELE = "5e0c1d2a-0001-4a5b-9c3d-000000000001"
BODY = InvitationBody(
    user_id=ADELE, email="adele.vance@contoso.com", redirect_url="https://myapps.microsoft.com", send_message=False
)


def gateway(base_url: str) -> SdkGraphGateway:
    return SdkGraphGateway(settings(GRAPH_BASE_URL=base_url), budget=WriteBudget(1000), policy=RetryPolicy((0.0,), 3))


@pytest.fixture
async def graph(emulator: EmulatorHandle) -> AsyncIterator[SdkGraphGateway]:
    emulator.control.reset()
    sdk = gateway(emulator.base_url)
    try:
        yield sdk
    finally:
        await sdk.aclose()


async def test_an_invitation_whose_connection_drops_is_ambiguous_and_sent_once(
    emulator: EmulatorHandle, graph: SdkGraphGateway
) -> None:
    """The emulator hangs up on the POST: the gateway may not know it was not applied, so it never resends."""
    emulator.control.add_fault(method="POST", path="^/invitations$", status=None, drop=True, times=1)
    with pytest.raises(AmbiguousOutcomeError) as caught:
        await graph.reset_redemption(BODY)
    assert caught.value.code == "GraphConnectionLost"
    assert len(emulator.control.journal(method="POST")) == 1


async def test_a_read_whose_connection_drops_is_retried(emulator: EmulatorHandle, graph: SdkGraphGateway) -> None:
    """A dropped read changed nothing: the gateway reads again and answers."""
    emulator.control.add_fault(method="GET", path=f"^/users/{ADELE}$", status=None, drop=True, times=1)
    user = await graph.read_user(ADELE)
    assert user.id == ADELE
    assert len(emulator.control.journal(method="GET", path_contains=ADELE)) == 2


async def test_graph_that_cannot_be_reached_is_plainly_transient() -> None:
    """No listener on the port: the connection was never made, so the invitation may be sent later."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sdk = gateway(f"http://127.0.0.1:{port}/v1.0")
    try:
        with pytest.raises(TransientError) as caught:
            await sdk.reset_redemption(BODY)
    finally:
        await sdk.aclose()
    assert caught.value.code == "GraphUnreachable"
    assert not isinstance(caught.value, AmbiguousOutcomeError)


async def test_an_invitation_that_times_out_is_ambiguous_and_sent_once(emulator: EmulatorHandle) -> None:
    """Graph answers after 3 s, the gateway waits 1 s: the invitation may have been applied, so it
    is never sent again (GraphTimeout, through the aiohttp transport's own timeout path)."""
    emulator.control.reset()
    emulator.control.set_latency(3000)
    sdk = SdkGraphGateway(
        settings(GRAPH_BASE_URL=emulator.base_url, GRAPH_TIMEOUT_SECONDS="1"),
        budget=WriteBudget(1000),
        policy=RetryPolicy((0.0,), 3),
    )
    started = time.perf_counter()
    try:
        with pytest.raises(AmbiguousOutcomeError) as caught:
            await sdk.reset_redemption(BODY)
    finally:
        waited = time.perf_counter() - started
        await sdk.aclose()
        emulator.control.set_latency(0)
    print(f"gave up after {waited:.2f} s (timeout 1 s, Graph's answer due after 3 s)")
    assert caught.value.code == "GraphTimeout"
    assert 1.0 <= waited < 2.5
    assert len(emulator.control.journal(method="POST")) == 1
