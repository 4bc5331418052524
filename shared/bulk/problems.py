"""What is wrong in a bulk CSV file, at the line and column (cell) a person can find it.

The scanner, the header map and the row validator each report ``CsvProblem``; the reader counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
