"""Command line: ``python -m tools.graph_emulator --port 8765 [--ready-file PATH]``.

Prints the Graph base URL once listening and writes it to ``--ready-file`` so a parent
process (``runner.py``, the local dev host, CI) knows when and where to connect.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from .app import DEFAULT_APP_PERMISSIONS, DEFAULT_USERS_PATH, create_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.graph_emulator", description="Microsoft Graph emulator for local runs and tests."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one")
    parser.add_argument(
        "--users",
        type=Path,
        default=DEFAULT_USERS_PATH,
        help='fixture JSON ({"users": [...]}); reloaded by /_emulator/reset',
    )
    parser.add_argument(
        "--ready-file", type=Path, default=None, help="write the base URL here once the socket is listening"
    )
    parser.add_argument(
        "--journal-limit", type=int, default=200_000, help="keep at most this many journal entries (oldest dropped)"
    )
    parser.add_argument(
        "--app-permissions",
        default=",".join(DEFAULT_APP_PERMISSIONS),
        help="comma-separated Graph application permissions the app holds (default: what the deployment grants); "
        "calls none of them allows get 403 Authorization_RequestDenied",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (off by default: it slows benchmarks)"
    )
    return parser.parse_args(argv)


def _write_ready_file(path: Path, base_url: str) -> None:
    # Write then rename so a polling reader never sees a half-written URL.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(base_url + "\n", encoding="utf-8")
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGINT/SIGTERM, then close the listener cleanly."""
    permissions = tuple(p.strip() for p in args.app_permissions.split(",") if p.strip())
    app = create_app(args.users, journal_limit=args.journal_limit, app_permissions=permissions)
    runner = web.AppRunner(app, access_log=logging.getLogger("aiohttp.access") if args.access_log else None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = runner.addresses[0][1]
    host = args.host if ":" not in args.host else f"[{args.host}]"
    base_url = f"http://{host}:{port}/v1.0"
    print(f"graph emulator listening on {base_url}", flush=True)
    if args.ready_file is not None:
        _write_ready_file(args.ready_file, base_url)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.access_log:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
