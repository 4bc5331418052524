"""Every Graph failure's verdict (permanent or transient), and retries that never re-send an applied write."""

from __future__ import annotations

from typing import Any

import pytest

from shared.platform.errors import (
    ROLE_CALL,
    USER_CALL,
    AmbiguousOutcomeError,
    GraphRequestError,
    HoldError,
    PolicyRefusedError,
    ResetError,
    TransientError,
    UserNotFoundError,
    classify_graph_response,
)
from shared.reset.graph_stub import graph_failure, transit_failure
from shared.reset.throttle import MAX_IN_PROCESS_WAIT, RetryPolicy, WriteBudget, call_with_retries

NO_WAIT = RetryPolicy((0.0,), 4)


def body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "innerError": {"request-id": "inner-id"}}}


@pytest.mark.parametrize(
    ("status", "graph_code", "message", "ours", "kind"),
    [
        (429, "TooManyRequests", "Please retry again later.", "GraphThrottled", TransientError),
        (500, "InternalServerError", "oops", "GraphUnavailable", TransientError),
        (502, "BadGateway", "oops", "GraphUnavailable", TransientError),
        (503, "ServiceUnavailable", "down", "GraphUnavailable", TransientError),
        (504, "GatewayTimeout", "slow", "GraphUnavailable", TransientError),
        (408, "RequestTimeout", "slow", "GraphUnavailable", TransientError),
        (409, "Directory_ConcurrencyViolation", "race", "GraphConcurrencyViolation", TransientError),
        (409, "Conflict", "another conflict", "Graph409", GraphRequestError),
        (401, "InvalidAuthenticationToken", "Access token has expired.", "GraphUnauthorized", GraphRequestError),
        (401, "Unauthorized", "Insufficient privileges", "GraphUnauthorized", GraphRequestError),
        (
            403,
            "Forbidden",
            "Invitations are blocked for this directory due to suspicious activity.",
            "InvitationsBlocked",
            GraphRequestError,
        ),
        (
            403,
            "Forbidden",
            "Sending invitations is not allowed for your company.",
            "InvitationsDisabled",
            GraphRequestError,
        ),
        (
            403,
            "Forbidden",
            "The invitation was blocked by cross-tenant access settings.",
            "CrossTenantAccessBlocked",
            GraphRequestError,
        ),
        (
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
            "GraphForbidden",
            GraphRequestError,
        ),
        (404, "Request_ResourceNotFound", "Resource 'x' does not exist", "UserNotFound", UserNotFoundError),
        (
            400,
            "BadRequest",
            "The email you're using to invite this user doesn't match any emails on the user object.",
            "EmailNotOnUser",
            GraphRequestError,
        ),
        (
            400,
            "Request_BadRequest",
            "Another object with the same value for property proxyAddresses already exists.",
            "EmailInUse",
            PolicyRefusedError,
        ),
        (
            400,
            "Request_BadRequest",
            "Invalid value specified for property 'mail'.",
            "GraphBadRequest",
            GraphRequestError,
        ),
        (422, "Unprocessable", "no", "Graph422", GraphRequestError),
    ],
)
def test_each_graph_answer_has_one_code_and_verdict(
    status: int, graph_code: str, message: str, ours: str, kind: type[ResetError]
) -> None:
    """Throttling, outages, timeouts and write races are retried; every other refusal goes to poison at once."""
    error = classify_graph_response(status, body(graph_code, message), {"request-id": "rid-1"})
    assert type(error) is kind and error.code == ours
    assert error.permanent is (kind is not TransientError)
    assert (error.status, error.graph_request_id) == (status, "rid-1")


@pytest.mark.parametrize(
    ("header", "seconds"), [("3", 3.0), ("0.5", 0.5), ("2.128", 2.128), ("soon", None), (None, None)]
)
def test_throttling_carries_the_wait_graph_asked_for(header: str | None, seconds: float | None) -> None:
    """Retry-After in whole or fractional seconds becomes the error's wait; without it, the schedule decides."""
    headers = {"retry-after": header} if header is not None else {}
    error = classify_graph_response(429, body("TooManyRequests", "slow down"), headers)
    expected = None if seconds is None else pytest.approx(seconds)
    assert error.retry_after == expected and not error.permanent


def test_an_outage_may_also_name_its_wait() -> None:
    """A 503 with Retry-After is waited out like a 429."""
    assert classify_graph_response(503, None, {"retry-after": "7"}).retry_after == 7.0


def test_forbidden_without_a_known_hint_names_the_missing_permission() -> None:
    """A plain 403 tells the operator which permission to grant, and that role holders are out of reach."""
    error = classify_graph_response(403, body("Authorization_RequestDenied", "Insufficient privileges"), {})
    assert "User.ReadWrite.All" in error.message and "directory roles" in error.message


def test_a_generic_403_on_a_write_names_both_permissions() -> None:
    """A 403 on a write names both permissions the app needs, and the role rule."""
    error = classify_graph_response(403, body("Forbidden", "Generic authorization exception."), {})
    assert "User.ReadWrite.All" in error.message and "RoleManagement.Read.Directory" in error.message


