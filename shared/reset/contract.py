"""Contract v1: a reset request, as a queue message body or an HTTP body.

The pydantic model is the single definition; the checked-in JSON Schema is generated from it
(`python -m tools.schema`) and a test keeps the two identical.
"""

from __future__ import annotations

import array
import base64
import binascii
import hashlib
import itertools
import json
import re
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shared.platform.errors import InvalidRequestError

MAX_MESSAGE_BYTES = 64 * 1024
CONTRACT_VERSION = "1"
# Contract v1 nests three levels ({"ccRecipients": [...]}), an HTTP batch five. Python's json
# parser recurses per level, so a deep enough document (a few KB of "[[[[") raises
# RecursionError: depth is checked before parsing, and anything past this is refused.
MAX_NESTING = 16
# A request that comes without a requestId gets one derived from its content; the same content
# within this window is the same request (a client's or producer's retry), later it is a new one.
IDEMPOTENCY_WINDOW = timedelta(hours=1)

# Graph rejects these in invitedUserEmailAddress (see the invitation resource docs).
_EMAIL_RE = re.compile(
    r"^(?![.\-])[A-Za-z0-9._'\-]+(?<![.\-])@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)+$"
)
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)+$")
_UPN_RE = re.compile(r"^[^\s@]+@[A-Za-z0-9.\-]+$")
_LANGUAGE_RE = re.compile(r"^[a-zA-Z]{2,3}(-[A-Za-z0-9]{2,8})*$")
# requestId becomes a Table partition key: no / \ # ? or control characters.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
# W3C Trace Context, version 00: https://www.w3.org/TR/trace-context/#traceparent-header
_TRACEPARENT_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_TRACEPARENT_IN_JSON = re.compile(rb'"traceparent"\s*:\s*"(00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})"')


def _email(value: str) -> str:
    if not is_invitable_address(value):
        raise ValueError("is not a valid email address (Graph refuses characters like ~!#$%^&*(),;:<>)")
    return value


def is_invitable_address(value: str) -> bool:
    """The character rules Graph applies to ``invitedUserEmailAddress``."""
    return len(value) <= 254 and _EMAIL_RE.match(value) is not None


def _domain(value: str) -> str:
    if len(value) > 253 or not _DOMAIN_RE.match(value):
        raise ValueError("is not a domain name (like fabrikam.com: no @, no scheme, no path)")
    return value.lower()


def _guid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError("must be the user's object id, a GUID") from None


def _upn(value: str) -> str:
    if len(value) > 113 + 256 or not _UPN_RE.match(value):
        raise ValueError("is not a user principal name (name@domain)")
    return value


def _https(value: str) -> str:
    if not re.match(r"^https://[^\s/?#]+[^\s]*$", value):
        raise ValueError("must be an https URL")
    return value


Email = Annotated[str, Field(max_length=254, json_schema_extra={"format": "email"}), AfterValidator(_email)]
HttpsUrl = Annotated[
    str,
    Field(max_length=2048, json_schema_extra={"format": "uri", "pattern": "^https://"}),
    AfterValidator(_https),
]
Guid = Annotated[str, Field(json_schema_extra={"format": "uuid"}), AfterValidator(_guid)]
Upn = Annotated[str, Field(max_length=369), AfterValidator(_upn)]
Domain = Annotated[str, Field(max_length=253, json_schema_extra={"format": "hostname"}), AfterValidator(_domain)]
RequestId = Annotated[str, Field(pattern=_REQUEST_ID_RE.pattern)]
AuditText = Annotated[str, Field(min_length=1, max_length=256)]


