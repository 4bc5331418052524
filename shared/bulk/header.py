"""The header line of a bulk CSV file: which cell holds which field of the contract.

Columns are named like the contract's fields, in any order; each may appear once. requestId is
not a column: it is derived from the file and the row.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from shared.bulk.problems import CsvProblem

# Columns a file may have, in contract order.
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
_BY_LOWER = {c.lower(): c for c in COLUMNS}


@dataclass(frozen=True, slots=True)
class HeaderMap:
    """The header's names, cell by cell, and where each known column is."""

    names: tuple[str, ...]
    index: dict[str, int]  # each known column's cell index (0 = first cell)

    def column(self, name: str) -> int:
        """The column (1 = first) of ``name``; for a user key the file lacks, its first user key column."""
        index = self.index.get(name)
        if index is None:  # "(request)", the row as a whole (no user key, or two): the first user key column
            index = min(self.index[k] for k in USER_KEYS if k in self.index)
        return index + 1

    def name_at(self, column: int) -> str | None:
        """The header name over ``column`` (1 = first), if the header reaches that far."""
        return self.names[column - 1] if 0 < column <= len(self.names) else None


def map_header(cells: list[str], line: int) -> tuple[HeaderMap, list[CsvProblem], CsvProblem | None]:
    """The map of a header line, its problems, and the one that makes the file unreadable, if any."""
    names = tuple(cell.strip().removeprefix("\ufeff") for cell in cells)
    index: dict[str, int] = {}
    problems: list[CsvProblem] = []
    for column, name in enumerate(names, start=1):
        if not name:
            problems.append(CsvProblem(line, column, "empty column name in the header"))
        elif name in index:
            first = index[name] + 1
            problems.append(CsvProblem(line, column, f"duplicate column {name!r} (also column {first})", name))
        elif name in COLUMNS:
            index[name] = column - 1
        elif name == "requestId":
            problems.append(
                CsvProblem(
                    line,
                    column,
                    "requestId is derived from the file and the row (bulk-<file hash>-<row>); remove the column",
                    name,
                )
            )
        else:
            hint = _BY_LOWER.get(name.lower()) or next(iter(difflib.get_close_matches(name, COLUMNS, n=1)), None)
            tip = f"; did you mean {hint!r}?" if hint else f"; columns are {', '.join(COLUMNS)}"
            problems.append(CsvProblem(line, column, f"unknown column {name!r}{tip}", name))
    fatal = None
    if not any(key in index for key in USER_KEYS):
        fatal = CsvProblem(line, 1, "the header needs a userId, userPrincipalName or email column")
    return HeaderMap(names, index), problems, fatal
