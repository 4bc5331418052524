"""What the command line prints: one JSON document with ``--json``, short text otherwise, and an
optional progress bar on stderr.

The bar uses ``rich`` when it is installed (``pip install -e .[cli]``, or the dev requirements)
and stderr is a terminal; without it the commands work the same, with no bar. ``rich`` stays
out of requirements.txt because that file is what Azure installs for the function app.
"""

from __future__ import annotations

import json
import sys
from types import TracebackType
from typing import Any, TextIO


class ProgressBar:
    """A progress bar that may be nothing at all: every method is safe to call either way."""

    def __init__(self, description: str, *, enabled: bool, stream: TextIO) -> None:
        self._description = description
        self._bar: Any = None
        self._task: Any = None
        if not enabled or not stream.isatty():
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        except ImportError:
            return
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )

    def __enter__(self) -> ProgressBar:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start(self, total: int, _file_rows: int = 0) -> None:
        if self._bar is not None and self._task is None:
            self._task = self._bar.add_task(self._description, total=total)

    def advance(self, count: int = 1) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, count)

    def count(self, completed: int, total: int | None = None) -> None:
        """Progress whose total may be unknown (a directory listing): the count grows, the bar pulses."""
        if self._bar is None:
            return
        if self._task is None:
            self._task = self._bar.add_task(self._description, total=total)
        self._bar.update(self._task, completed=completed, total=total)

    def update(self, completed: int, total: int) -> None:
        if self._bar is None:
            return
        if self._task is None:
            self._task = self._bar.add_task(self._description, total=total)
        self._bar.update(self._task, completed=completed, total=total)


class Output:
    """Where results and errors go; in JSON mode stdout carries exactly one JSON document."""

    def __init__(
        self, *, as_json: bool, progress: bool, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.as_json = as_json
        self.show_progress = progress
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def result(self, document: dict[str, Any], text: str) -> None:
        """The command's answer: ``document`` as JSON, or ``text`` for people."""
        if self.as_json:
            self.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        elif text:
            self.stdout.write(text.rstrip("\n") + "\n")

    def note(self, text: str) -> None:
        """A side remark for people (stderr, never in JSON mode's stdout)."""
        if not self.as_json:
            self.stderr.write(text.rstrip("\n") + "\n")

    def error(self, code: str, message: str, exit_code: int, **details: Any) -> int:
        if self.as_json:
            body = {"error": {"code": code, "message": message, "exitCode": exit_code, **details}}
            self.stdout.write(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        else:
            self.stderr.write(f"error ({code}): {message}\n")
        return exit_code

    def progress(self, description: str) -> ProgressBar:
        return ProgressBar(description, enabled=self.show_progress and not self.as_json, stream=self.stderr)
