"""CLI: `python -m tools.chaos [--requests N] [--seed S ...] [--quick]`; exit 1 when a figure does not hold."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from typing import Any, NoReturn

from tools.chaos.runner import Plan, run_chaos

QUICK_REQUESTS = 120


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.chaos",
        description="Run the app through two local runners under Graph, storage and process faults; "
        "print requests lost, guests invited twice, permanent failures with their code, and drain time.",
    )
    parser.add_argument("--requests", type=int, default=1000, help="requests per run (default 1000)")
    parser.add_argument("--seed", type=int, action="append", help="chaos seed; repeat for several runs (default 1 2)")
    parser.add_argument("--quick", action="store_true", help=f"a short run for CI: {QUICK_REQUESTS} requests, one seed")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (Azurite data, logs)")
    args = parser.parse_args(argv)

    def interrupted(*_: Any) -> NoReturn:
        raise KeyboardInterrupt  # so every process the run started is stopped on the way out

    signal.signal(signal.SIGTERM, interrupted)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    seeds = args.seed or ([1] if args.quick else [1, 2])
    requests = QUICK_REQUESTS if args.quick else args.requests
    failed = False
    for seed in seeds:
        started = time.monotonic()
        print(f"chaos run: {requests} requests, seed {seed}", flush=True)
        baseline, chaos = asyncio.run(run_chaos(Plan(requests=requests, seed=seed), keep=args.keep))
        print(baseline.report(), flush=True)
        print(chaos.report(), flush=True)
        problems = baseline.problems() + chaos.chaos_problems()
        for problem in problems:
            print(f"FAILED: {problem}", flush=True)
        print(f"seed {seed}: {'FAILED' if problems else 'held'} in {time.monotonic() - started:.0f} s", flush=True)
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