def test_a_denied_role_read_names_role_management_read_directory() -> None:
    """The role check's 403 says exactly which permission is missing, and not that User.ReadWrite.All is enough."""
    denied = body("Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    error = classify_graph_response(403, denied, {}, call=ROLE_CALL)
    assert (error.code, error.permanent) == ("GraphPermissionMissing", True)
    assert "RoleManagement.Read.Directory" in error.message and "User.ReadWrite.All" not in error.message
    assert "User.ReadWrite.All" in classify_graph_response(403, denied, {}, call=USER_CALL).message


def test_a_role_endpoint_graph_does_not_serve_fails_closed_with_the_way_out() -> None:
    """A 404 from the (beta) role read is not "no such user": the request fails, ROLE_CHECK=direct is named."""
    error = classify_graph_response(404, body("Request_ResourceNotFound", "Resource not found"), {}, call=ROLE_CALL)
    assert (error.code, error.permanent) == ("RoleCheckUnavailable", True)
    assert "ROLE_CHECK=direct" in error.message


def test_request_id_comes_from_the_body_when_the_header_is_missing() -> None:
    """Support needs Graph's request-id; an error body's innerError carries it when the header does not."""
    assert classify_graph_response(400, body("BadRequest", "x"), {}).graph_request_id == "inner-id"


def test_a_gateway_page_without_graph_body_is_still_classified() -> None:
    """A proxy's HTML 502 has no Graph error object: still a transient outage, with a readable message."""
    error = classify_graph_response(502, None, {})
    assert error.code == "GraphUnavailable" and not error.permanent and "HTTP 502" in error.message


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_write_answered_with_a_5xx_that_may_have_run_is_ambiguous(status: int) -> None:
    """After 500/502/504 a write may have landed; a read's failure is plainly transient."""
    assert isinstance(graph_failure(status, write=True), AmbiguousOutcomeError)
    read = graph_failure(status, write=False)
    assert isinstance(read, TransientError) and not isinstance(read, AmbiguousOutcomeError)


def test_a_write_refused_with_503_was_not_applied() -> None:
    """503 means Graph did not process the call: transient, but nothing to check before re-sending."""
    assert not isinstance(graph_failure(503, write=True), AmbiguousOutcomeError)


def test_a_write_without_an_answer_is_ambiguous_unless_it_never_left() -> None:
    """A timeout or a dropped connection may hide an applied write; an unreachable Graph cannot."""
    assert isinstance(transit_failure("reset_redemption", "timeout", write=True), AmbiguousOutcomeError)
    assert isinstance(transit_failure("reset_redemption", "dropped", write=True), AmbiguousOutcomeError)
    unreachable = transit_failure("reset_redemption", "unreachable", write=True)
    assert unreachable.code == "GraphUnreachable" and not isinstance(unreachable, AmbiguousOutcomeError)
    assert not isinstance(transit_failure("read_user", "timeout", write=False), AmbiguousOutcomeError)


class Post:
    """A write that fails with the given errors, then succeeds; counts how often it was sent."""

    def __init__(self, *errors: ResetError) -> None:
        self.errors = list(errors)
        self.sent = 0

    async def __call__(self) -> str:
        self.sent += 1
        if self.errors:
            raise self.errors.pop(0)
        return "sent"


def not_ambiguous(error: ResetError) -> bool:
    """The gateway's rule for the invitation: a write that may have run is never sent again."""
    return not isinstance(error, AmbiguousOutcomeError)


@pytest.mark.parametrize(
    "error",
    [graph_failure(504, write=True, retry_after=0), transit_failure("reset_redemption", "timeout", write=True)],
    ids=["504", "timeout"],
)
async def test_an_ambiguous_write_is_never_sent_again(error: ResetError) -> None:
    """A write that may have been applied ends the call after one send; evidence decides (readback.py)."""
    post = Post(error)
    with pytest.raises(AmbiguousOutcomeError):
        await call_with_retries(post, policy=NO_WAIT, budget=WriteBudget(100), what="x", retry_if=not_ambiguous)
    assert post.sent == 1


async def test_a_plain_transient_failure_is_retried() -> None:
    """A 503 or a 429 was not applied: the retry goes out."""
    post = Post(graph_failure(503, write=True), graph_failure(429, write=True, retry_after=0))
    result = await call_with_retries(post, policy=NO_WAIT, budget=WriteBudget(100), what="x", retry_if=not_ambiguous)
    assert (result, post.sent) == ("sent", 3)


async def test_a_permanent_failure_is_never_retried() -> None:
    """A refusal goes straight to the caller: one attempt."""
    post = Post(graph_failure(400, write=True, message="bad"))
    with pytest.raises(GraphRequestError):
        await call_with_retries(post, policy=NO_WAIT, budget=WriteBudget(100), what="x", retry_if=not_ambiguous)
    assert post.sent == 1


async def test_throttling_pauses_every_call_of_the_worker() -> None:
    """A 429's Retry-After holds the shared budget, so concurrent resets wait too."""
    now = [0.0]

    async def advance(seconds: float) -> None:
        now[0] += seconds

    budget = WriteBudget(100, clock=lambda: now[0], sleep=advance)
    post = Post(graph_failure(429, write=True, retry_after="0.01"))
    assert await call_with_retries(post, policy=NO_WAIT, budget=budget, what="x") == "sent"
    await budget.wait_if_paused()
    assert now[0] == pytest.approx(0.01)


async def test_a_wait_longer_than_an_invocation_should_sleep_holds_the_request() -> None:
    """Past MAX_IN_PROCESS_WAIT the request is held (HoldError with Graph's wait), nothing slept."""
    post = Post(graph_failure(429, write=True, retry_after=MAX_IN_PROCESS_WAIT + 1))
    with pytest.raises(HoldError) as held:
        await call_with_retries(post, policy=NO_WAIT, budget=WriteBudget(100), what="x")
    assert post.sent == 1 and held.value.delay == MAX_IN_PROCESS_WAIT + 1
