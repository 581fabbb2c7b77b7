"""Latency: how long after the debounce window a change reaches Recur, at a steady offered rate.

Signed events are offered at `--rate` per second for `--duration` seconds through the real
`sync-worker web`, one event per user, and a real worker syncs them to the sandbox (answering in
`--latency-ms`, 20 ms as in bench/sync_throughput.py) with the debounce window at 2 s. For each
user: from its event's acceptance (the accept script's time, which the user's trace records and
which precedes the `202`) to the sandbox's `200` for that user (its request log's time), minus
the window. That figure is what the pipeline adds: the dispatcher
noticing the user is due, the Celery hand-off, the worker's scripts and the PATCH itself.
Target: p99 <= 250 ms above the window.

    python -m bench.latency [--rate R] [--duration S] [--window S] [--latency-ms MS]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime

import httpx
import redis

from bench.harness import (
    SANDBOX_KEY,
    WEBHOOK_SECRET,
    all_applied,
    cpu_seconds,
    environment,
    signed_event,
    start_sandbox,
    start_web_and_worker,
    table,
    wait_until,
)
from bench.load import run_load
from sync_worker import redis_keys as keys

TARGET_P99_MS = 250.0
WARM_USERS = 200
"""Users synced before the clock starts, so the worker's clients and connections exist."""


def user_requests(port: int, users: range) -> list[bytes]:
    """One signed `user.updated` event for each user `user_{n}`, n in `users`, in that order."""
    now = int(time.time())
    stamp = datetime.now(tz=UTC).isoformat()
    requests = []
    for n in users:
        requests.append(
            signed_event(port, f"lat_{n}", f"user_{n}", f"user_{n} latency", stamp=stamp, now=now)
        )
    return requests


def applied_times(sandbox: str) -> dict[str, float]:
    """Per external id, the time (epoch seconds) of the sandbox's first `200` to a PATCH."""
    log = httpx.get(
        sandbox + "/_sandbox/requests", params={"method": "PATCH", "status": 200}, timeout=120
    )
    log.raise_for_status()
    first: dict[str, float] = {}
    for entry in log.json()["data"]:
        user = entry["external_id"]
        if user not in first:
            first[user] = datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).timestamp()
    return first


def accepted_times(client: redis.Redis, users: range) -> dict[str, float]:
    """Per user, when intake accepted its event: the `event` entry of its trace (trace.py)."""
    found: dict[str, float] = {}
    for first in range(users.start, users.stop, 1000):
        batch = [f"user_{n}" for n in range(first, min(first + 1000, users.stop))]
        with client.pipeline(transaction=False) as pipe:
            for user in batch:
                pipe.lrange(keys.trace(user), 0, -1)
            for user, entries in zip(batch, pipe.execute(), strict=True):
                for raw in entries:
                    entry = json.loads(raw)
                    if entry["kind"] == "event":
                        found[user] = float(entry["at"])
    return found


def percentile(ordered: list[float], fraction: float) -> float:
    """The value below which `fraction` of `ordered` (sorted) lies (nearest rank)."""
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * fraction + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=500, help="events offered per second")
    parser.add_argument("--duration", type=int, default=60, help="seconds of offered load")
    parser.add_argument("--window", type=float, default=2.0, help="debounce window, seconds")
    parser.add_argument("--latency-ms", type=int, default=20, help="the sandbox's latency")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    users = args.rate * args.duration
    with environment() as (processes, redis_url):
        sandbox = start_sandbox(processes, latency_ms=args.latency_ms, customers=users + WARM_USERS)
        env = {
            "REDIS_URL": redis_url,
            "RECUR_API_URL": sandbox,
            "RECUR_SECRET_KEY": SANDBOX_KEY,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "DEBOUNCE_WINDOW_SECONDS": str(args.window),
            "RATE_LIMIT_PER_SECOND": "100000",
            "RATE_LIMIT_BURST": "100000",
            "LOG_LEVEL": "WARNING",
        }
        port, client = start_web_and_worker(processes, env)

        def settled(count: int) -> bool:
            return bool(
                all_applied(client, count)
                and not client.zcard(keys.DUE)
                and not client.zcard(keys.INFLIGHT)
            )

        warm = user_requests(port, range(users + 1, users + WARM_USERS + 1))
        run_load("127.0.0.1", port, warm, connections=8)
        wait_until(lambda: settled(WARM_USERS), timeout=60, what="the warm-up users synced")
        httpx.delete(sandbox + "/_sandbox/requests", timeout=10).raise_for_status()

        requests = user_requests(port, range(1, users + 1))
        pids = {name: processes.pids[name] for name in ("web", "worker", "redis", "sandbox")}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        load = run_load("127.0.0.1", port, requests, connections=args.connections, rate=args.rate)
        wait_until(
            lambda: settled(users + WARM_USERS),
            timeout=args.duration + 300,
            what="every user synced",
        )
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        accepted = accepted_times(client, range(1, users + 1))
        applied = applied_times(sandbox)
    if load.statuses != {202: users}:
        sys.exit(f"not every event was accepted: {load.statuses}")
    missing = [n for n in range(1, users + 1) if f"user_{n}" not in applied]
    if missing:
        sys.exit(f"{len(missing)} users have no 200 in the sandbox's log, e.g. user_{missing[0]}")
    # In the order the events were sent, to see whether the latency grows during the run.
    in_order = [
        (applied[f"user_{n}"] - accepted[f"user_{n}"] - args.window) * 1000
        for n in range(1, users + 1)
    ]
    above = sorted(in_order)
    p99 = percentile(above, 0.99)
    print(
        table(
            f"Latency: {users:,} users, one event each, offered at {args.rate:,}/s for "
            f"{args.duration} s, window {args.window:g} s, sandbox latency {args.latency_ms} ms "
            f"(target: p99 <= {TARGET_P99_MS:.0f} ms above the window)",
            ["events/s", "intake p99 ms", "p50 ms", "p99 ms", "max ms", "min ms", "target"],
            [
                [
                    load.rate,
                    load.p99_ms,
                    statistics.median(above),
                    p99,
                    above[-1],
                    above[0],
                    "met" if p99 <= TARGET_P99_MS else "NOT MET",
                ]
            ],
        )
    )
    tenth = max(1, users // 10)
    over_time = [
        statistics.median(in_order[start : start + tenth]) for start in range(0, users, tenth)
    ]
    print(
        "\np50 ms above the window, by tenth of the run (a rise means a backlog): "
        + ", ".join(f"{v:.0f}" for v in over_time)
    )
    print(
        "(acceptance to the sandbox's 200, minus the window; "
        f"CPU s during the run: web {cpu['web']:.2f}, worker {cpu['worker']:.2f}, "
        f"Redis {cpu['redis']:.2f}, sandbox {cpu['sandbox']:.2f})"
    )


if __name__ == "__main__":
    main()
