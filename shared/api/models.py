"""Shapes of the HTTP API's bodies, as pydantic models: the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.reset.contract import ResetOutcome, ResetRequest


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        field_title_generator=lambda name, _info: to_camel(name),
    )


class ResetSubmission(ResetRequest):
    """One reset request, or a batch: {"requests": [...]} (then no other field)."""

    model_config = ConfigDict(title="ResetSubmission")

    requests: list[ResetRequest] | None = Field(
        None, max_length=1000, description="Batch form: up to 1,000 requests, validated all or nothing."
    )


class AcceptedItem(_Model):
    request_id: str = Field(description="The request's id; poll its status URL.")
    status: str = Field(description="Accepted, or the existing status of a resubmitted request.")
    status_url: str = Field(description="Where to poll for the outcome.")
    duplicate: bool = Field(description="True when this requestId was submitted before (nothing new enqueued).")


class SubmissionAccepted(_Model):
    """The submission was recorded and enqueued."""

    accepted: list[AcceptedItem]


class ResetStatus(ResetOutcome):
    """Where a request stands; terminal once status is Succeeded, Failed or DryRunPassed."""

    redeem_url: str | None = Field(
        None,
        description="Invitation redeem link of a reset that sent no email: shown once, to a caller with "
        "Reset.ReadRedeemUrl, while the guest's invitation is pending; then erased.",
    )


class ProblemItem(_Model):
    index: int | None = Field(None, description="Position in the batch.")
    field: str
    message: str


class Problem(_Model):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[ProblemItem] | None = None


class FailedRequest(_Model):
    request_id: str
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    replays: int = 0
    ticket_id: str | None = None
    finished_at: str | None = None
    replayable: bool


class PoisonList(_Model):
    """Requests that ended Failed through the poison queue."""

    items: list[FailedRequest]


class ReplayOrder(_Model):
    """Which failed requests to put back on the request queue (all when nothing narrows it)."""

    request_ids: list[str] | None = Field(None, max_length=100)
    error_code: str | None = None
    max: int = Field(100, ge=1, le=1000)


class SkippedReplay(_Model):
    request_id: str
    reason: str


class ReplayResult(_Model):
    moved: list[str]
    moved_count: int
    skipped: list[SkippedReplay]


class Breaker(_Model):
    """The invitation circuit breaker: open after Microsoft blocked or disabled invitations."""

    state: str = Field(description="open or closed")
    code: str | None = Field(None, description="InvitationsBlocked or InvitationsDisabled: what opened it.")
    message: str | None = Field(None, description="Graph's message when it opened.")
    opened_at: str | None = None
    opened_by: str | None = Field(None, description="The request that met the block.")
    closed_at: str | None = None
    closed_by: str | None = None


class BreakerClose(_Model):
    """Who closes the breaker (kept for audit)."""

    closed_by: str | None = Field(None, max_length=200)


class BreakerClosed(_Model):
    """The breaker is closed and every held request is back on the queue."""

    breaker: Breaker
    resumed: list[str] = Field(description="requestIds of the held requests sent back to the queue.")
    resumed_count: int


class Health(_Model):
    status: str = Field(description="healthy or unhealthy")
    problems: list[str] = []


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(by_alias=True, exclude_none=True)
