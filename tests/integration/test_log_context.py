"""Every record written during a delivery carries the request's context, and nothing raised or logged leaks."""

from __future__ import annotations

import logging
from urllib.parse import unquote

import pytest

from shared.platform.errors import TransientError
from shared.platform.logs import LOGGER_NAME
from tests.integration.support import BRIAN, App


async def test_every_record_of_a_retried_reset_carries_its_request_id(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """A reset with a throttled invitation and a failing read: every app record names the request, no full email."""
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    app.graph.add_fault(method="POST", path="^/invitations$", status=429, retry_after="0.2", times=1)
    app.graph.add_fault(method="GET", path="^/roleManagement/", status=503, times=1)
    await app.deliver(
        {"email": "brian.j@tailspin.example", "newEmail": "brian@new.example", "requestId": "ctx-1", "ticketId": "T-9"},
        dequeue_count=2,
    )
    record = await app.status("ctx-1")
    assert record is not None and str(record.status) == "Succeeded"
    ours = [r for r in caplog.records if r.name == LOGGER_NAME]
    messages = [r.getMessage() for r in ours]
    # The throttle's retry warning and the service's lines were the ones missing context before.
    assert any(m.startswith("retrying sending the reset invitation after GraphThrottled") for m in messages)
    assert any(m.startswith("retrying reading the user's role assignments") for m in messages)
    assert any("reset invitation" in m and "sent" in m for m in messages)
    assert [r for r in ours if getattr(r, "requestId", None) != "ctx-1"] == []
    assert {getattr(r, "ticketId", None) for r in ours} == {"T-9"}
    assert {getattr(r, "dequeueCount", None) for r in ours} == {2}
    assert all(getattr(r, "userId", None) == BRIAN for r in ours if "invitation" in r.getMessage())
    text = unquote("\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records))
    for address in ("brian@new.example", "brian.j@tailspin.example"):
        assert address not in text


async def test_context_does_not_leak_into_the_next_delivery(app: App, caplog: pytest.LogCaptureFixture) -> None:
    """Two deliveries in a row: the second one's records carry only its own ids."""
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    await app.deliver({"email": "nobody@nowhere.example", "requestId": "first", "ticketId": "T-1"})
    caplog.clear()
    await app.deliver({"email": "nobody@nowhere.example", "requestId": "second"})
    ours = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert ours and {getattr(r, "requestId", None) for r in ours} == {"second"}
    assert {getattr(r, "ticketId", None) for r in ours} == {None}


async def test_an_exception_raised_to_the_host_is_redacted(app: App, caplog: pytest.LogCaptureFixture) -> None:
    """A transient failure handed back to the host carries no full address, and is logged with the request's id."""
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    app.graph.add_fault(
        method="GET",
        path="^/users",
        status=503,
        times=50,
        code="ServiceUnavailable",
        message="backend for brian.j@tailspin.example is down",
    )
    with pytest.raises(TransientError) as raised:
        await app.deliver({"email": "brian.j@tailspin.example", "requestId": "to-host"})
    assert "brian.j@tailspin.example" not in str(raised.value)
    assert "b***j@tailspin.example" in str(raised.value)
    handed_back = [r for r in caplog.records if "host will redeliver" in r.getMessage()]
    assert handed_back and all(getattr(r, "requestId", None) == "to-host" for r in handed_back)
