"""Debounce: 1,000 users, each sending a burst of 10 events within 200 ms, through the real
intake and worker. Targets: at most 1.05 PATCHes per user, and no stale final value.

    python -m bench.debounce [--users N] [--burst B]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx

from bench.harness import (
    SANDBOX_KEY,
    WEBHOOK_SECRET,
    all_applied,
    environment,
    signed_event,
    start_sandbox,
    start_web_and_worker,
    table,
    wait_until,
)
from bench.load import run_load
from sync_worker import redis_keys as keys

GROUP = 50


def burst_requests(port: int, users: int, burst: int) -> list[bytes]:
    """Users in groups of 50: each group sends `burst` rounds, one event per user per round,
    so every user's burst lands within a couple of hundred milliseconds."""
    now = int(time.time())
    t0 = datetime.now(tz=UTC)
    requests = []
    for first in range(1, users + 1, GROUP):
        group = range(first, min(first + GROUP, users + 1))
        for version in range(burst):
            for user in group:
                stamp = (t0 + timedelta(milliseconds=version)).isoformat()
                requests.append(
                    signed_event(
                        port,
                        f"evt_{user}_{version}",
                        f"user_{user}",
                        f"user_{user} v{version}",
                        stamp=stamp,
                        now=now,
                    )
                )
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=10)
    args = parser.parse_args()
    with environment() as (processes, redis_url):
        sandbox = start_sandbox(processes, customers=args.users)
        env = {
            "REDIS_URL": redis_url,
            "RECUR_API_URL": sandbox,
            "RECUR_SECRET_KEY": SANDBOX_KEY,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LOG_LEVEL": "WARNING",
            "RATE_LIMIT_PER_SECOND": "100000",
            "RATE_LIMIT_BURST": "100000",
        }
        port, client = start_web_and_worker(processes, env)
        requests = burst_requests(port, args.users, args.burst)
        load = run_load("127.0.0.1", port, requests, connections=32)
        wait_until(
            lambda: (
                all_applied(client, args.users)
                and not client.zcard(keys.DUE)
                and not client.zcard(keys.INFLIGHT)
            ),
            timeout=300,
            what="every user synced",
        )
        log = httpx.get(sandbox + "/_sandbox/requests", params={"method": "PATCH"}, timeout=60)
        patches = log.json()["data"]
        per_user = Counter(p["external_id"] for p in patches)
        final = {
            user: httpx.get(
                f"{sandbox}/v1/customers/external/user_{user}",
                headers={"Authorization": f"Bearer {SANDBOX_KEY}"},
            ).json()["name"]
            for user in range(1, args.users + 1)
        }
    stale = sum(1 for user, name in final.items() if name != f"user_{user} v{args.burst - 1}")
    ratio = len(patches) / args.users
    print(
        table(
            f"Debounce: {args.users:,} users x bursts of {args.burst} "
            "(targets: <= 1.05 PATCH per user, 0 stale)",
            ["events", "accepted/s", "PATCHes", "PATCH per user", "max per user", "stale finals"],
            [
                [
                    load.requests,
                    load.rate,
                    len(patches),
                    f"{ratio:.3f}",
                    max(per_user.values()),
                    stale,
                ]
            ],
        )
    )


if __name__ == "__main__":
    main()
