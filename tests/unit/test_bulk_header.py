"""The header map: which cell holds which field, and what is wrong with a header line."""

from __future__ import annotations

import pytest

from shared.bulk.header import COLUMNS, map_header


def test_known_columns_are_mapped_in_any_order_with_spaces_and_bom_dropped() -> None:
    """Names are matched exactly after stripping spaces and a BOM the decoder left in the first cell."""
    header, problems, fatal = map_header(["\ufeffticketId ", " email", "dryRun"], 1)
    assert problems == [] and fatal is None
    assert header.names == ("ticketId", "email", "dryRun")
    assert header.index == {"ticketId": 0, "email": 1, "dryRun": 2}


def test_every_contract_column_is_accepted() -> None:
    """A header naming all columns of contract v1 has no problem."""
    header, problems, fatal = map_header(list(COLUMNS), 1)
    assert problems == [] and fatal is None and list(header.index) == list(COLUMNS)


def test_a_header_without_a_user_key_column_stops_the_file() -> None:
    """Without userId, userPrincipalName or email no row can name a guest: that problem is fatal."""
    _, problems, fatal = map_header(["ticketId", "newEmail"], 3)
    assert problems == []
    assert fatal is not None and (fatal.line, fatal.column) == (3, 1)
    assert "needs a userId, userPrincipalName or email column" in fatal.message


def test_a_duplicate_column_is_reported_with_its_first_place() -> None:
    """The second copy is the problem; the first one stays mapped."""
    header, [problem], fatal = map_header(["userId", "ticketId", "ticketId"], 1)
    assert fatal is None and header.index["ticketId"] == 1
    assert (problem.line, problem.column, problem.field) == (1, 3, "ticketId")
    assert problem.message == "duplicate column 'ticketId' (also column 2)"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("userid", "unknown column 'userid'; did you mean 'userId'?"),
        ("tiketId", "unknown column 'tiketId'; did you mean 'ticketId'?"),
        ("colour", "unknown column 'colour'; columns are userId, userPrincipalName, email, newEmail"),
        ("requestId", "requestId is derived from the file and the row (bulk-<file hash>-<row>); remove the column"),
    ],
)
def test_an_unknown_column_is_named_with_a_hint(name: str, message: str) -> None:
    """A wrong case or a typo gets the intended name; anything else gets the list of columns."""
    header, [problem], _ = map_header(["userId", name], 1)
    assert (problem.column, problem.field) == (2, name) and problem.message.startswith(message)
    assert name not in header.index


def test_an_empty_column_name_is_a_problem() -> None:
    """A header cell left empty is reported at its cell, not silently ignored."""
    _, [problem], _ = map_header(["userId", " ", "ticketId"], 1)
    assert (problem.column, problem.field, problem.message) == (2, None, "empty column name in the header")


def test_columns_are_found_by_name_and_names_by_column() -> None:
    """A row error without a column of its own points at the file's first user key column."""
    header, _, _ = map_header(["ticketId", "email", "bogus", "userId"], 1)
    assert header.column("userId") == 4 and header.column("ticketId") == 1
    assert header.column("(request)") == 2
    assert [header.name_at(c) for c in (0, 1, 3, 4, 5)] == [None, "ticketId", "bogus", "userId", None]
