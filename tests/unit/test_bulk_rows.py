"""The row validator: each field problem at its column, and the request a good row becomes."""

from __future__ import annotations

import pytest

from shared.bulk.header import map_header
from shared.bulk.problems import CsvProblem
from shared.bulk.rows import RowValidator
from shared.reset.contract import ResetRequest
from tests.factories import settings

ADELE = "5e0c1d2a-0001-4a5b-9c3d-000000000001"


def validator(*names: str, **options: object) -> RowValidator:
    header, problems, fatal = map_header(list(names), 1)
    assert problems == [] and fatal is None
    return RowValidator(header, **options)  # type: ignore[arg-type]


def problems_of(found: tuple[ResetRequest | None, list[CsvProblem]]) -> list[tuple[int, str | None, str]]:
    request, problems = found
    assert request is None and problems, "a row with problems has no request"
    return [(p.column, p.field, p.message) for p in problems]


def test_a_good_row_becomes_a_request_with_converted_cells() -> None:
    """Cells are stripped, empty ones left out, booleans and the '|' list converted."""
    check = validator("userId", "ticketId", "newEmail", "sendInvitationMessage", "dryRun", "ccRecipients")
    request, problems = check.validate([f" {ADELE} ", " INC-1 ", "", "YES", "0", "a@b.com | "], 4, 5)
    assert problems == [] and request is not None
    assert (request.user_id, request.ticket_id, request.new_email) == (ADELE, "INC-1", None)
    assert request.send_invitation_message is True and request.dry_run is False
    assert request.cc_recipients == ["a@b.com"]


@pytest.mark.parametrize(
    ("cells", "column", "message"),
    [
        (
            [ADELE, "T", "x"],
            3,
            "too many cells: the row has 3, the header has 2 (quote a cell that contains the delimiter)",
        ),
        ([ADELE], 2, "too few cells: the row has 1, the header has 2 (quote a cell that contains the delimiter)"),
    ],
)
def test_a_row_with_the_wrong_number_of_cells_is_reported_where_it_goes_wrong(
    cells: list[str], column: int, message: str
) -> None:
    """The cell count is checked first: the column is the first cell too many or missing."""
    request, [problem] = validator("userId", "ticketId").validate(cells, 7, 9)
    assert request is None
    assert (problem.line, problem.column, problem.row, problem.message) == (9, column, 7, message)


def test_a_value_that_is_not_a_boolean_is_named_at_its_column() -> None:
    """Only true/yes/1 and false/no/0 (any case) are booleans."""
    found = validator("userId", "dryRun").validate([ADELE, "maybe"], 1, 2)
    assert problems_of(found) == [(2, "dryRun", "'maybe' is not a boolean: use true or false")]


@pytest.mark.parametrize(
    ("names", "cells", "column", "message"),
    [
        (("userId", "newEmail"), [ADELE, "not-an-email"], 2, "is not a valid email address"),
        (("userId",), ["not-a-guid"], 1, "must be the user's object id"),
        (("userId", "ccRecipients"), [ADELE, "a@b.com|c@d.com"], 2, "at most 1 item"),
        (("userId", "inviteRedirectUrl"), [ADELE, "http://x.example"], 2, "must be an https URL"),
        (("ticketId", "email"), ["T", ""], 2, "give exactly one of userId, userPrincipalName or email"),
        (("userId", "email"), [ADELE, "adele@contoso.com"], 1, "(userId, email given)"),
    ],
)
def test_a_contract_violation_is_reported_at_the_column_of_its_field(
    names: tuple[str, ...], cells: list[str], column: int, message: str
) -> None:
    """The contract's own messages; an error of the row as a whole points at its first user key column."""
    [(found_column, _, found_message)] = problems_of(validator(*names).validate(cells, 1, 2))
    assert found_column == column and message in found_message


def test_several_problems_come_in_column_order() -> None:
    """A row's problems are sorted by column, whichever check found them."""
    found = validator("newEmail", "dryRun", "userId").validate(["bad", "perhaps", ADELE], 1, 2)
    assert [column for column, _, _ in problems_of(found)] == [1, 2]


def test_a_callback_host_must_be_on_the_allowlist_when_settings_are_given() -> None:
    """With the app settings a callbackUrl off CALLBACK_ALLOWED_HOSTS is a problem; without them it is not checked."""
    cells = [ADELE, "https://evil.example/hook"]
    found = validator("userId", "callbackUrl", settings=settings()).validate(cells, 1, 2)
    assert problems_of(found) == [(2, "callbackUrl", "host is not on the callback allowlist (CALLBACK_ALLOWED_HOSTS)")]
    request, problems = validator("userId", "callbackUrl").validate(cells, 1, 2)
    assert request is not None and problems == []


def test_source_and_requester_fill_empty_cells_only_and_are_cut_to_256() -> None:
    """Defaults never override what the row says."""
    check = validator("userId", "requestedBy", source="s" * 300, requested_by="cli-user")
    first, _ = check.validate([ADELE, ""], 1, 2)
    second, _ = check.validate([ADELE, "alice"], 2, 3)
    assert first is not None and second is not None
    assert (first.source, first.requested_by) == ("s" * 256, "cli-user")
    assert second.requested_by == "alice"
