"""The bulk CSV reader: what it tolerates, and where it says each malformed file is wrong."""

from __future__ import annotations

import codecs

import pytest

from shared.bulk.reader import MAX_PROBLEMS, BulkCsvReader, BulkRow, CsvProblem, request_id_for
from shared.reset.contract import canonical_json
from tests.factories import settings

ADELE = "5e0c1d2a-0001-4a5b-9c3d-000000000001"
LEE = "5e0c1d2a-0008-4a5b-9c3d-000000000008"


def read(data: str | bytes, *, chunk: int = 1 << 20, **options: object) -> tuple[BulkCsvReader, list[BulkRow]]:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    reader = BulkCsvReader(**options)  # type: ignore[arg-type]
    rows: list[BulkRow] = []
    for start in range(0, len(raw), chunk):
        rows += reader.feed(raw[start : start + chunk])
    rows += reader.close()
    return reader, rows


def where(reader: BulkCsvReader) -> list[tuple[int, int]]:
    return [(p.line, p.column) for p in reader.problems]


def test_bom_blank_lines_and_surrounding_spaces_are_tolerated() -> None:
    """A UTF-8 BOM, blank lines (also ',,' ones) and spaces around cells and names are ignored."""
    text = f"\ufeff userId , ticketId \n\n {ADELE} ,  INC-1 \r\n,\n   \n{LEE},INC-2\n"
    reader, rows = read(text)
    assert reader.valid and reader.header == ("userId", "ticketId")
    assert [(r.row, r.line) for r in rows] == [(1, 3), (2, 6)]
    assert rows[0].request is not None and rows[0].request.user_id == ADELE and rows[0].request.ticket_id == "INC-1"


def test_semicolon_delimiter_is_detected_on_the_header_line() -> None:
    """A header with more ';' than ',' makes ';' the delimiter; quoted cells may hold either."""
    text = f'userId;customizedMessageBody;ticketId\n{ADELE};"Hello; welcome, again";INC-1\n'
    reader, rows = read(text)
    assert reader.valid and reader.delimiter == ";"
    assert rows[0].request is not None and rows[0].request.customized_message_body == "Hello; welcome, again"


def test_comma_delimiter_with_quoted_cells_and_escaped_quotes() -> None:
    """Quoted cells may hold the delimiter, doubled quotes and line breaks; lines stay counted."""
    text = f'userId,customizedMessageBody,ticketId\n{ADELE}, "Say ""hi"",\nthen go" ,INC-1\n{LEE},x,INC-2\n'
    reader, rows = read(text)
    assert reader.valid
    assert rows[0].request is not None and rows[0].request.customized_message_body == 'Say "hi",\nthen go'
    assert [(r.row, r.line) for r in rows] == [(1, 2), (2, 4)]


def test_lists_use_a_pipe_and_booleans_accept_spreadsheet_spellings() -> None:
    """ccRecipients splits on '|'; TRUE/false/yes/0 are booleans."""
    text = f"userId,ccRecipients,sendInvitationMessage,dryRun\n{ADELE}, boss@contoso.com | ,TRUE,no\n"
    _, [row] = read(text)
    assert row.request is not None
    assert row.request.cc_recipients == ["boss@contoso.com"]
    assert row.request.send_invitation_message is True and row.request.dry_run is False


def test_columns_that_find_writes_are_read_past() -> None:
    """`find`'s reason and facts columns are ignored, a misspelt one is still refused."""
    text = f"userId,newEmail,reason,currentEmail,isViral\n{ADELE},adele@fabrikam.com,DomainMove,adele@fabrikam.net,\n"
    reader, [row] = read(text)
    assert reader.valid and row.request is not None
    sent = canonical_json(row.request)
    assert "reason" not in sent and "fabrikam.net" not in sent and row.request.new_email == "adele@fabrikam.com"
    reader, _ = read(f"userId,reasons\n{ADELE},x\n")
    assert where(reader) == [(1, 2)] and "did you mean 'reason'" in reader.problems[0].message


