"""Memory: the worker's resident memory after 10,000 and after 100,000 events.

Events for 10,000 users are accepted in rounds of 10,000 (each round changes every user once)
and the worker syncs them; its RSS is read from /proc after the first round and after the
last. Target: the two differ by less than 10 %.

    python -m bench.memory [--users N] [--rounds R]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx
import redis

from bench.harness import SANDBOX_KEY, environment, start_sandbox, table, wait_until
from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.pending import PendingStore


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    rows = []
    with environment() as (processes, redis_url):
        sandbox = start_sandbox(processes, customers=args.users)
        env = {
            "REDIS_URL": redis_url,
            "RECUR_API_URL": sandbox,
            "RECUR_SECRET_KEY": SANDBOX_KEY,
            "LOG_LEVEL": "WARNING",
            "DEBOUNCE_WINDOW_SECONDS": "0",
            "RATE_LIMIT_PER_SECOND": "100000",
            "RATE_LIMIT_BURST": "100000",
        }
        processes.start("worker", [sys.executable, "-m", "sync_worker", "worker"], env)
        worker_pid = processes.running[-1].pid
        client = redis.Redis.from_url(redis_url)
        wait_until(lambda: client.keys(keys.WORKER_HEARTBEAT + "*"), timeout=60, what="worker")
        pending = PendingStore(
            client, window_seconds=0, max_wait_seconds=1, dedup_ttl_seconds=600, lease_seconds=120
        )
        started = time.perf_counter()
        for round_number in range(1, args.rounds + 1):
            now_ms = int(time.time() * 1000)
            for user in range(1, args.users + 1):
                pending.accept(
                    UserEvent(
                        f"evt_{round_number}_{user}",
                        "user.updated",
                        f"user_{user}",
                        now_ms,
                        {"name": f"user_{user} round {round_number}"},
                    )
                )
            wait_until(
                lambda: not client.zcard(keys.DUE) and not client.zcard(keys.INFLIGHT),
                timeout=900,
                what=f"round {round_number}",
            )
            if round_number in (1, args.rounds):
                rows.append(
                    [
                        round_number * args.users,
                        rss_mib(worker_pid),
                        time.perf_counter() - started,
                    ]
                )
        patches = len(
            httpx.get(
                sandbox + "/_sandbox/requests", params={"method": "PATCH"}, timeout=120
            ).json()["data"]
        )
    growth = (rows[-1][1] - rows[0][1]) / rows[0][1] * 100
    print(
        table(
            f"Worker memory ({patches:,} PATCHes sent; target: growth < 10 %)",
            ["events", "worker RSS MiB", "seconds"],
            rows,
        )
    )
    print(f"\nRSS growth from the first to the last reading: {growth:+.1f} %")


if __name__ == "__main__":
    main()
