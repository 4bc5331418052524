"""Bulk CSV files: a streaming reader that turns rows into validated reset requests.

One row per request, columns named like the contract's fields. The reader tolerates a UTF-8
BOM, ``,`` or ``;`` as delimiter (decided on the header line), blank lines and spaces around
cells; anything else is a ``CsvProblem`` with the line and the column (cell number, 1 = first
column, as a spreadsheet counts them). Bytes go in by chunks and rows come out one by one, so
a file of any size goes through the same small amount of memory; the SHA-256 of the bytes is
computed on the way, because requestIds are derived from it (``bulk-<16 hex>-<row>``).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from shared.bulk.repeats import RepeatCheck, RepeatSieve
from shared.platform.settings import Settings
from shared.reset import capabilities
from shared.reset.callbacks import callback_allowed
from shared.reset.contract import ResetRequest, describe_validation_error
from shared.reset.policy import request_refusals

# Columns a file may have, in contract order. requestId is not one of them: it is derived.
COLUMNS = (
    "userId",
    "userPrincipalName",
    "email",
    "newEmail",
    "sendInvitationMessage",
    "inviteRedirectUrl",
    "messageLanguage",
    "ccRecipients",
    "customizedMessageBody",
    "ticketId",
    "requestedBy",
    "source",
    "callbackUrl",
    "dryRun",
)
USER_KEYS = ("userId", "userPrincipalName", "email")
BOOLEAN_COLUMNS = frozenset({"sendInvitationMessage", "dryRun"})
LIST_SEPARATOR = "|"  # inside a ccRecipients cell; ";" may be the delimiter
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})

MAX_PROBLEMS = 1000  # kept for display; every problem is still counted and passed to on_problem
MAX_RECORD_CHARS = 64 * 1024  # a row is a queue message: contract v1 allows 64 KB
_FEED_BYTES = 64 * 1024  # rows are produced per slice of this size, not per download chunk
_UTF8_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def file_id_of(sha256_hex: str) -> str:
    """The short id of a file's content that its requestIds and progress entity carry."""
    return sha256_hex[:16]


def request_id_for(file_id: str, row: int) -> str:
    """Deterministic: the same file and row always give the same requestId."""
    return f"bulk-{file_id}-{row}"


@dataclass(frozen=True, slots=True)
class CsvProblem:
    """Something wrong in the file, where a person can find it."""

    line: int
    column: int
    message: str
    field: str | None = None  # the header name of the column, when there is one
    row: int | None = None  # the data row (1 = first row after the header)

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "field": self.field, "row": self.row, "message": self.message}

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}" + (f" ({self.field})" if self.field else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class BulkRow:
    """One data row: its request when valid, else its problems (both empty when not validated)."""

    row: int
    line: int
    request: ResetRequest | None
    problems: tuple[CsvProblem, ...] = ()


class _LineFeed:
    """The iterator csv.reader pulls from: handed exactly one record's lines at a time."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque()

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        if self.lines:
            return self.lines.popleft()
        raise StopIteration


# States of the quote scanner, which mirrors csv's rules with skipinitialspace=True.
_START, _PLAIN, _QUOTED, _QUOTE_SEEN, _CLOSED = range(5)


@dataclass
class _Scan:
    """Where a record's quoting stands after the lines seen so far."""

    state: int = _START
    column: int = 1
    open_line: int = 0
    open_column: int = 0
    error: CsvProblem | None = None


