"""The admin command line explains itself: an example per command, exit codes, both entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.cli import main as cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", ["submit", "status", "report", "poison", "breaker", "reset"])
async def test_help_of_each_command_shows_its_examples_and_the_exit_codes(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli.run([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"guest-reset {command} " in text
    assert "exit codes:" in text and "3  storage or the API is unreachable" in text


async def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli.run(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(command in text for command in ("submit", "status", "report", "poison", "breaker", "reset"))


def test_runs_as_a_module_and_as_the_console_script() -> None:
    """``python -m tools.cli.main`` and the ``guest-reset`` script that ``pip install`` puts beside Python."""
    module = subprocess.run(
        [sys.executable, "-m", "tools.cli.main", "submit", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert module.returncode == 0 and "guest-reset submit guests.csv" in module.stdout
    script = Path(sys.executable).with_name("guest-reset")
    assert script.exists() or shutil.which("guest-reset"), "pip install -e . installs the guest-reset script"
    console = subprocess.run(
        [str(script if script.exists() else "guest-reset"), "reset", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert console.returncode == 0 and "--new-email" in console.stdout and "--dry-run" in console.stdout
