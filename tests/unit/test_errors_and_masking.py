"""Error classification (the one place) and masking of personal data."""

from __future__ import annotations

import logging

import pytest

from shared.platform.errors import classify_graph_response, parse_retry_after
from shared.platform.logs import app_logger, mask_email, redact


def graph_error(code: str, message: str) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "innerError": {"request-id": "inner-id"}}}


@pytest.mark.parametrize(
    ("status", "code", "message", "ours", "permanent"),
    [
        (429, "TooManyRequests", "Please retry again later.", "GraphThrottled", False),
        (503, "ServiceUnavailable", "down", "GraphUnavailable", False),
        (504, "GatewayTimeout", "slow", "GraphUnavailable", False),
        (409, "Directory_ConcurrencyViolation", "race", "GraphConcurrencyViolation", False),
        (
            400,
            "BadRequest",
            "The email you're using to invite this user doesn't match any emails on the user object.",
            "EmailNotOnUser",
            True,
        ),
        (
            400,
            "Request_BadRequest",
            "Another object with the same value for property proxyAddresses already exists.",
            "EmailInUse",
            True,
        ),
        (
            403,
            "Forbidden",
            "Invitations are blocked for this directory due to suspicious activity.",
            "InvitationsBlocked",
            True,
        ),
        (
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
            "GraphForbidden",
            True,
        ),
        (401, "Unauthorized", "Insufficient privileges", "GraphUnauthorized", True),
        (404, "Request_ResourceNotFound", "Resource 'x' does not exist", "UserNotFound", True),
        (409, "Conflict", "other", "Graph409", True),
    ],
)
def test_graph_failures_are_classified(status: int, code: str, message: str, ours: str, permanent: bool) -> None:
    """Each Graph failure maps to a stable code and a retry verdict."""
    error = classify_graph_response(status, graph_error(code, message), {"request-id": "rid-1"})
    assert (error.code, error.permanent) == (ours, permanent)
    assert error.graph_request_id == "rid-1"


def test_forbidden_names_the_missing_permission() -> None:
    error = classify_graph_response(403, graph_error("Forbidden", "Generic authorization exception."), {})
    assert "User.ReadWrite.All" in error.message


def test_retry_after_integer_and_fractional() -> None:
    """Graph sends whole or fractional seconds; both are honoured."""
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("2.128") == pytest.approx(2.128)
    assert parse_retry_after("soon") is None
    error = classify_graph_response(429, None, {"retry-after": "0.5"})
    assert error.retry_after == 0.5


def test_html_error_bodies_are_still_classified() -> None:
    """A gateway's HTML 502 has no Graph body; it is still a transient failure."""
    assert not classify_graph_response(502, None, {}).permanent


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