def _scan(line: str, line_no: int, delimiter: str, scan: _Scan) -> None:
    """Advance ``scan`` over one physical line (only lines holding a quote get here)."""
    for char in line:
        state = scan.state
        if char == "\n" or char == "\r":
            if state == _QUOTED:
                continue
            if state in (_QUOTE_SEEN, _CLOSED):
                scan.state = _START
            return
        if state == _QUOTED:
            if char == '"':
                scan.state = _QUOTE_SEEN
        elif char == delimiter and state != _QUOTED:
            scan.state, scan.column = _START, scan.column + 1
        elif state == _START:
            if char == '"':
                scan.state, scan.open_line, scan.open_column = _QUOTED, line_no, scan.column
            elif char != " ":
                scan.state = _PLAIN
        elif state == _PLAIN:
            if char == '"':
                scan.error = CsvProblem(
                    line_no,
                    scan.column,
                    'a quote inside an unquoted cell: quote the whole cell and double the quote ("like ""this""")',
                )
                return
        elif state == _QUOTE_SEEN:
            if char == '"':
                scan.state = _QUOTED  # "" is an escaped quote
            elif char == " ":
                scan.state = _CLOSED
            else:
                scan.error = CsvProblem(line_no, scan.column, "text after the closing quote of the cell")
                return
        elif state == _CLOSED and char != " ":
            scan.error = CsvProblem(line_no, scan.column, "text after the closing quote of the cell")
            return
    if scan.state != _QUOTED:
        scan.state = _START


def _name_at(header: list[str], column: int) -> str | None:
    return header[column - 1] if 0 < column <= len(header) else None


