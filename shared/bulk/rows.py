"""One data row of a bulk CSV file: its cells checked and turned into a reset request.

Cells are stripped and an empty cell is a field left out. Booleans take spreadsheet spellings,
``ccRecipients`` is split on ``|`` (``;`` may be the delimiter), the contract's own validation
(``shared.reset.contract``) checks the rest, and every problem names its column.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared.bulk.header import HeaderMap
from shared.bulk.problems import CsvProblem
from shared.platform.settings import Settings
from shared.reset import capabilities
from shared.reset.callbacks import callback_allowed
from shared.reset.contract import ResetRequest, describe_validation_error
from shared.reset.policy import request_refusals

BOOLEAN_COLUMNS = frozenset({"sendInvitationMessage", "dryRun"})
LIST_SEPARATOR = "|"  # inside a ccRecipients cell; ";" may be the delimiter
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_CONVERTED = BOOLEAN_COLUMNS | {"ccRecipients"}


class RowValidator:
    """Checks the data rows under one header; ``source`` and ``requested_by`` fill empty cells.

    With ``settings``, a callbackUrl must be on the app's allowlist, as the HTTP API requires, and
    the row must keep to the request rules and to QUEUE_CAPABILITIES, as the worker requires.
    """

    def __init__(
        self,
        header: HeaderMap,
        *,
        settings: Settings | None = None,
        source: str | None = None,
        requested_by: str | None = None,
    ) -> None:
        self._header = header
        self._width = len(header.names)
        self._plain = [(name, index) for name, index in header.index.items() if name not in _CONVERTED]
        self._converted = [(name, index) for name, index in header.index.items() if name in _CONVERTED]
        self._defaults = {k: v[:256] for k, v in (("source", source), ("requestedBy", requested_by)) if v}
        self._settings = settings

    def validate(self, cells: list[str], row: int, line: int) -> tuple[ResetRequest | None, list[CsvProblem]]:
        """The row's request and no problems, or no request and its problems in column order."""
        width = self._width
        if len(cells) != width:
            column = width + 1 if len(cells) > width else len(cells) + 1
            what = "too many" if len(cells) > width else "too few"
            message = f"{what} cells: the row has {len(cells)}, the header has {width}"
            message += " (quote a cell that contains the delimiter)"
            return None, [CsvProblem(line, column, message, row=row)]
        problems: list[CsvProblem] = []
        data: dict[str, Any] = {name: value for name, index in self._plain if (value := cells[index].strip())}
        for name, index in self._converted:
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
                column = self._header.column(name) if name in self._header.index or name == "(request)" else 1
                problems.append(CsvProblem(line, column, item["message"], row=row))
        callback = request.callback_url if request is not None else None
        if callback and self._settings is not None and not callback_allowed(callback, self._settings):
            problems.append(
                CsvProblem(
                    line,
                    self._header.column("callbackUrl"),
                    "host is not on the callback allowlist (CALLBACK_ALLOWED_HOSTS)",
                    "callbackUrl",
                    row,
                )
            )
        if request is not None and self._settings is not None:
            # The worker judges a bulk row as a queue message: say so now, not one Failed row at a time.
            for refusal in request_refusals(request, self._settings):
                name = refusal.field.split("[")[0]
                problems.append(CsvProblem(line, self._header.column(name), refusal.message, name, row))
            for need in capabilities.missing(request, self._settings.queue_capabilities, self._settings):
                name = need.field if need.field in self._header.index else "(request)"
                message = capabilities.describe(need, "the request queue (QUEUE_CAPABILITIES)")
                problems.append(CsvProblem(line, self._header.column(name), message, need.field, row))
        if problems:
            return None, sorted(problems, key=lambda p: p.column)
        return request, problems
