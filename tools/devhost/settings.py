"""App settings for the devhost: process environment over local.settings.json, %TOKEN% resolution."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path

log = logging.getLogger("devhost")

_TOKEN = re.compile(r"%([^%]+)%")


class StartupError(RuntimeError):
    """The app or its configuration cannot be hosted; the message says what to fix."""


def load_settings(app_dir: Path, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put local.settings.json "Values" into the environment (the environment wins) and return it.

    The app reads os.environ, so the values must be there before function_app is imported.
    """
    env = os.environ if environ is None else environ
    path = app_dir / "local.settings.json"
    if not path.exists():
        sample = app_dir / "local.settings.sample.json"
        if sample.exists():
            log.info("local.settings.json not found; using %s", sample.name)
            path = sample
        else:
            log.info("no local.settings.json in %s; using the process environment only", app_dir)
            return dict(env)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot read {path}: {exc}") from exc
    values = document.get("Values") or {}
    if not isinstance(values, dict):
        raise StartupError(f'{path}: "Values" must be an object')
    for key, value in values.items():
        if key not in env:
            # Core Tools wants strings; render other JSON scalars the way they were written.
            env[key] = value if isinstance(value, str) else json.dumps(value)
    return dict(env)


def resolve_tokens(value: str, settings: Mapping[str, str], *, where: str) -> str:
    """Replace every %NAME% in a binding string with the setting NAME, as the host does."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            raise StartupError(f"{where}: app setting '{name}' (from '%{name}%') is not set")
        return settings[name]

    return _TOKEN.sub(substitute, value)
