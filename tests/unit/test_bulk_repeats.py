"""A file may reset each guest once: repeated users are found by line, in flat memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import shared.bulk.repeats as repeats
from shared.bulk.reader import ValidationSummary, validate_chunks

ADELE = "5e0c1d2a-0001-4a5b-9c3d-000000000001"
LEE = "5e0c1d2a-0008-4a5b-9c3d-000000000008"


class Source:
    """A file's bytes in chunks, counting how often it is read."""

    def __init__(self, text: str, chunk: int = 7) -> None:
        self.data = text.encode("utf-8")
        self.chunk = chunk
        self.reads = 0

    def __call__(self) -> Iterator[bytes]:
        self.reads += 1
        for start in range(0, len(self.data), self.chunk):
            yield self.data[start : start + self.chunk]


def problems(summary: ValidationSummary) -> list[tuple[int, int, str | None, str]]:
    return [(p.line, p.column, p.field, p.message) for p in summary.problems]


def guest(i: int) -> str:
    return f"5e0c1d2a-{i:04x}-4a5b-9c3d-{i:012x}"


def test_the_same_user_id_twice_is_refused_at_the_second_line() -> None:
    """Case does not matter for an object id; the message names the first line, not the user."""
    source = Source(f"ticketId,userId,newEmail\nT-1,{ADELE},a@x.example\nT-2,{LEE},\nT-3,{ADELE.upper()},b@x.example\n")
    summary = validate_chunks(source)
    assert not summary.valid and summary.invalid_rows == 1 and summary.problem_count == 1
    [(line, column, field, message)] = problems(summary)
    assert (line, column, field) == (4, 2, "userId")
    assert "the same user as line 2" in message and ADELE not in message
    assert source.reads == 2


def test_repeated_upn_and_email_are_compared_without_case() -> None:
    source = Source(
        "userPrincipalName,email\n"
        "adele_contoso.com#EXT#@fabrikam.onmicrosoft.com,\n"
        ",brian@partner.example\n"
        "ADELE_contoso.com#EXT#@Fabrikam.onmicrosoft.com,\n"
        ",Brian@Partner.Example\n"
    )
    summary = validate_chunks(source)
    assert [(line, column, field) for line, column, field, _ in problems(summary)] == [
        (4, 1, "userPrincipalName"),
        (5, 2, "email"),
    ]
    assert "line 2" in summary.problems[0].message and "line 3" in summary.problems[1].message


def test_a_file_without_repeats_is_read_once() -> None:
    rows = "".join(f"{guest(i)},INC-{i}\n" for i in range(1, 2001))
    source = Source("userId,ticketId\n" + rows, chunk=4096)
    summary = validate_chunks(source)
    assert summary.valid and summary.rows == 2000
    assert source.reads == 1


def test_repeats_are_listed_in_line_order_with_the_other_problems() -> None:
    source = Source(f"userId,newEmail\n{ADELE},\n{LEE},not-an-email\n{ADELE},\n{ADELE},\n")
    summary = validate_chunks(source)
    assert [(line, field) for line, _, field, _ in problems(summary)] == [
        (3, "newEmail"),
        (4, "userId"),
        (5, "userId"),
    ]
    assert summary.invalid_rows == 3
    assert all("line 2" in p.message for p in summary.problems[1:])


def test_false_candidates_of_a_crowded_filter_are_cleared_by_the_second_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a 64-bit filter nearly every row is a candidate; only the real repeat is reported."""
    monkeypatch.setattr(repeats, "SIEVE_BITS", 64)
    monkeypatch.setattr(repeats, "_MASK", 63)
    rows = [guest(i) for i in range(1, 301)]
    clean = Source("userId\n" + "\n".join(rows) + "\n", chunk=1024)
    summary = validate_chunks(clean)
    assert summary.valid and clean.reads == 2  # candidates, then all cleared
    repeated = Source("userId\n" + "\n".join([*rows, rows[41]]) + "\n", chunk=1024)
    summary = validate_chunks(repeated)
    assert [(p.line, p.message.split(":")[0]) for p in summary.problems] == [(302, "the same user as line 43")]