def test_move_to_domain_is_a_column() -> None:
    """A file may ask for a domain move per row; newEmail and moveToDomain together are refused."""
    _, [row] = read(f"userId,moveToDomain\n{ADELE},Fabrikam.COM\n")
    assert row.request is not None and row.request.move_to_domain == "fabrikam.com"
    reader, _ = read(f"userId,newEmail,moveToDomain\n{ADELE},a@b.example,fabrikam.com\n")
    assert "not both" in reader.problems[0].message


@pytest.mark.parametrize("chunk", [1, 3, 17, 4096])
def test_rows_cut_by_chunk_boundaries_read_the_same(chunk: int) -> None:
    """Bytes may arrive in any slices (a BOM or a quoted line break split in two included)."""
    text = f'\ufeffuserId;customizedMessageBody\n{ADELE};"line one\nline two"\n{LEE};"é ü"\n'
    whole_reader, whole = read(text)
    reader, rows = read(text, chunk=chunk)
    assert reader.valid and rows == whole and reader.sha256 == whole_reader.sha256


@pytest.mark.parametrize(
    ("name", "text", "line", "column", "message"),
    [
        ("unknown column", f"userId,tiketId\n{ADELE},x\n", 1, 2, "unknown column 'tiketId'; did you mean 'ticketId'?"),
        ("duplicate header", f"userId,ticketId,ticketId\n{ADELE},a,b\n", 1, 3, "duplicate column 'ticketId'"),
        ("requestId column", f"userId,requestId\n{ADELE},x\n", 1, 2, "requestId is derived"),
        ("no user key column", "ticketId,newEmail\nx,a@b.com\n", 1, 1, "needs a userId, userPrincipalName or email"),
        ("missing user key", "ticketId,userId,email\nT-1,,\n", 2, 2, "give exactly one of userId"),
        ("two user keys", f"userId,email\n{ADELE},adele.vance@contoso.com\n", 2, 1, "(userId, email given)"),
        ("bad email", f"userId,ticketId,newEmail\n{ADELE},T,not-an-email\n", 2, 3, "is not a valid email address"),
        ("bad user id", "userId\nnot-a-guid\n", 2, 1, "must be the user's object id"),
        ("bad bool", f"userId,sendInvitationMessage\n{ADELE},maybe\n", 2, 2, "'maybe' is not a boolean"),
        ("two cc recipients", f"userId,ccRecipients\n{ADELE},a@b.com|c@d.com\n", 2, 2, "at most 1 item"),
        ("too many cells", f"userId,ticketId\n{ADELE},T,extra\n", 2, 3, "too many cells: the row has 3"),
        ("too few cells", f"userId,ticketId,newEmail\n{ADELE},T\n", 2, 3, "too few cells: the row has 2"),
        ("unterminated quote", f'userId,ticketId\n{LEE},T\n{ADELE},"INC-1\n{LEE},x\n', 3, 2, "never closed"),
        ("quote inside a cell", f'userId,ticketId\n{ADELE},IN"C\n', 2, 2, "a quote inside an unquoted cell"),
        ("text after quote", f'userId,ticketId\n{ADELE},"INC"-1\n', 2, 2, "text after the closing quote"),
        ("empty file", "", 1, 1, "the file is empty"),
        ("blank file", "\n  \n\n", 1, 1, "the file is empty"),
        ("header only", "userId,ticketId\n\n", 3, 1, "a header but no rows"),
    ],
)
def test_malformed_file_is_reported_at_its_line_and_column(
    name: str, text: str, line: int, column: int, message: str
) -> None:
    """Each kind of mistake is found, with the line and the column (cell number) to fix."""
    reader, _ = read(text)
    assert not reader.valid, name
    first = reader.problems[0]
    assert (first.line, first.column) == (line, column), f"{name}: {first}"
    assert message in first.message, f"{name}: {first.message}"


def test_text_that_is_not_utf8_is_reported_at_its_line() -> None:
    """A file saved as Windows-1252 is refused at the first line with a non-UTF-8 byte."""
    raw = f"userId,ticketId\n{ADELE},T\n{LEE},café\n".encode("cp1252")
    reader, _ = read(raw)
    assert where(reader) == [(3, 2)] and "not UTF-8" in reader.problems[0].message


