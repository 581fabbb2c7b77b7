"""`python -m bench` (and `make bench`): every benchmark in turn, each printing its table."""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCHMARKS = [
    "intake",
    "sync_throughput",
    "debounce",
    "latency",
    "reconcile",
    "memory",
    "redis_memory",
    "scale_out",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmarks in turn, each printing its table (bench/README.md has "
        "the figures and targets); each is also `python -m bench.<name>`, with options of its "
        "own (`--help`).",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    names = parser.parse_args(argv).names or BENCHMARKS
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; there are {', '.join(BENCHMARKS)}")
    failed = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}"]) != 0:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
