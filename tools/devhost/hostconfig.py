"""host.json plus AzureFunctionsJobHost__* overrides, reduced to the queue and HTTP options the devhost uses."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.devhost.settings import StartupError

OVERRIDE_PREFIX = "azurefunctionsjobhost__"
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,7}))?)?$")
# The extension's floor for polling (QueuePollingIntervals.Minimum), in seconds.
MIN_POLLING_INTERVAL = 0.1


@dataclass(frozen=True)
class QueuesOptions:
    """The Storage Queues extension options, with the extension's defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    max_polling_interval: float = 60.0
    message_encoding: str = "base64"


@dataclass(frozen=True)
class HostConfig:
    """What the devhost takes from host.json."""

    queues: QueuesOptions
    route_prefix: str


def parse_timespan(value: object, *, key: str) -> float:
    """Parse a .NET TimeSpan string ("[d.]hh:mm[:ss[.fffffff]]") into seconds."""
    match = _TIMESPAN.match(str(value).strip())
    if not match:
        raise StartupError(f"host.json {key}: {value!r} is not a TimeSpan like '00:00:30'")
    days, hours, minutes, seconds, fraction = match.groups()
    total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0)
    return total + (float(f"0.{fraction}") if fraction else 0.0)


def apply_overrides(document: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay AzureFunctionsJobHost__a__b__c settings onto host.json path a.b.c (keys case-insensitive)."""
    for name, value in environ.items():
        if not name.lower().startswith(OVERRIDE_PREFIX):
            continue
        path = [part for part in name[len(OVERRIDE_PREFIX) :].split("__") if part]
        node = document
        for index, part in enumerate(path):
            key = next((k for k in node if k.lower() == part.lower()), part)
            if index == len(path) - 1:
                node[key] = value
            else:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = node[key] = {}
                node = child
    return document


def _section(document: Mapping[str, Any], *path: str) -> dict[str, Any]:
    node: Any = document
    for part in path:
        if not isinstance(node, Mapping):
            return {}
        node = next((v for k, v in node.items() if k.lower() == part.lower()), {})
    return {k.lower(): v for k, v in node.items()} if isinstance(node, Mapping) else {}


def _int(section: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    raw = section.get(key.lower(), default)
    try:
        value = int(str(raw).strip())
    except ValueError as exc:
        raise StartupError(f"host.json extensions.queues.{key}: {raw!r} is not an integer") from exc
    if not low <= value <= high:
        raise StartupError(f"host.json extensions.queues.{key}: {value} is outside {low}..{high}")
    return value


def parse_queues(section: Mapping[str, Any]) -> QueuesOptions:
    """Read extensions.queues (keys already lower-cased), filling the extension's defaults."""
    batch = _int(section, "batchSize", 16, 1, 32)
    # Unset newBatchThreshold is batchSize/2 per vCPU; the devhost models one vCPU.
    threshold = _int(section, "newBatchThreshold", batch // 2, 0, 10_000)
    encoding = str(section.get("messageencoding", "base64")).strip().lower()
    if encoding not in ("base64", "none"):
        raise StartupError(f"host.json extensions.queues.messageEncoding: {encoding!r} is not base64 or none")
    polling = parse_timespan(section.get("maxpollinginterval", "00:01:00"), key="maxPollingInterval")
    return QueuesOptions(
        batch_size=batch,
        new_batch_threshold=threshold,
        max_dequeue_count=_int(section, "maxDequeueCount", 5, 1, 1_000_000),
        visibility_timeout=parse_timespan(section.get("visibilitytimeout", "00:00:00"), key="visibilityTimeout"),
        max_polling_interval=max(polling, MIN_POLLING_INTERVAL),
        message_encoding=encoding,
    )


def load_host_config(app_dir: Path, environ: Mapping[str, str]) -> HostConfig:
    """Read app_dir/host.json (defaults if absent) with the environment's overrides applied."""
    path = app_dir / "host.json"
    document: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot read {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise StartupError(f"{path} must hold a JSON object")
        document = loaded
    document = apply_overrides(document, environ)
    http = _section(document, "extensions", "http")
    prefix = str(http.get("routeprefix", "api")).strip("/")
    return HostConfig(queues=parse_queues(_section(document, "extensions", "queues")), route_prefix=prefix)
