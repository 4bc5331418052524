"""The real function_app.py run end to end by the local runner against Azurite and the emulator."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from tests.factories import isolated_env
from tools.azurite import AzuriteEndpoints
from tools.devhost import DevHostProcess, running_devhost
from tools.graph_emulator.runner import EmulatorHandle

REPO_ROOT = Path(__file__).resolve().parents[2]
ADELE = "5e0c1d2a-0001-4a5b-9c3d-000000000001"
MEGAN = "5e0c1d2a-0003-4a5b-9c3d-000000000003"
CRASHER = "5e0c1d2a-00ff-4a5b-9c3d-0000000000ff"
TERMINAL = {"Succeeded", "Failed", "DryRunPassed"}


class Deployment:
    """The app as a queue producer and an operator see it."""

    def __init__(self, connection_string: str, env: dict[str, str]) -> None:
        self.requests = QueueClient.from_connection_string(connection_string, env["RESET_REQUEST_QUEUE"])
        self.results = QueueClient.from_connection_string(connection_string, env["RESET_RESULT_QUEUE"])
        self.table = TableClient.from_connection_string(connection_string, env["RESET_STATUS_TABLE"])

    def submit(self, body: dict[str, Any] | str) -> None:
        self.requests.send_message(body if isinstance(body, str) else json.dumps(body))

    def outcome(self, request_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                entity = dict(self.table.get_entity(request_id, "status"))
                if entity.get("Status") in TERMINAL:
                    return entity
            except ResourceNotFoundError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{request_id} did not finish within {timeout} s")

    def result_messages(self) -> list[dict[str, Any]]:
        return [json.loads(m.content) for m in self.results.peek_messages(max_messages=32)]


@pytest.fixture
def deployment(azurite: AzuriteEndpoints, emulator: EmulatorHandle) -> Iterator[tuple[Deployment, DevHostProcess]]:
    emulator.control.reset()
    env = isolated_env(
        azurite.connection_string,
        emulator.base_url,
        AzureFunctionsJobHost__extensions__queues__maxDequeueCount="3",
        AzureFunctionsJobHost__extensions__queues__visibilityTimeout="00:00:00.200",
    )
    with running_devhost(REPO_ROOT, env=env, max_polling_interval=0.2) as host:
        yield Deployment(azurite.connection_string, env), host


def test_queue_message_is_reset_and_reported(
    deployment: tuple[Deployment, DevHostProcess], emulator: EmulatorHandle
) -> None:
    """A ticketing system's message ends Succeeded with one invitation and a result message."""
    app, _ = deployment
    app.submit({"userId": ADELE, "requestId": "e2e-ok", "ticketId": "INC-7"})
    outcome = app.outcome("e2e-ok")
    assert outcome["Status"] == "Succeeded" and outcome["Attempts"] == 1
    assert len(emulator.control.invitations()) == 1
    [result] = app.result_messages()
    assert result["requestId"] == "e2e-ok" and result["ticketId"] == "INC-7"


def test_invalid_message_fails_on_first_delivery(deployment: tuple[Deployment, DevHostProcess]) -> None:
    """Bad input goes through poison to Failed with InvalidRequest after one delivery, not five."""
    app, _ = deployment
    app.submit('{"requestId": "e2e-bad", "userid": "typo"}')
    outcome = app.outcome("e2e-bad")
    assert outcome["Status"] == "Failed" and outcome["ErrorCode"] == "InvalidRequest"
    assert "userid" in outcome["ErrorMessage"]


def test_policy_refusal_is_recorded_failed(
    deployment: tuple[Deployment, DevHostProcess], emulator: EmulatorHandle
) -> None:
    """A member account is refused at once; nothing is sent."""
    app, _ = deployment
    app.submit({"userId": MEGAN, "requestId": "e2e-member"})
    outcome = app.outcome("e2e-member")
    assert outcome["ErrorCode"] == "NotAGuest" and outcome["Attempts"] == 1
    assert emulator.control.invitations() == []


def test_crashing_message_ends_in_poison_after_max_dequeue_count(
    deployment: tuple[Deployment, DevHostProcess], emulator: EmulatorHandle
) -> None:
    """A message that crashes the worker is retried by the host, then poisoned and recorded Failed."""
    app, _ = deployment
    # otherMails that is not a list makes the worker's own model construction blow up.
    emulator.control.put_user(
        {
            "id": CRASHER,
            "userPrincipalName": "crash_x.example#EXT#@fabrikam.onmicrosoft.com",
            "mail": "crash@x.example",
            "otherMails": 42,
            "userType": "Guest",
            "externalUserState": "Accepted",
        }
    )
    app.submit({"userId": CRASHER, "requestId": "e2e-crash"})
    outcome = app.outcome("e2e-crash", timeout=45)
    assert outcome["Status"] == "Failed" and outcome["ErrorCode"] == "DeliveryFailed"
    assert outcome["Attempts"] == 3
    history = json.loads(outcome["History"])
    assert [h["event"] for h in history].count("crashed") == 3
    assert emulator.control.invitations() == []
