"""Bytes to CSV records: UTF-8 decoding, physical lines, and quoted cells that span lines.

The first line that is not blank is the header and decides the delimiter (``;`` when it holds
more ``;`` than ``,``); later blank lines, also ``,,,`` ones as spreadsheets write them, are
skipped. A quoting mistake spoils only its record; text that is not UTF-8, a line over 256 KB or
a quote never closed stops the scan (``fatal``).
"""

from __future__ import annotations

import codecs
import csv
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, TypeAlias

from shared.bulk.problems import CsvProblem

MAX_RECORD_CHARS = 64 * 1024  # a row is a queue message: contract v1 allows 64 KB
_FEED_BYTES = 64 * 1024  # records are produced per slice of this size, not per download chunk
_UTF8_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)

# The line a record starts on, its cells, and the quoting problem that spoiled it (then no cells).
Record: TypeAlias = tuple[int, list[str], CsvProblem | None]


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


class CsvScanner:
    """Feed bytes with ``feed`` (a generator: exhaust it before the next call), then ``close``.

    The first record is the header. After a ``fatal`` problem no more records come out.
    """

    def __init__(self) -> None:
        self.line = 0  # physical lines read
        self.delimiter: Literal[",", ";"] = ","
        self.fatal: CsvProblem | None = None
        self._tail = b""  # bytes after the last newline seen
        self._started = False
        self._header_seen = False
        self._blank = " \t\r\n,"  # what a line that holds no cell consists of
        self._feed = _LineFeed()
        self._reader: Iterator[list[str]] | None = None
        self._record: list[str] = []  # lines of a record whose quoted cell spans lines
        self._record_chars = 0
        self._record_scan = _Scan()
        self._record_line = 0

    def feed(self, data: bytes) -> Iterator[Record]:
        """Records completed by ``data``; a record cut by the end of ``data`` comes with the next call."""
        for start in range(0, len(data), _FEED_BYTES):
            if self.fatal is not None:
                return
            block = self._tail + data[start : start + _FEED_BYTES]
            cut = block.rfind(b"\n") + 1
            self._tail = block[cut:]
            if len(self._tail) > MAX_RECORD_CHARS * 4:
                self._stop(self.line + 1, 1, "a line longer than 256 KB: not a CSV file of reset requests")
            elif cut:
                yield from self._block(block[:cut])

    def close(self) -> Iterator[Record]:
        """The record on a last line without a newline; a quote still open is fatal."""
        if self._tail and self.fatal is None:
            tail, self._tail = self._tail, b""
            yield from self._block(tail)
        if self._record and self.fatal is None:
            scan = self._record_scan
            self._stop(scan.open_line, scan.open_column, "the quote that opens this cell is never closed")

    def _stop(self, line: int, column: int, message: str) -> None:
        self.fatal = CsvProblem(line, column, message)

    def _block(self, block: bytes) -> Iterator[Record]:
        if not self._started:
            self._started = True
            if block.startswith(_UTF16_BOMS):
                self._stop(1, 1, "the file is UTF-16 text: save it as 'CSV UTF-8'")
                return
            block = block.removeprefix(_UTF8_BOM)
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as error:
            line = self.line + block.count(b"\n", 0, error.start) + 1
            column = block[block.rfind(b"\n", 0, error.start) + 1 : error.start].count(self.delimiter.encode()) + 1
            self._stop(line, column, "the line is not UTF-8 text: save the file as 'CSV UTF-8'")
            return
        parts = text.split("\n")
        last = parts.pop()  # "" when the block ends with a newline (always, but at the very end)
        line_done = self._physical_line
        for part in parts:
            record = line_done(part + "\n")
            if record is not None:
                yield record
            if self.fatal is not None:
                return
        if last:
            record = line_done(last)
            if record is not None:
                yield record

    def _physical_line(self, line: str) -> Record | None:
        """The record this line completes, if any (plain functions, not generators: this runs per line)."""
        self.line += 1
        if self._record:  # inside a quoted cell that spans lines
            self._record.append(line)
            self._record_chars += len(line)
            if '"' in line:
                _scan(line, self.line, self.delimiter, self._record_scan)
            if self._record_chars > MAX_RECORD_CHARS:
                scan = self._record_scan
                self._stop(
                    scan.open_line,
                    scan.open_column,
                    "a quoted cell runs on for more than 64 KB: is its closing quote missing?",
                )
                return None
            if self._record_scan.error is None and self._record_scan.state == _QUOTED:
                return None
            lines, self._record = self._record, []
            return self._record_done(lines, self._record_line, self._record_scan.error)
        if not self._header_seen:
            if not line.strip():
                return None
            self.delimiter = ";" if line.count(";") > line.count(",") else ","
            self._reader = csv.reader(self._feed, delimiter=self.delimiter, skipinitialspace=True)
            self._blank = " \t\r\n" + self.delimiter
        if '"' in line:
            scan = _Scan()
            _scan(line, self.line, self.delimiter, scan)
            if scan.error is None and scan.state == _QUOTED:
                self._record, self._record_chars, self._record_scan = [line], len(line), scan
                self._record_line = self.line
                return None
            return self._record_done([line], self.line, scan.error)
        # Without a quote, a CSV line is its cells joined by the delimiter: str.split gives what
        # csv.reader would, several times faster; lines with quotes go through csv.reader.
        if not self._header_seen or "\r" in line[:-2]:
            return self._record_done([line], self.line, None)
        if not line.strip(self._blank):
            return None  # a blank line, or one of only delimiters as spreadsheets write them
        return self.line, line.rstrip("\r\n").split(self.delimiter), None

    def _record_done(self, lines: list[str], line: int, quoting: CsvProblem | None) -> Record | None:
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
        if not self._header_seen:
            self._header_seen = True
            return line, cells, quoting
        if quoting is None and not any(cell.strip() for cell in cells):
            return None  # a blank row (",,,," as spreadsheets write them)
        return line, cells, quoting
