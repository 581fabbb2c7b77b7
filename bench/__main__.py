"""`python -m bench` (and `make bench`): every benchmark in turn, each printing its table."""

from __future__ import annotations

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


def main() -> None:
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== bench.{name} ===", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}"]) != 0:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