def test_utf16_file_is_refused_with_a_hint() -> None:
    """Excel's 'Unicode text' (UTF-16) is named as such, not reported as garbage."""
    reader, _ = read(codecs.BOM_UTF16_LE + "userId\n".encode("utf-16-le"))
    assert where(reader) == [(1, 1)] and "UTF-16" in reader.problems[0].message


def test_every_bad_row_is_listed_not_only_the_first() -> None:
    """Validation goes on after a bad row: all problems, in file order, with field and row."""
    text = f"userId,newEmail,dryRun\n{ADELE},bad,\n{LEE},,perhaps\nnope,,\n"
    reader, rows = read(text)
    assert where(reader) == [(2, 2), (3, 3), (4, 1)]
    assert [p.field for p in reader.problems] == ["newEmail", "dryRun", "userId"]
    assert [p.row for p in reader.problems] == [1, 2, 3]
    assert reader.invalid_rows == 3 and all(r.request is None for r in rows)


def test_callback_host_must_be_on_the_allowlist() -> None:
    """With the app settings, a callbackUrl off CALLBACK_ALLOWED_HOSTS is a row problem."""
    text = f"userId,callbackUrl\n{ADELE},https://evil.example/hook\n{LEE},https://x.logic.azure.com/cb\n"
    reader, _ = read(text, settings=settings())
    assert where(reader) == [(2, 2)] and "allowlist" in reader.problems[0].message


def test_problems_are_capped_for_display_but_all_counted() -> None:
    """A file with thousands of bad rows keeps 1,000 problems and counts every one."""
    text = "userId\n" + "bad\n" * (MAX_PROBLEMS + 500)
    problems: list[CsvProblem] = []
    reader, _ = read(text, on_problem=problems.append)
    assert len(reader.problems) == MAX_PROBLEMS and reader.problem_count == MAX_PROBLEMS + 500
    assert len(problems) == MAX_PROBLEMS + 500


def test_request_ids_come_from_the_content_and_the_row() -> None:
    """Same bytes give the same requestIds; any change to the file gives other ones."""
    text = f"userId\n{ADELE}\n{LEE}\n"
    first, _ = read(text)
    again, _ = read(text)
    changed, _ = read(text + "\n")
    assert first.file_id == again.file_id and first.file_id != changed.file_id
    assert request_id_for(first.file_id, 2) == f"bulk-{first.file_id}-2"


def test_rows_before_the_resume_point_are_counted_not_validated() -> None:
    """A resumed run skips validation of rows already sent; later rows are validated."""
    text = f"userId\n{ADELE}\n{LEE}\n{ADELE}\n"
    reader, rows = read(text, validate_from=3)
    assert [r.request is None for r in rows] == [True, True, False] and reader.valid


def test_default_source_and_requester_fill_empty_cells_only() -> None:
    """The file's name goes into source; a row's own requestedBy wins over the default."""
    text = f"userId,requestedBy\n{ADELE},\n{LEE},alice\n"
    _, rows = read(text, source="bulk:guests.csv", requested_by="cli-user")
    requests = [r.request for r in rows]
    assert [(q.source, q.requested_by) for q in requests if q] == [
        ("bulk:guests.csv", "cli-user"),
        ("bulk:guests.csv", "alice"),
    ]
    assert canonical_json(requests[0], requestId="bulk-x-1").endswith('"requestId":"bulk-x-1"}')  # type: ignore[arg-type]


def test_rows_are_judged_with_the_queues_capabilities_and_request_rules() -> None:
    """A bulk row is a queue message: an email switch the queue may not make is a row problem up front."""
    text = f"userId,newEmail,customizedMessageBody\n{ADELE},adele@new.example,\n{LEE},,Welcome\n{ADELE.upper()},,\n"
    reader, rows = read(text, settings=settings(QUEUE_CAPABILITIES="", KEY_CAPABILITIES=""))
    problems = [(p.line, p.field, p.message) for p in reader.problems]
    assert any(line == 2 and field == "newEmail" and "Reset.SwitchEmail" in text for line, field, text in problems)
    assert any(line == 3 and "dropped by Graph" in text for line, _, text in problems)
    assert [r.request is not None for r in rows] == [False, False, True]
