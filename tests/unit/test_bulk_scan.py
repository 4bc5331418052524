"""The CSV scanner: bytes to records, quotes across lines and chunks, and where it stops reading."""

from __future__ import annotations

import codecs

import pytest

from shared.bulk.scan import MAX_RECORD_CHARS, CsvScanner, Record


def scan(data: str | bytes, *, chunk: int = 1 << 20) -> tuple[CsvScanner, list[Record]]:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    scanner = CsvScanner()
    records: list[Record] = []
    for start in range(0, len(raw), chunk):
        records += scanner.feed(raw[start : start + chunk])
    records += scanner.close()
    return scanner, records


def cells(records: list[Record]) -> list[list[str]]:
    return [found for _, found, _ in records]


def test_quoted_cell_spanning_lines_is_one_record_at_its_first_line() -> None:
    """A line break inside quotes continues the record; the next record's line counts both lines."""
    scanner, records = scan('a,b\n1,"one\ntwo",x\n2,y\n')
    assert [(line, found) for line, found, _ in records] == [
        (1, ["a", "b"]),
        (2, ["1", "one\ntwo", "x"]),
        (4, ["2", "y"]),
    ]
    assert scanner.fatal is None and scanner.line == 4


def test_doubled_quotes_and_quoted_delimiters_stay_in_the_cell() -> None:
    """Inside quotes, "" is one quote and the delimiter is text; spaces before a quote are skipped."""
    _, records = scan('a,b\n "say ""hi""", "x,y" \n')
    assert cells(records)[1] == ['say "hi"', "x,y "]


@pytest.mark.parametrize(
    ("line", "column", "message"),
    [
        ('1,IN"C\n', 2, "a quote inside an unquoted cell"),
        ('1,"INC"-1\n', 2, "text after the closing quote of the cell"),
        ('1,"INC" x\n', 2, "text after the closing quote of the cell"),
    ],
)
def test_a_stray_quote_spoils_only_its_record(line: str, column: int, message: str) -> None:
    """A quoting mistake is a problem at its line and cell; the records after it are still read."""
    scanner, records = scan("a,b\n" + line + "2,y\n")
    (_, spoiled, problem), after = records[1], records[2]
    assert spoiled == [] and problem is not None and (problem.line, problem.column) == (2, column)
    assert message in problem.message
    assert after == (3, ["2", "y"], None) and scanner.fatal is None


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [("a;b;c", ";"), ("a,b,c", ","), ("a;b,c", ","), ("a;b;c,d", ";"), ("abc", ",")],
)
def test_the_header_line_decides_the_delimiter(header: str, delimiter: str) -> None:
    """';' only when the header holds more of them than ','; a tie or neither means ','."""
    scanner, records = scan(f"\n{header}\n1;2,3\n")
    assert scanner.delimiter == delimiter and records[0][0] == 2
    assert cells(records)[1] == "1;2,3".split(delimiter)


def test_utf8_bom_is_dropped_and_crlf_line_ends_are_not_in_cells() -> None:
    """Excel's 'CSV UTF-8' (BOM, CRLF) reads like a plain file, also with quoted cells."""
    _, records = scan('\ufeffa,b\r\n1,2\r\n3,"x"\r\n')
    assert cells(records) == [["a", "b"], ["1", "2"], ["3", "x"]]


def test_blank_lines_and_lines_of_delimiters_are_skipped_after_the_header() -> None:
    """Spreadsheets write empty rows as ',,'; they are not records, yet lines stay counted."""
    scanner, records = scan('\n a,b\n\n , \n"",""\n1,2\n')
    assert [(line, found) for line, found, _ in records] == [(2, ["a", "b"]), (6, ["1", "2"])]
    assert scanner.line == 6


def test_a_header_of_delimiters_is_still_the_header() -> None:
    """The first line that is not blank is the header, even when its cells are empty."""
    _, records = scan(",,\n1,2,3\n")
    assert cells(records) == [["", "", ""], ["1", "2", "3"]]


def test_last_line_without_a_newline_is_read_at_close() -> None:
    """The end of the file ends the last record, whether or not it ends with a line break."""
    _, records = scan("a,b\n1,2")
    assert cells(records) == [["a", "b"], ["1", "2"]]


@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_chunk_boundaries_do_not_change_the_records(chunk: int) -> None:
    """A BOM, a multi-byte character, a CRLF or a quoted line break cut by a chunk reads the same."""
    text = '\ufeffa;b\r\n1;"é\r\nü"\r\n2;"x"";y"\r\n'
    assert scan(text, chunk=chunk)[1] == scan(text)[1]


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_invalid_utf8_is_fatal_at_its_line_and_column(chunk: int) -> None:
    """The first byte that is not UTF-8 stops the scan at its line and cell (delimiters before it + 1)."""
    scanner, records = scan(b"a,b,c\n1,2,3\n4,5,caf\xe9\n6,7,8\n", chunk=chunk)
    assert len(records) <= 2  # a 64 KB slice is decoded whole: none of its records if it holds the byte
    assert scanner.fatal is not None and (scanner.fatal.line, scanner.fatal.column) == (3, 3)
    assert "not UTF-8" in scanner.fatal.message


def test_utf16_is_fatal_at_the_start() -> None:
    """A UTF-16 BOM is named: the file was saved as 'Unicode text', not CSV UTF-8."""
    scanner, records = scan(codecs.BOM_UTF16_BE + "a,b\n".encode("utf-16-be"))
    assert records == [] and scanner.fatal is not None and "UTF-16" in scanner.fatal.message


def test_a_quote_never_closed_is_fatal_where_it_opens() -> None:
    """At the end of the file an open quote is reported at the line and cell that opened it."""
    scanner, records = scan('a,b\n1,2\n3,"open\n4,5\n')
    assert cells(records) == [["a", "b"], ["1", "2"]]
    assert scanner.fatal is not None and (scanner.fatal.line, scanner.fatal.column) == (3, 2)
    assert "never closed" in scanner.fatal.message


def test_a_quoted_cell_over_64_kb_is_fatal_before_the_file_ends() -> None:
    """A missing closing quote cannot swallow the rest of a large file into memory."""
    scanner, records = scan('a,b\n1,"' + "x\n" * MAX_RECORD_CHARS + '"\n2,3\n', chunk=4096)
    assert len(records) == 1 and scanner.fatal is not None
    assert (scanner.fatal.line, scanner.fatal.column) == (2, 2) and "more than 64 KB" in scanner.fatal.message


def test_a_line_over_256_kb_is_fatal() -> None:
    """A file without line breaks (not a CSV of requests) is refused without being held in memory."""
    scanner, records = scan("a,b\n" + "x" * (MAX_RECORD_CHARS * 4 + 1), chunk=4096)
    assert len(records) == 1 and scanner.fatal is not None
    assert (scanner.fatal.line, scanner.fatal.column) == (2, 1) and "longer than 256 KB" in scanner.fatal.message


def test_nothing_comes_out_after_a_fatal_problem() -> None:
    """Once stopped, further bytes give no records and the first fatal problem stays."""
    scanner = CsvScanner()
    assert list(scanner.feed(b"a,b\n")) == [(1, ["a", "b"], None)]
    assert list(scanner.feed(b"1,\xff\n")) == []
    fatal = scanner.fatal
    assert fatal is not None
    assert list(scanner.feed(b"2,3\n")) == [] and list(scanner.close()) == [] and scanner.fatal is fatal
