"""Error classification (the one place) and masking of personal data."""

from __future__ import annotations

import logging

import pytest

from shared.platform.errors import ROLE_CALL, USER_CALL, classify_graph_response, parse_retry_after
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
    """A 403 on a write names both permissions the app needs, and the role rule."""
    error = classify_graph_response(403, graph_error("Forbidden", "Generic authorization exception."), {})
    assert "User.ReadWrite.All" in error.message and "RoleManagement.Read.Directory" in error.message


def test_a_denied_role_read_names_role_management_read_directory() -> None:
    """The role check's 403 says exactly which permission is missing, and not that User.ReadWrite.All is enough."""
    denied = graph_error("Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    error = classify_graph_response(403, denied, {}, call=ROLE_CALL)
    assert (error.code, error.permanent) == ("GraphPermissionMissing", True)
    assert "RoleManagement.Read.Directory" in error.message and "User.ReadWrite.All" not in error.message
    assert "User.ReadWrite.All" in classify_graph_response(403, denied, {}, call=USER_CALL).message


def test_a_role_endpoint_graph_does_not_serve_fails_closed_with_the_way_out() -> None:
    """A 404 from the (beta) role read is not "no such user": the request fails, ROLE_CHECK=direct is named."""
    error = classify_graph_response(
        404, graph_error("Request_ResourceNotFound", "Resource not found"), {}, call=ROLE_CALL
    )
    assert (error.code, error.permanent) == ("RoleCheckUnavailable", True)
    assert "ROLE_CHECK=direct" in error.message


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


def test_the_tenant_comes_from_the_token_tid_claim() -> None:
    """The redirect's tenant is read from the app's own token when AZURE_TENANT_ID is empty."""
    import base64
    import json

    from shared.reset.graph_sdk import token_tenant

    claims = base64.urlsafe_b64encode(json.dumps({"tid": "tenant-guid", "aud": "x"}).encode()).decode().rstrip("=")
    assert token_tenant(f"header.{claims}.signature") == "tenant-guid"
    assert token_tenant("emulator-placeholder-token") is None