class BulkCsvReader:
    """Feed bytes with ``feed`` (a generator: exhaust it before the next call), then ``close``.

    Rows with ``row < validate_from`` are counted and returned without being validated, so a
    resumed run skips the part of a file that was already sent at parsing speed. With
    ``find_repeats`` the reader notes which users may appear twice (``repeat_candidates``);
    with a ``repeat_check`` built from those, a row that names a user again is a problem
    (``shared.bulk.repeats``; ``validate_chunks`` runs both passes).
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        source: str | None = None,
        requested_by: str | None = None,
        validate_from: int = 1,
        on_problem: Callable[[CsvProblem], None] | None = None,
        find_repeats: bool = False,
        repeat_check: RepeatCheck | None = None,
    ) -> None:
        self._settings = settings
        self._sieve = RepeatSieve() if find_repeats else None
        self._repeat_check = repeat_check
        self._defaults = {k: v[:256] for k, v in (("source", source), ("requestedBy", requested_by)) if v}
        self._validate_from = validate_from
        self._on_problem = on_problem
        self._hash = hashlib.sha256()
        self._tail = b""  # bytes after the last newline seen
        self._started = False
        self._line = 0  # physical lines read
        self._header: list[str] | None = None
        self._columns: dict[str, int] = {}
        self._plain: list[tuple[str, int]] = []  # columns whose text goes in as it is
        self._special: list[tuple[str, int]] = []  # booleans and the ccRecipients list
        self._delimiter = ","
        self._blank = " \t\r\n,"  # what a line that holds no cell consists of
        self._feed = _LineFeed()
        self._reader: Iterator[list[str]] | None = None
        self._record: list[str] = []  # lines of a record whose quoted cell spans lines
        self._record_chars = 0
        self._record_scan = _Scan()
        self._record_line = 0
        self._done = False
        self.rows = 0
        self.invalid_rows = 0
        self.problem_count = 0
        self.problems: list[CsvProblem] = []
        self.delimiter: Literal[",", ";"] = ","

    # -- results ----------------------------------------------------------------------------

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def file_id(self) -> str:
        return file_id_of(self.sha256)

    @property
    def valid(self) -> bool:
        return self.problem_count == 0

    @property
    def stopped(self) -> bool:
        """A fatal problem ended the reading (the rest of the input is only hashed)."""
        return self._done

    @property
    def header(self) -> tuple[str, ...]:
        return tuple(self._header or ())

    @property
    def repeat_candidates(self) -> set[str]:
        """Keys of users that valid rows may name more than once (``find_repeats``)."""
        return self._sieve.candidates if self._sieve is not None else set()

    # -- input ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> Iterator[BulkRow]:
        """Rows completed by ``data``; a row cut by the end of ``data`` comes with the next call."""
        self._hash.update(data)
        if self._done:
            return
        for start in range(0, len(data), _FEED_BYTES):
            block = self._tail + data[start : start + _FEED_BYTES]
            cut = block.rfind(b"\n") + 1
            self._tail = block[cut:]
            if len(self._tail) > MAX_RECORD_CHARS * 4:
                self._fatal_problem(self._line + 1, 1, "a line longer than 256 KB: not a CSV file of reset requests")
                return
            if cut:
                yield from self._block(block[:cut])
                if self.stopped:
                    return

    def close(self) -> Iterator[BulkRow]:
        """Rows left at the end of the input, then the checks that need the whole file."""
        if not self._done:
            if self._tail:
                tail, self._tail = self._tail, b""
                yield from self._block(tail)
            if self._record and not self._done:
                scan = self._record_scan
                self._fatal_problem(scan.open_line, scan.open_column, "the quote that opens this cell is never closed")
        if self._header is None and not self._done:
            self._problem(
                CsvProblem(1, 1, "the file is empty: the first line must be a header such as userId,newEmail,ticketId")
            )
        elif self.rows == 0 and not self._done:
            self._problem(CsvProblem(self._line + 1, 1, "the file has a header but no rows"))
        self._done = True

    # -- lines and records --------------------------------------------------------------------

    def _block(self, block: bytes) -> Iterator[BulkRow]:
        if not self._started:
            self._started = True
            if block.startswith(_UTF16_BOMS):
                self._fatal_problem(1, 1, "the file is UTF-16 text: save it as 'CSV UTF-8'")
                return
            block = block.removeprefix(_UTF8_BOM)
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as error:
            line = self._line + block.count(b"\n", 0, error.start) + 1
            column = block[block.rfind(b"\n", 0, error.start) + 1 : error.start].count(self._delimiter.encode()) + 1
            self._fatal_problem(line, column, "the line is not UTF-8 text: save the file as 'CSV UTF-8'")
            return
        parts = text.split("\n")
        last = parts.pop()  # "" when the block ends with a newline (always, but at the very end)
        line_done = self._physical_line
        for part in parts:
            row = line_done(part + "\n")
            if row is not None:
                yield row
            if self._done:
                return
        if last:
            row = line_done(last)
            if row is not None:
                yield row

    def _physical_line(self, line: str) -> BulkRow | None:
        """The row this line completes, if any (plain functions, not generators: this runs per line)."""
        self._line += 1
        if self._record:  # inside a quoted cell that spans lines
            self._record.append(line)
            self._record_chars += len(line)
            if '"' in line:
                _scan(line, self._line, self._delimiter, self._record_scan)
            if self._record_chars > MAX_RECORD_CHARS:
                scan = self._record_scan
                self._fatal_problem(
                    scan.open_line,
                    scan.open_column,
                    "a quoted cell runs on for more than 64 KB: is its closing quote missing?",
                )
                return None
            if self._record_scan.error is None and self._record_scan.state == _QUOTED:
                return None
            lines, self._record = self._record, []
            return self._record_done(lines, self._record_line, self._record_scan.error)
        if self._header is None:
            if not line.strip():
                return None
            self._delimiter = self.delimiter = ";" if line.count(";") > line.count(",") else ","
            self._reader = csv.reader(self._feed, delimiter=self._delimiter, skipinitialspace=True)
            self._blank = " \t\r\n" + self._delimiter
        if '"' in line:
            scan = _Scan()
            _scan(line, self._line, self._delimiter, scan)
            if scan.error is None and scan.state == _QUOTED:
                self._record, self._record_chars, self._record_scan = [line], len(line), scan
                self._record_line = self._line
                return None
            return self._record_done([line], self._line, scan.error)
        # Without a quote, a CSV line is its cells joined by the delimiter: str.split gives what
        # csv.reader would, several times faster; lines with quotes go through csv.reader.
        if self._header is None or "\r" in line[:-2]:
            return self._record_done([line], self._line, None)
        if not line.strip(self._blank):
            return None  # a blank line, or one of only delimiters as spreadsheets write them
        cells = line.rstrip("\r\n").split(self._delimiter)
        self.rows += 1
        if self.rows < self._validate_from:
            return BulkRow(self.rows, self._line, None)
        return self._row(cells, self.rows, self._line)

    def _record_done(self, lines: list[str], line: int, quoting: CsvProblem | None) -> BulkRow | None:
        cells: list[str] = []
        if quoting is None:
            assert self._reader is not None
            self._feed.lines.extend(lines)
            try:
                cells = next(self._reader)
            except csv.Error as error:
                quoting = CsvProblem(line, 1, f"the line cannot be read as CSV: {error}")
            finally:
                self._feed.lines.clear()
        if self._header is None:
            self._read_header(cells, line, quoting)
            return None
        if quoting is None and not any(cell.strip() for cell in cells):
            return None  # a blank row (",,,," as spreadsheets write them)
        self.rows += 1
        if quoting is not None:
            return self._invalid(self.rows, line, [quoting])
        if self.rows < self._validate_from:
            return BulkRow(self.rows, line, None)
        return self._row(cells, self.rows, line)

    # -- header -------------------------------------------------------------------------------

    def _read_header(self, cells: list[str], line: int, quoting: CsvProblem | None) -> None:
        if quoting is not None:
            self._fatal_problem(quoting.line, quoting.column, f"the header: {quoting.message}")
            return
        self._header = names = [cell.strip().removeprefix("\ufeff") for cell in cells]
        known = {c.lower(): c for c in COLUMNS}
        for index, name in enumerate(names, start=1):
            if not name:
                self._problem(CsvProblem(line, index, "empty column name in the header"))
            elif name in self._columns:
                first = self._columns[name] + 1
                self._problem(CsvProblem(line, index, f"duplicate column {name!r} (also column {first})", name))
            elif name in COLUMNS:
                self._columns[name] = index - 1
            elif name == "requestId":
                self._problem(
                    CsvProblem(
                        line,
                        index,
                        "requestId is derived from the file and the row (bulk-<file hash>-<row>); remove the column",
                        name,
                    )
                )
            else:
                hint = known.get(name.lower()) or next(iter(difflib.get_close_matches(name, COLUMNS, n=1)), None)
                tip = f"; did you mean {hint!r}?" if hint else f"; columns are {', '.join(COLUMNS)}"
                self._problem(CsvProblem(line, index, f"unknown column {name!r}{tip}", name))
        special = BOOLEAN_COLUMNS | {"ccRecipients"}
        self._plain = [(name, index) for name, index in self._columns.items() if name not in special]
        self._special = [(name, index) for name, index in self._columns.items() if name in special]
        if not any(key in self._columns for key in USER_KEYS):
            self._fatal_problem(line, 1, "the header needs a userId, userPrincipalName or email column")

    # -- rows ---------------------------------------------------------------------------------

    def _column(self, name: str) -> int:
        index = self._columns.get(name)
        if index is None:  # a user key error on a file without that column: the first key column
            index = min(self._columns[k] for k in USER_KEYS if k in self._columns)
        return index + 1

    def _row(self, cells: list[str], row: int, line: int) -> BulkRow:
        header = self._header or []
        problems: list[CsvProblem] = []
        if len(cells) != len(header):
            column = len(header) + 1 if len(cells) > len(header) else len(cells) + 1
            what = "too many" if len(cells) > len(header) else "too few"
            problems.append(
                CsvProblem(
                    line,
                    column,
                    f"{what} cells: the row has {len(cells)}, the header has {len(header)} "
                    "(quote a cell that contains the delimiter)",
                    row=row,
                )
            )
            return self._invalid(row, line, problems)
        data: dict[str, Any] = {name: value for name, index in self._plain if (value := cells[index].strip())}
        for name, index in self._special:
            value = cells[index].strip()
            if not value:
                continue
            if name == "ccRecipients":
                data[name] = [part.strip() for part in value.split(LIST_SEPARATOR) if part.strip()]
                continue
            lowered = value.lower()
            if lowered not in _TRUE and lowered not in _FALSE:
                problems.append(
                    CsvProblem(line, index + 1, f"{value!r} is not a boolean: use true or false", name, row)
                )
                continue
            data[name] = lowered in _TRUE
        for key, value in self._defaults.items():
            data.setdefault(key, value)
        request: ResetRequest | None = None
        try:
            request = ResetRequest.model_validate(data, by_alias=True, by_name=False)
        except ValidationError as error:
            for item in describe_validation_error(error):
                name = item["field"].split(".")[0]
                column = self._column(name) if name in self._columns or name == "(request)" else 1
                problems.append(CsvProblem(line, column, item["message"], row=row))
        callback = request.callback_url if request is not None else None
        if callback and self._settings is not None and not callback_allowed(callback, self._settings):
            problems.append(
                CsvProblem(
                    line,
                    self._column("callbackUrl"),
                    "host is not on the callback allowlist (CALLBACK_ALLOWED_HOSTS)",
                    "callbackUrl",
                    row,
                )
            )
        if request is not None and self._settings is not None:
            # The worker judges a bulk row as a queue message: say so now, not one Failed row at a time.
            for refusal in request_refusals(request, self._settings):
                name = refusal.field.split("[")[0]
                problems.append(CsvProblem(line, self._column(name), refusal.message, name, row))
            for need in capabilities.missing(request, self._settings.queue_capabilities, self._settings):
                name = need.field if need.field in self._columns else "(request)"
                message = capabilities.describe(need, "the request queue (QUEUE_CAPABILITIES)")
                problems.append(CsvProblem(line, self._column(name), message, need.field, row))
        if problems:
            return self._invalid(row, line, sorted(problems, key=lambda p: p.column))
        assert request is not None
        if self._sieve is not None:
            self._sieve.add(request)
        elif self._repeat_check is not None and (repeat := self._repeat_check.repeat(request, line)):
            name, first = repeat
            problem = CsvProblem(
                line,
                self._column(name),
                f"the same user as line {first}: a file may reset each guest once (remove one of the two rows)",
                name,
                row,
            )
            return self._invalid(row, line, [problem])
        return BulkRow(row, line, request)

    def _invalid(self, row: int, line: int, problems: list[CsvProblem]) -> BulkRow:
        self.invalid_rows += 1
        header = self._header or []
        # A problem found by position (quoting, cell count) gets the column's name here.
        placed = [CsvProblem(p.line, p.column, p.message, p.field or _name_at(header, p.column), row) for p in problems]
        for problem in placed:
            self._problem(problem)
        return BulkRow(row, line, None, tuple(placed))

    # -- problems -----------------------------------------------------------------------------

    def _problem(self, problem: CsvProblem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        if self._on_problem is not None:
            self._on_problem(problem)

    def _fatal_problem(self, line: int, column: int, message: str) -> None:
        self._problem(CsvProblem(line, column, message + " (reading stopped here)"))
        self._done = True


@dataclass
class ValidationSummary:
    """What a validation pass over a whole file found."""

    sha256: str
    rows: int
    invalid_rows: int
    problem_count: int
    problems: list[CsvProblem] = field(default_factory=list)
    delimiter: str = ","

    @property
    def file_id(self) -> str:
        return file_id_of(self.sha256)

    @property
    def valid(self) -> bool:
        return self.problem_count == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "fileId": self.file_id,
            "rows": self.rows,
            "invalidRows": self.invalid_rows,
            "problemCount": self.problem_count,
            "problems": [p.to_dict() for p in self.problems],
        }


def summary_of(reader: BulkCsvReader) -> ValidationSummary:
    return ValidationSummary(
        reader.sha256, reader.rows, reader.invalid_rows, reader.problem_count, list(reader.problems), reader.delimiter
    )


def validate_chunks(
    read: Callable[[], Iterable[bytes]],
    *,
    settings: Settings | None = None,
    source: str | None = None,
    requested_by: str | None = None,
) -> ValidationSummary:
    """Validate a whole file, ``read()`` giving its bytes in chunks; nothing but the problems is kept.

    The file is read a second time only when a user may be named twice (``shared.bulk.repeats``):
    that pass reports every problem again, in line order, with the repeats among them.
    """

    def run(reader: BulkCsvReader) -> BulkCsvReader:
        for chunk in read():
            for _ in reader.feed(chunk):
                pass
        for _ in reader.close():
            pass
        return reader

    options: dict[str, Any] = {"settings": settings, "source": source, "requested_by": requested_by}
    first = run(BulkCsvReader(**options, find_repeats=True))
    if not first.repeat_candidates:
        return summary_of(first)
    return summary_of(run(BulkCsvReader(**options, repeat_check=RepeatCheck(first.repeat_candidates))))