class ResetRequest(BaseModel):
    """Reset one guest's B2B redemption status so they can redeem again (contract v1)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
        title="ResetRequest",
        field_title_generator=lambda name, _info: to_camel(name),
    )

    user_id: Guid | None = Field(
        None, description="Object id of the guest user. Give exactly one of userId, userPrincipalName, email."
    )
    user_principal_name: Upn | None = Field(
        None, description="UPN of the guest, e.g. adele_contoso.com#EXT#@fabrikam.onmicrosoft.com."
    )
    email: Email | None = Field(None, description="The guest's current mail or one of its otherMails.")
    new_email: Email | None = Field(
        None, description="Address the guest will redeem with; when absent the current mail is used."
    )
    move_to_domain: Domain | None = Field(
        None,
        description="Move the guest to this domain: the new address is the local part of the address it "
        "redeems with now, at this domain (a partner renamed its domain). Not together with newEmail.",
    )
    send_invitation_message: StrictBool | None = Field(
        None, description="Send Microsoft's invitation email; default from the app settings."
    )
    invite_redirect_url: HttpsUrl | None = Field(
        None, description="Where the guest lands after redeeming; default from the app settings."
    )
    message_language: Annotated[str, Field(pattern=_LANGUAGE_RE.pattern, max_length=35)] | None = Field(
        None, description="Language of the invitation email, e.g. en-US."
    )
    cc_recipients: list[Email] | None = Field(
        None, max_length=1, description="At most one extra recipient (a Graph limit)."
    )
    customized_message_body: Annotated[str, Field(max_length=10_000)] | None = Field(
        None, description="Plain-text note added to the invitation email."
    )
    request_id: RequestId | None = Field(
        None, description="Idempotency key; one requestId sends at most one invitation."
    )
    ticket_id: AuditText | None = Field(None, description="Ticket reference, kept for audit.")
    requested_by: AuditText | None = Field(
        None,
        description="Who asked for the reset, kept for audit. Behind Microsoft Entra ID the app writes the "
        "caller's object id here and keeps the value given as onBehalfOf.",
    )
    on_behalf_of: AuditText | None = Field(None, description="For whom the caller asked (e.g. the ticket's requester).")
    source: AuditText | None = Field(None, description="Producing system, kept for audit.")
    callback_url: HttpsUrl | None = Field(
        None, description="https URL that receives the outcome; its host must be on the allowlist."
    )
    dry_run: StrictBool = Field(False, description="Do every check and Graph read, send nothing.")
    traceparent: Annotated[str, Field(pattern=_TRACEPARENT_RE.pattern)] | None = Field(
        None,
        description="W3C trace context of the trace this request belongs to. Intake sets it on the "
        "messages it enqueues; a producer that traces may set its own.",
    )

    @model_validator(mode="after")
    def _one_user_key(self) -> Self:
        given = [k for k in ("user_id", "user_principal_name", "email") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of userId, userPrincipalName or email "
                f"({'none' if not given else ', '.join(to_camel(k) for k in given)} given)"
            )
        if self.new_email and self.move_to_domain:
            raise ValueError("give newEmail or moveToDomain, not both")
        return self

    @property
    def switches_email(self) -> bool:
        """The request changes the address the guest signs in with (newEmail or moveToDomain)."""
        return bool(self.new_email or self.move_to_domain)

    @property
    def user_key(self) -> str:
        """The identifier the request names the user by (not masked: callers mask it)."""
        return self.user_id or self.user_principal_name or self.email or ""


class ResetOutcome(BaseModel):
    """Where a request stands (the result message, and the status API without its redeem link)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        field_title_generator=lambda name, _info: to_camel(name),
    )

    request_id: str
    status: str = Field(
        description="Accepted, Processing, Held (waiting for the invitation breaker to close), Succeeded, Failed "
        "or DryRunPassed."
    )
    attempts: int = 0
    created_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    user_id: str | None = None
    masked_email: str | None = None
    ticket_id: str | None = None
    requested_by: str | None = None
    on_behalf_of: str | None = None
    source: str | None = None
    dry_run: bool = False
    error_code: str | None = Field(None, description="Stable error code when Failed.")
    error_message: str | None = Field(None, description="What went wrong and how to fix it.")
    graph_request_id: str | None = None
    invitation_id: str | None = None
    verified: bool | None = Field(None, description="The user read back as PendingAcceptance.")
    replays: int = 0


def user_column(request: ResetRequest) -> tuple[str, str]:
    """The column that names the user, and its value compared as Graph compares it (no case)."""
    if request.user_id:
        return "userId", request.user_id.lower()
    if request.user_principal_name:
        return "userPrincipalName", request.user_principal_name.casefold()
    return "email", (request.email or "").casefold()


