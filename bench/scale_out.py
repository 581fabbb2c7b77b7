"""Scale out: 1, 2 and 4 worker processes on one Redis, the sandbox answering in 100 ms.

1. Throughput: users with one event each, the shared rate limit set high; seconds from the
   events accepted to the last PATCH applied, with 1, 2 and 4 `sync-worker worker` processes
   (at 100 ms a call, two idle cores are not the limit: the slots are). Targets: >= 1.8x the
   one worker's rate with 2, >= 3.2x with 4. The CPU seconds each run used, and the machine's
   load average as it started, show when the machine was the limit after all.
2. Shared rate limit: 4 workers, the limit set low; PATCHes per second of the sandbox's log
   (its timestamps), from the third second on, and how many the first two seconds held (the
   burst). The workers are cold, as just after a deployment: every slot's first call is in
   the first seconds. Target: the limit, within 5 %, every second; at most burst + 2 x limit
   in the first two.
3. One user at a time: 4 workers, several rounds of events per user arriving while earlier
   rounds are being sent; from the sandbox's log, two PATCHes of one user overlap when the
   second ended less than the latency after the first (each takes the full latency). Target: 0.
4. Web replicas: two `sync-worker web` processes on two ports, every event posted to both at
   once with the same id, a worker syncing. Target: one 202 and one `duplicate` per event, one
   PATCH per user.

    python -m bench.scale_out [--users N] [--latency-ms L] [--rate R]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import pairwise
from typing import Any

import httpx
import redis

from bench.harness import (
    SANDBOX_KEY,
    WEBHOOK_SECRET,
    Processes,
    all_applied,
    cpu_seconds,
    environment,
    free_port,
    start_sandbox,
    table,
    wait_until,
)
from bench.sync_throughput import seed
from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.intake.signatures import sign
from sync_worker.pipeline.pending import ACCEPT_SCRIPT, PendingStore

WORKER_COUNTS = (1, 2, 4)
TARGETS = {1: 1.0, 2: 1.8, 4: 3.2}


def worker_env(redis_url: str, sandbox: str, **overrides: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "RECUR_API_URL": sandbox,
        "RECUR_SECRET_KEY": SANDBOX_KEY,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RATE_LIMIT_PER_SECOND": "100000",
        "RATE_LIMIT_BURST": "100000",
        "DEBOUNCE_WINDOW_SECONDS": "0",
        # Small batches spread the users over every slot of every worker.
        "SYNC_BATCH_SIZE": "10",
        "LOG_LEVEL": "WARNING",
        **overrides,
    }


def start_workers(
    processes: Processes, client: redis.Redis, count: int, env: dict[str, str]
) -> list[subprocess.Popen[bytes]]:
    """`count` worker processes, each with its own hostname; returns once all are live."""
    client.flushall()
    started = []
    for number in range(1, count + 1):
        processes.start(
            f"worker-{count}-{number}",
            [sys.executable, "-m", "sync_worker", "worker", "--hostname", f"w{number}@%h"],
            env,
        )
        started.append(processes.running[-1])
    wait_until(
        lambda: len(client.keys(keys.WORKER_HEARTBEAT + "*")) >= count,
        timeout=120,
        what=f"{count} workers",
    )
    return started


def stop_workers(processes: Processes, workers: list[subprocess.Popen[bytes]]) -> None:
    for process in workers:
        process.terminate()
    for process in workers:
        process.wait(timeout=30)
        processes.running.remove(process)


def accept(client: redis.Redis, users: range, round_number: int) -> None:
    """One event per user, due at once, through the intake script (pipelined)."""
    store = PendingStore(
        client, window_seconds=0, max_wait_seconds=0, dedup_ttl_seconds=3600, lease_seconds=120
    )
    script = client.register_script(ACCEPT_SCRIPT)
    now_ms = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for user in users:
        event = UserEvent(
            f"evt_{round_number}_{user}",
            "user.updated",
            f"user_{user}",
            now_ms + round_number,
            {"name": f"user_{user} round {round_number}"},
        )
        script_keys, args = store.accept_call(event)
        script(keys=script_keys, args=args, client=pipe)
    pipe.execute()


def drained(client: redis.Redis) -> bool:
    return client.zcard(keys.DUE) == 0 and client.zcard(keys.INFLIGHT) == 0


def patches(sandbox: str) -> list[dict[str, Any]]:
    """Every successful PATCH the sandbox logged, oldest first."""
    response = httpx.get(
        sandbox + "/_sandbox/requests", params={"method": "PATCH", "status": 200}, timeout=120
    )
    return list(response.json()["data"])


def at_ms(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).timestamp() * 1000


def throughput(
    processes: Processes, client: redis.Redis, sandbox: str, redis_url: str, args: Any
) -> list[list[object]]:
    rows: list[list[object]] = []
    base = 0.0
    for count in WORKER_COUNTS:
        seed(sandbox, args.users, args.latency_ms)
        workers = start_workers(processes, client, count, worker_env(redis_url, sandbox))
        pids = [w.pid for w in workers] + [processes.pids["redis"], processes.pids["sandbox"]]
        cpu = [cpu_seconds(pid) for pid in pids]
        load = os.getloadavg()[0]
        started = time.perf_counter()
        accept(client, range(1, args.users + 1), 1)
        wait_until(lambda: all_applied(client, args.users), timeout=900, what="every PATCH")
        elapsed = time.perf_counter() - started
        used = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu, strict=True)]
        stop_workers(processes, workers)
        rate = args.users / elapsed
        base = base or rate
        target = TARGETS[count]
        verdict = "met" if rate / base >= target else "NOT met"
        rows.append(
            [
                count,
                count * 16,
                elapsed,
                rate,
                f"{rate / base:.2f}x",
                f">= {target}x {verdict}",
                f"{sum(used[:-2]):.1f} / {used[-2]:.1f} / {used[-1]:.1f}",
                f"{load:.1f}",
            ]
        )
    return rows


def rate_limited(
    processes: Processes, client: redis.Redis, sandbox: str, redis_url: str, args: Any
) -> list[object]:
    users = int(args.rate * 20)
    burst = 5
    seed(sandbox, users, args.latency_ms)
    env = worker_env(
        redis_url,
        sandbox,
        RATE_LIMIT_PER_SECOND=str(args.rate),
        RATE_LIMIT_BURST=str(burst),
    )
    # No warm-up: each of the 64 slots makes its first call (and builds its HTTP client) in
    # the first seconds, where a token taken before that slow work would be spent late.
    workers = start_workers(processes, client, 4, env)
    accept(client, range(1, users + 1), 1)
    wait_until(lambda: all_applied(client, users), timeout=600, what="every PATCH")
    stop_workers(processes, workers)
    times = sorted(at_ms(entry) for entry in patches(sandbox))
    # Calls per whole second of the sandbox's clock, from the first PATCH; the last second is
    # partial. The first two seconds may hold the burst.
    seconds = [0] * (int((times[-1] - times[0]) // 1000) + 1)
    for t in times:
        seconds[int((t - times[0]) // 1000)] += 1
    steady = seconds[2:-1]
    rate = sum(steady) / len(steady)
    start = seconds[0] + seconds[1]
    ok = (
        abs(rate - args.rate) <= 0.05 * args.rate
        and max(steady) <= args.rate * 1.05
        and start <= burst + 2 * args.rate
    )
    return [
        "4 workers, shared limit",
        len(times),
        f"{args.rate:g}/s, burst {burst}",
        f"{rate:.2f}/s from second 3 on, {min(steady)}-{max(steady)} a second",
        f"first 2 s: {start} (allowed {burst + 2 * args.rate:g})",
        f"±5 % a second, burst + 2 s of rate first: {'met' if ok else 'NOT met'}",
    ]


def one_at_a_time(
    processes: Processes, client: redis.Redis, sandbox: str, redis_url: str, args: Any
) -> list[object]:
    users, rounds = 500, 4
    seed(sandbox, users, args.latency_ms)
    workers = start_workers(processes, client, 4, worker_env(redis_url, sandbox))
    for round_number in range(1, rounds + 1):
        accept(client, range(1, users + 1), round_number)
        # The next round lands when half of this one is sent and the rest is being sent or
        # waits: each user is then PATCHed once a round, some while their previous is in flight.
        wait_until(
            lambda: client.zcard(keys.DUE) + client.zcard(keys.INFLIGHT) <= users // 2,
            timeout=300,
            what=f"half of round {round_number}",
        )
    wait_until(lambda: drained(client), timeout=600, what="every round")
    stop_workers(processes, workers)
    by_user: dict[str, list[float]] = defaultdict(list)
    final: dict[str, str] = {}
    logged = patches(sandbox)
    for entry in logged:
        by_user[entry["external_id"]].append(at_ms(entry))
        final[entry["external_id"]] = entry["body"]["name"]
    overlaps = sum(
        1
        for stamps in by_user.values()
        for first, second in pairwise(sorted(stamps))
        if second - first < args.latency_ms
    )
    stale = sum(
        1 for u in range(1, users + 1) if final.get(f"user_{u}") != f"user_{u} round {rounds}"
    )
    return [
        f"4 workers, {users} users x {rounds} rounds",
        len(logged),
        f"{len(logged) / users:.2f} PATCH per user",
        overlaps,
        stale,
        f"0 overlapping, 0 stale: {'met' if overlaps == 0 and stale == 0 else 'NOT met'}",
    ]


def two_webs(
    processes: Processes, client: redis.Redis, sandbox: str, redis_url: str, args: Any
) -> list[object]:
    users = 300
    seed(sandbox, users, args.latency_ms)
    env = worker_env(redis_url, sandbox)
    workers = start_workers(processes, client, 1, env)
    ports = [free_port(), free_port()]
    for port in ports:
        processes.start(
            f"web-{port}", [sys.executable, "-m", "sync_worker", "web", "--port", str(port)], env
        )
    for port in ports:
        wait_until(
            lambda p=port: httpx.get(f"http://127.0.0.1:{p}/healthz").status_code == 200,
            timeout=60,
            what=f"web on {port}",
        )

    def post_both(user: int) -> list[int]:
        event_id = f"evt_web_{user}"
        body = json.dumps(
            {
                "id": event_id,
                "type": "user.updated",
                "timestamp": datetime.now().astimezone().isoformat(),
                "data": {"user_id": f"user_{user}", "name": f"user_{user} via two webs"},
            }
        ).encode()
        now = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(now),
            "webhook-signature": sign(WEBHOOK_SECRET, msg_id=event_id, timestamp=now, body=body),
        }
        with ThreadPoolExecutor(2) as both:
            answers = both.map(
                lambda port: (
                    httpx.post(
                        f"http://127.0.0.1:{port}/webhooks/user-updated",
                        content=body,
                        headers=headers,
                        timeout=30,
                    ).status_code
                ),
                ports,
            )
            return sorted(answers)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post_both, range(1, users + 1)))
    wait_until(lambda: all_applied(client, users), timeout=300, what="every PATCH")
    wait_until(lambda: drained(client), timeout=300, what="the worker")
    stop_workers(processes, workers)
    one_each = sum(1 for a in answers if a == [200, 202])
    per_user: dict[str, int] = defaultdict(int)
    for entry in patches(sandbox):
        per_user[entry["external_id"]] += 1
    duplicates = sum(n - 1 for n in per_user.values() if n > 1)
    ok = one_each == users and duplicates == 0 and len(per_user) == users
    return [
        f"2 webs, {users} events each posted to both",
        sum(per_user.values()),
        f"{one_each} of {users} answered 202 + duplicate",
        duplicates,
        "-",
        f"one PATCH per user: {'met' if ok else 'NOT met'}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="the low shared rate limit")
    args = parser.parse_args()
    with environment() as (processes, redis_url):
        sandbox = start_sandbox(processes, latency_ms=args.latency_ms)
        client = redis.Redis.from_url(redis_url)
        scaling = throughput(processes, client, sandbox, redis_url, args)
        checks = [
            rate_limited(processes, client, sandbox, redis_url, args),
            one_at_a_time(processes, client, sandbox, redis_url, args),
            two_webs(processes, client, sandbox, redis_url, args),
        ]
        client.close()
    print(
        table(
            f"Throughput: {args.users:,} users, one event each, sandbox latency "
            f"{args.latency_ms} ms, 16 threads per worker, rate limit high",
            [
                "workers",
                "slots",
                "seconds",
                "PATCH/s",
                "vs 1 worker",
                "target",
                "CPU s: workers / Redis / sandbox",
                "load average",
            ],
            scaling,
        )
    )
    print()
    print(
        table(
            "Sharing: the rate limit, one user at a time, two webs",
            ["run", "PATCHes", "setting / what", "measured", "start / overlaps", "target"],
            [
                checks[0],
                [
                    *checks[1][:3],
                    "-",
                    f"{checks[1][3]} overlapping, {checks[1][4]} stale",
                    checks[1][5],
                ],
                [*checks[2][:3], "-", f"{checks[2][3]} duplicate PATCHes", checks[2][5]],
            ],
        )
    )


if __name__ == "__main__":
    main()
