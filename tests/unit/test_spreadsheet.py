"""Report cells are shown as text by a spreadsheet, never run as formulas."""

from __future__ import annotations

import csv
import io

import pytest

from shared.bulk.spreadsheet import safe_cell


@pytest.mark.parametrize(
    "text", ['=HYPERLINK("http://evil.example","open")', "+1+2", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1"]
)
def test_text_a_spreadsheet_would_run_gets_a_leading_apostrophe(text: str) -> None:
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("INC-42", "INC-42"),
        ("bulk-0123456789abcdef-7", "bulk-0123456789abcdef-7"),
        ("a=b", "a=b"),
        (None, ""),
        (True, "true"),
        (False, "false"),
        (-3, -3),
        (7, 7),
    ],
)
def test_ordinary_values_are_kept(value: object, cell: object) -> None:
    assert safe_cell(value) == cell


def test_a_defused_cell_reads_back_as_written() -> None:
    out = io.StringIO()
    csv.writer(out).writerow([safe_cell("=1+1"), safe_cell("T-1")])
    assert next(csv.reader(io.StringIO(out.getvalue()))) == ["'=1+1", "T-1"]