def repeat_key(request: ResetRequest) -> str:
    """The text two requests share when they name the same user (one reset per guest per batch or file)."""
    column, value = user_column(request)
    return f"{column}\0{value}"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of contract v1, as checked in under shared/reset/schemas/."""
    schema = ResetRequest.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://guest-redemption-reset/schemas/reset-request.v1.json"
    return schema


def describe_validation_error(error: ValidationError) -> list[dict[str, str]]:
    """One entry per problem: the camelCase field path and a message that says what to fix."""
    problems = []
    for item in error.errors(include_url=False):
        path = ".".join(str(p) for p in item["loc"]) or "(request)"
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "is not a field of contract v1 (check the spelling; fields are camelCase)"
        elif path == "requestId" and item["type"] == "string_pattern_mismatch":
            message = "must be 1-128 letters, digits or . _ : @ - (it becomes a storage key)"
        problems.append({"field": path, "message": message})
    return problems


# A JSON string (escapes included), and everything that is not a bracket.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def check_nesting(text: str, limit: int = MAX_NESTING) -> None:
    """Refuse JSON text nested deeper than ``limit`` without parsing it (brackets in strings ignored).

    Linear and done in C: strings and other characters are cut out, each bracket becomes +1 or
    -1, and the running sum is the depth (about 40 ms for a 400 KB batch).
    """
    if text.count("[") + text.count("{") <= limit:
        return
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
    depth = max(itertools.accumulate(array.array("b", brackets.translate(_STEPS))), default=0)
    if depth > limit:
        raise InvalidRequestError(
            f"the JSON is nested more than {limit} levels deep; a reset request needs three",
            problems=[{"field": "(body)", "message": f"nested more than {limit} levels deep"}],
        )


def parse_json(text: str) -> Any:
    """``json.loads`` for untrusted text: nesting checked first; InvalidRequestError, never RecursionError."""
    check_nesting(text)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidRequestError("the request is not valid JSON") from None


def _decode_text(raw: bytes | str) -> str:
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidRequestError(f"the request is {len(data)} bytes; contract v1 allows at most 64 KB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequestError("the request is not UTF-8 text") from None


def load_json_object(raw: bytes | str) -> dict[str, Any]:
    """Decode a body that is plain JSON or Base64-encoded JSON into a JSON object."""
    text = _decode_text(raw).strip()
    check_nesting(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            decoded = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError("the request is neither JSON nor Base64-encoded JSON") from None
        value = parse_json(_decode_text(decoded))
    if not isinstance(value, dict):
        raise InvalidRequestError("the request must be a JSON object")
    return value


def parse_request(raw: bytes | str) -> ResetRequest:
    """Parse and validate a queue message or HTTP body; InvalidRequestError lists every problem."""
    return validate_request(load_json_object(raw))


def validate_request(data: dict[str, Any]) -> ResetRequest:
    try:
        return ResetRequest.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as error:
        problems = describe_validation_error(error)
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise InvalidRequestError(f"invalid reset request: {summary}", problems=problems) from None


def request_id_hint(raw: bytes | str) -> str | None:
    """Best-effort requestId of a message that failed validation, to link it to its status."""
    try:
        value = load_json_object(raw).get("requestId")
    except InvalidRequestError:
        return None
    return value if isinstance(value, str) and _REQUEST_ID_RE.match(value) else None


def traceparent_hint(raw: bytes) -> str | None:
    """The traceparent of a plain-JSON message body, found without parsing it (the worker's span
    starts before the body is validated)."""
    found = _TRACEPARENT_IN_JSON.search(raw)
    return found.group(1).decode("ascii") if found else None


# Table string properties hold at most 32K characters; larger requests are not kept for replay.
MAX_STORED_REQUEST_CHARS = 30_000


def canonical_json(request: ResetRequest, **overrides: Any) -> str:
    """The request as the queue carries it: camelCase, no nulls, overrides applied."""
    data = request.model_dump(by_alias=True, exclude_none=True, exclude_defaults=False)
    if not data.get("dryRun"):
        data.pop("dryRun", None)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def stored_request(text: str) -> str | None:
    return text if len(text) <= MAX_STORED_REQUEST_CHARS else None


def derived_request_ids(request: ResetRequest, *, scope: str, at: datetime) -> tuple[str, str]:
    """The requestId of a request that came without one: (this window's id, the previous window's).

    A hash of who sent it (``scope``), its canonical content (field order and spacing do not
    matter) and the ``IDEMPOTENCY_WINDOW`` it arrived in. The caller takes the previous
    window's id when a record under it is younger than the window, so a retry that straddles
    a window boundary is still the same request.
    """
    # The trace context is per attempt (a retry starts a new trace): not part of the content.
    content = canonical_json(request.model_copy(update={"request_id": None, "traceparent": None}))
    digest = hashlib.sha256(f"{scope}\n{content}".encode()).hexdigest()[:32]
    window = int(at.timestamp() // IDEMPOTENCY_WINDOW.total_seconds())
    return f"auto-{digest}-{window}", f"auto-{digest}-{window - 1}"
