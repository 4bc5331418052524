"""Contract v1: every rule of the architecture's table, and the checked-in schema."""

from __future__ import annotations

import base64
import json

import pytest

from shared.platform.errors import InvalidRequestError
from shared.reset.contract import MAX_MESSAGE_BYTES, json_schema, parse_request
from tests.factories import GUEST_ID, request_body
from tools.schema import SCHEMA_PATH


def problems(body: bytes) -> dict[str, str]:
    with pytest.raises(InvalidRequestError) as caught:
        parse_request(body)
    assert caught.value.permanent
    return {p["field"]: p["message"] for p in caught.value.problems}


def test_minimal_request_by_user_id_is_accepted() -> None:
    """A bare userId is a complete request with safe defaults."""
    request = parse_request(request_body())
    assert request.user_id == GUEST_ID
    assert request.dry_run is False
    assert request.send_invitation_message is None


def test_base64_encoded_json_is_accepted() -> None:
    """Producers that Base64-encode their messages are understood too."""
    request = parse_request(base64.b64encode(request_body(ticketId="INC001")))
    assert request.ticket_id == "INC001"


@pytest.mark.parametrize(
    "fields",
    [{}, {"userId": GUEST_ID, "email": "a@contoso.com"}, {"userPrincipalName": "a@b.com", "email": "a@b.com"}],
)
def test_exactly_one_user_key_is_required(fields: dict[str, str]) -> None:
    """None or two of userId/userPrincipalName/email is refused with a clear message."""
    with pytest.raises(InvalidRequestError, match="exactly one of userId, userPrincipalName or email"):
        parse_request(json.dumps(fields).encode())


def test_unknown_fields_are_refused_by_name() -> None:
    """A typo such as newemail must not pass silently."""
    assert "newemail" in problems(request_body(newemail="x@contoso.com"))


def test_field_rules_are_each_reported() -> None:
    """Every bad field is listed in one error, not just the first."""
    found = problems(
        request_body(
            newEmail="not an email",
            inviteRedirectUrl="http://insecure.example.com",
            ccRecipients=["a@contoso.com", "b@contoso.com"],
            dryRun="yes",
            messageLanguage="english please",
            requestId="has/slash",
        )
    )
    assert set(found) == {
        "newEmail",
        "inviteRedirectUrl",
        "ccRecipients",
        "dryRun",
        "messageLanguage",
        "requestId",
    }
    assert "https" in found["inviteRedirectUrl"]
    assert "storage key" in found["requestId"]


def test_user_id_must_be_a_guid() -> None:
    """userId is an object id; anything else fails before reaching Graph."""
    assert "GUID" in problems(request_body(userId="adele"))["userId"]


def test_callback_must_be_https() -> None:
    assert "callbackUrl" in problems(request_body(callbackUrl="http://prod-01.logic.azure.com/x"))


@pytest.mark.parametrize("body", [b"not json at all", b"[1, 2]", b"\xff\xfe\x00", b""])
def test_non_object_bodies_are_refused(body: bytes) -> None:
    """Garbage, arrays and non-UTF-8 bytes are invalid requests, not crashes."""
    with pytest.raises(InvalidRequestError):
        parse_request(body)


def test_messages_over_64_kb_are_refused() -> None:
    body = request_body(customizedMessageBody="x" * 9000, ticketId="t" * 200, padding=None)
    padded = body[:-1] + b', "source": "' + b"s" * MAX_MESSAGE_BYTES + b'"}'
    with pytest.raises(InvalidRequestError, match="64 KB"):
        parse_request(padded)


def test_checked_in_schema_matches_the_model() -> None:
    """The JSON Schema under shared/reset/schemas is regenerated whenever the model changes."""
    checked_in = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert checked_in == json_schema(), "run `python -m tools.schema` and commit the result"


def test_schema_forbids_unknown_fields_and_caps_cc() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert schema["properties"]["ccRecipients"]["anyOf"][0]["maxItems"] == 1


def test_checked_in_openapi_matches_the_models() -> None:
    """The connector document under shared/reset/schemas is regenerated whenever a model changes."""
    from openapi_spec_validator import validate

    from shared.api.openapi import document
    from tools.schema import CONNECTOR_HOST, OPENAPI_PATH

    checked_in = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    validate(checked_in)
    assert checked_in == json.loads(json.dumps(document(CONNECTOR_HOST))), "run `make schema` and commit"


@pytest.mark.parametrize("domain", ["fabrikam.com", "sub.fabrikam.co.uk", "FABRIKAM.com"])
def test_move_to_domain_takes_a_domain_name(domain: str) -> None:
    """moveToDomain is a bare domain, kept in lower case."""
    assert parse_request(request_body(moveToDomain=domain)).move_to_domain == domain.lower()


@pytest.mark.parametrize(
    "domain", ["@fabrikam.com", "https://fabrikam.com", "fabrikam", "a@fabrikam.com", "fab rikam.com"]
)
def test_move_to_domain_refuses_what_is_not_a_domain(domain: str) -> None:
    """An address, a URL or a single label is not a domain to move to."""
    assert "moveToDomain" in problems(request_body(moveToDomain=domain))


def test_move_to_domain_and_new_email_are_exclusive() -> None:
    """Both ways of naming the new address at once is ambiguous: refused."""
    with pytest.raises(InvalidRequestError, match="newEmail or moveToDomain, not both"):
        parse_request(request_body(newEmail="a@fabrikam.com", moveToDomain="fabrikam.com"))
