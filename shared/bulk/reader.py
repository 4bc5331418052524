"""Bulk CSV files: a streaming reader that turns rows into validated reset requests.

One row per request, columns named like the contract's fields. The reader composes three parts:
the scanner (``scan``: bytes to records, quotes, delimiter, blank lines), the header map
(``header``) and the row validator (``rows``), and adds the one-reset-per-guest check
(``repeats``). Every problem is a ``CsvProblem`` with the line and the column (cell number,
1 = first column, as a spreadsheet counts them). Bytes go in by chunks and rows come out one by
one, so a file of any size goes through the same small amount of memory; the SHA-256 of the
bytes is computed on the way, because requestIds are derived from it (``bulk-<16 hex>-<row>``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.bulk.header import HeaderMap, map_header
from shared.bulk.problems import CsvProblem
from shared.bulk.repeats import RepeatCheck, RepeatSieve
from shared.bulk.rows import RowValidator
from shared.bulk.scan import CsvScanner, Record
from shared.platform.settings import Settings
from shared.reset.contract import ResetRequest

__all__ = [
    "MAX_PROBLEMS",
    "BulkCsvReader",
    "BulkRow",
    "CsvProblem",
    "ValidationSummary",
    "file_id_of",
    "request_id_for",
    "summary_of",
    "validate_chunks",
]

MAX_PROBLEMS = 1000  # kept for display; every problem is still counted and passed to on_problem


def file_id_of(sha256_hex: str) -> str:
    """The short id of a file's content that its requestIds and progress entity carry."""
    return sha256_hex[:16]


def request_id_for(file_id: str, row: int) -> str:
    """Deterministic: the same file and row always give the same requestId."""
    return f"bulk-{file_id}-{row}"


@dataclass(frozen=True, slots=True)
class BulkRow:
    """One data row: its request when valid, else its problems (both empty when not validated)."""

    row: int
    line: int
    request: ResetRequest | None
    problems: tuple[CsvProblem, ...] = ()


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
        self._settings, self._source, self._requested_by = settings, source, requested_by
        self._sieve = RepeatSieve() if find_repeats else None
        self._repeat_check = repeat_check
        self._validate_from = validate_from
        self._on_problem = on_problem
        self._hash = hashlib.sha256()
        self._scanner = CsvScanner()
        self._header: HeaderMap | None = None
        self._validator: RowValidator | None = None  # built once the header is read
        self._done = False
        self.rows = 0
        self.invalid_rows = 0
        self.problem_count = 0
        self.problems: list[CsvProblem] = []

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
        return self._header.names if self._header is not None else ()

    @property
    def delimiter(self) -> Literal[",", ";"]:
        return self._scanner.delimiter

    @property
    def repeat_candidates(self) -> set[str]:
        """Keys of users that valid rows may name more than once (``find_repeats``)."""
        return self._sieve.candidates if self._sieve is not None else set()

    # -- input ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> Iterator[BulkRow]:
        """Rows completed by ``data``; a row cut by the end of ``data`` comes with the next call."""
        self._hash.update(data)
        if not self._done:
            yield from self._rows(self._scanner.feed(data))

    def close(self) -> Iterator[BulkRow]:
        """Rows left at the end of the input, then the checks that need the whole file."""
        if not self._done:
            yield from self._rows(self._scanner.close())
        if self._header is None and not self._done:
            self._problem(
                CsvProblem(1, 1, "the file is empty: the first line must be a header such as userId,newEmail,ticketId")
            )
        elif self.rows == 0 and not self._done:
            self._problem(CsvProblem(self._scanner.line + 1, 1, "the file has a header but no rows"))
        self._done = True

    def _rows(self, records: Iterator[Record]) -> Iterator[BulkRow]:
        """The header from the first record, then a row from each; the scanner's fatal problem last."""
        for line, cells, quoting in records:
            if self._header is None:
                self._read_header(cells, line, quoting)
                if self._done:
                    return
                continue
            self.rows += 1
            if quoting is not None:
                yield self._invalid(self.rows, line, [quoting])
            elif self.rows < self._validate_from:
                yield BulkRow(self.rows, line, None)
            else:
                yield self._row(cells, self.rows, line)
        if self._scanner.fatal is not None:
            self._fatal_problem(self._scanner.fatal)

    def _read_header(self, cells: list[str], line: int, quoting: CsvProblem | None) -> None:
        if quoting is not None:
            self._fatal_problem(CsvProblem(quoting.line, quoting.column, f"the header: {quoting.message}"))
            return
        self._header, problems, fatal = map_header(cells, line)
        for problem in problems:
            self._problem(problem)
        if fatal is not None:
            self._fatal_problem(fatal)
            return
        self._validator = RowValidator(
            self._header, settings=self._settings, source=self._source, requested_by=self._requested_by
        )

    # -- rows ---------------------------------------------------------------------------------

    def _row(self, cells: list[str], row: int, line: int) -> BulkRow:
        assert self._validator is not None and self._header is not None
        request, problems = self._validator.validate(cells, row, line)
        if request is None:
            return self._invalid(row, line, problems)
        if self._sieve is not None:
            self._sieve.add(request)
        elif self._repeat_check is not None and (repeat := self._repeat_check.repeat(request, line)):
            name, first = repeat
            problem = CsvProblem(
                line,
                self._header.column(name),
                f"the same user as line {first}: a file may reset each guest once (remove one of the two rows)",
                name,
                row,
            )
            return self._invalid(row, line, [problem])
        return BulkRow(row, line, request)

    def _invalid(self, row: int, line: int, problems: list[CsvProblem]) -> BulkRow:
        assert self._header is not None
        self.invalid_rows += 1
        name_at = self._header.name_at
        # A problem found by position (quoting, cell count) gets the column's name here.
        placed = [CsvProblem(p.line, p.column, p.message, p.field or name_at(p.column), row) for p in problems]
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

    def _fatal_problem(self, problem: CsvProblem) -> None:
        self._problem(CsvProblem(problem.line, problem.column, problem.message + " (reading stopped here)"))
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
