"""Factories with keyword overrides for the objects tests build over and over."""

from __future__ import annotations

import json
import uuid
from typing import Any

from shared.platform.settings import KEY_GRANTABLE, QUEUE_GRANTABLE, Settings, parse_settings
from shared.reset.graph import GuestUser

GUEST_ID = "6a1b3c4d-0000-4000-8000-00000000a001"


def env(**overrides: str) -> dict[str, str]:
    """A complete, valid local environment; keyword arguments replace single settings."""
    values = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "GRAPH_BASE_URL": "http://127.0.0.1:8765/v1.0",
        "GRAPH_RETRY_DELAYS": "0.01,0.02",
        "GRAPH_WRITES_PER_SECOND": "100",
    }
    values.update(overrides)
    return values


def settings(**overrides: str) -> Settings:
    return parse_settings(env(**overrides))


def guest(**overrides: Any) -> GuestUser:
    values: dict[str, Any] = {
        "id": GUEST_ID,
        "user_principal_name": "adele.vance_contoso.com#EXT#@fabrikam.onmicrosoft.com",
        "display_name": "Adele Vance",
        "mail": "adele.vance@contoso.com",
        "other_mails": ("adele.vance@contoso.com",),
        "user_type": "Guest",
        "external_user_state": "Accepted",
        "external_user_state_changed_at": None,
    }
    values.update(overrides)
    return GuestUser(**values)


def request_body(**overrides: Any) -> bytes:
    """A valid contract-v1 message body; None values drop the field."""
    values: dict[str, Any] = {"userId": GUEST_ID}
    values.update(overrides)
    return json.dumps({k: v for k, v in values.items() if v is not None}).encode()


def isolated_env(connection_string: str, graph_base_url: str, **overrides: str) -> dict[str, str]:
    """App settings for one test: real Azurite and emulator, queues and table of its own, fast retries."""
    suffix = uuid.uuid4().hex[:10]
    values = {
        "AzureWebJobsStorage": connection_string,
        "GRAPH_BASE_URL": graph_base_url,
        "RESET_REQUEST_QUEUE": f"req-{suffix}",
        "RESET_RESULT_QUEUE": f"res-{suffix}",
        "RESET_STATUS_TABLE": f"Status{suffix}",
        "GRAPH_RETRY_DELAYS": "0.05,0.1",
        "GRAPH_MAX_ATTEMPTS": "4",
        "GRAPH_WRITES_PER_SECOND": "50",
        # Most tests exercise what a fully trusted caller may do; the least-power tests
        # (tests/integration/test_security.py) set these back to the safe defaults themselves.
        "KEY_CAPABILITIES": ",".join(c.value for c in KEY_GRANTABLE),
        "QUEUE_CAPABILITIES": ",".join(c.value for c in QUEUE_GRANTABLE),
    }
    values.update(overrides)
    return values
