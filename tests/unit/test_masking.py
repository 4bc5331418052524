"""Masking of personal data in what the app logs, and the tenant read from the app's own token.

Error classification has its tests in test_graph_errors.py.
"""

from __future__ import annotations

import logging

import pytest

from shared.platform.logs import app_logger, mask_email, redact


def test_mask_email_keeps_domain_only() -> None:
    assert mask_email("adele.vance@contoso.com") == "a***e@contoso.com"
    assert mask_email("a@contoso.com") == "a***@contoso.com"


def test_redact_hides_addresses_tokens_and_redeem_urls() -> None:
    text = (
        "to adele.vance@contoso.com with Bearer eyJ0eXAi.abc.def link https://login.microsoftonline.com/redeem?rd=xyz"
    )
    cleaned = redact(text)
    assert "adele.vance@contoso.com" not in cleaned
    assert "eyJ0eXAi" not in cleaned
    assert "rd=xyz" not in cleaned


def test_app_logger_redacts_what_slips_through(caplog: pytest.LogCaptureFixture) -> None:
    """Even an exception message carrying an address is masked in the log record."""
    caplog.set_level(logging.INFO, logger="guest_reset")
    app_logger().info("failed for %s", "adele.vance@contoso.com")
    assert "adele.vance@contoso.com" not in caplog.text
    assert "a***e@contoso.com" in caplog.text


def test_the_tenant_comes_from_the_token_tid_claim() -> None:
    """The redirect's tenant is read from the app's own token when AZURE_TENANT_ID is empty."""
    import base64
    import json

    from shared.reset.graph_sdk import token_tenant

    claims = base64.urlsafe_b64encode(json.dumps({"tid": "tenant-guid", "aud": "x"}).encode()).decode().rstrip("=")
    assert token_tenant(f"header.{claims}.signature") == "tenant-guid"
    assert token_tenant("emulator-placeholder-token") is None
