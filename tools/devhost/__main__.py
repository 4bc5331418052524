"""CLI: `python -m tools.devhost [--app-dir DIR] [--port P] [--ready-file F] [--metrics-file F]` (more: --help)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from tools.devhost.host import serve
from tools.devhost.settings import StartupError

log = logging.getLogger("devhost")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.devhost",
        description="Run function_app.py locally against Azurite with the Functions host's queue semantics.",
    )
    parser.add_argument("--app-dir", type=Path, default=Path.cwd(), help="folder holding function_app.py")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7071, help="HTTP port; 0 picks a free one (default 7071)")
    parser.add_argument(
        "--max-polling-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="cap on host.json maxPollingInterval, for local speed (default 1.0)",
    )
    parser.add_argument("--ready-file", type=Path, help="write the base URL here once serving")
    parser.add_argument(
        "--metrics-file",
        type=Path,
        help="record the app's OpenTelemetry metrics in memory and write them here as JSON on exit",
    )
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(
        args.app_dir,
        host=args.host,
        port=args.port,
        max_polling_interval=args.max_polling_interval,
        stop_event=stop,
        ready_file=args.ready_file,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The SDKs log every HTTP request at INFO; keep the log to one line per invocation.
    for noisy in ("azure", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    reader = None
    if args.metrics_file:
        from tools import metrics

        # Before the app is loaded, as the Functions worker configures Azure Monitor before it does.
        reader = metrics.install_reader()
    try:
        asyncio.run(_run(args))
    except StartupError as exc:
        log.error("devhost cannot start: %s", exc)
        return 2
    finally:
        if reader is not None:
            from tools import metrics

            metrics.write(reader, args.metrics_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
