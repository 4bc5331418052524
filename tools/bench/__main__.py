"""``python -m tools.bench [cpu|throughput|loop|import|intake|bulk|fleet|find|all] [--quick] [--strict] [--profile]
[--validation-only]``.

Prints one table per benchmark (figures, baseline, ratio, goal, PASS/FAIL). The exit code is
non-zero only with ``--strict`` and a failed goal, so a noisy machine does not break CI unless
asked to. The graph benchmarks share one emulator process, reset before each of them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from tools.bench.common import BenchResult, print_result, quiet_logging
from tools.graph_emulator.runner import EmulatorHandle, running_emulator

BENCHMARKS = ("cpu", "throughput", "loop", "import", "intake", "bulk", "fleet", "find")
NO_EMULATOR = {"import", "bulk"}  # these need no Graph emulator


def run_one(name: str, emulator: EmulatorHandle | None, args: argparse.Namespace) -> BenchResult:
    """Run one benchmark by name; the graph benchmarks need the running emulator."""
    if name == "import":
        from tools.bench import import_time

        return import_time.run(quick=args.quick)
    if name == "bulk":
        from tools.bench import bulk

        return bulk.run_validation() if args.validation_only else bulk.run(quick=args.quick)
    if emulator is None:
        raise ValueError(f"benchmark {name} needs the Graph emulator")
    if name == "cpu":
        from tools.bench import cpu

        return cpu.run(emulator, quick=args.quick, profile=args.profile)
    if name == "intake":
        from tools.bench import intake

        return intake.run(emulator, quick=args.quick)
    if name == "fleet":
        from tools.bench import fleet

        return fleet.run(emulator, quick=args.quick)
    if name == "find":
        from tools.bench import find

        return find.run(emulator, quick=args.quick)
    if name == "throughput":
        from tools.bench import throughput

        return throughput.run(emulator, quick=args.quick)
    from tools.bench import loop

    return loop.run(emulator, quick=args.quick)


def stolen_seconds() -> float:
    """CPU time this virtual machine's host has taken from it so far (``steal`` in /proc/stat; 0 elsewhere)."""
    try:
        first = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()
        return int(first[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    parser.add_argument(
        "benchmark", nargs="*", default=["all"], choices=(*BENCHMARKS, "all"), help="one or more, or all (default)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs for a CI smoke test (~1 min)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is not met")
    parser.add_argument("--profile", action="store_true", help="cpu: also print a cProfile of the SDK path")
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="bulk: only the validation speed and memory goals (no Azurite; for work on the CSV reader)",
    )
    args = parser.parse_args(argv)
    selected = BENCHMARKS if "all" in args.benchmark else tuple(args.benchmark)

    results: list[BenchResult] = []
    started = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(quiet_logging())
        emulator = None
        if any(name not in NO_EMULATOR for name in selected):
            emulator = stack.enter_context(running_emulator())
        for name in selected:
            stolen, began = stolen_seconds(), time.perf_counter()
            result = run_one(name, emulator, args)
            stolen, took = stolen_seconds() - stolen, time.perf_counter() - began
            if stolen >= 0.5:  # a shared host slows every ratio measured meanwhile, unevenly
                result.notes.append(
                    f"machine: the virtual machine's host took {stolen:.1f} s of CPU from it during these "
                    f"{took:.0f} s (steal in /proc/stat); a ratio that missed its goal may be the host's doing."
                )
            print_result(result)
            results.append(result)

    summary = ", ".join(f"{r.name} {'PASS' if r.passed else 'FAIL'}" for r in results)
    print(f"{summary}  ({time.perf_counter() - started:.0f} s{', quick' if args.quick else ''})")
    return 1 if args.strict and not all(r.passed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
