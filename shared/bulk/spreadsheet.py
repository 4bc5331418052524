"""CSV cells that a spreadsheet shows as text and never runs as a formula.

Reports and error lists are opened in Excel by admins, and some cells carry text from a CSV file
or a request (column names, ticket ids, requestedBy). A cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return would be taken as a formula (CSV injection, OWASP), so
such a cell gets a leading apostrophe, which spreadsheets show as "text follows".
"""

from __future__ import annotations

from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """A value ready for csv.writer: empty for None, true/false for booleans, formulas defused."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
