"""Sync throughput: 10,000 distinct users, one event each, the sandbox answering in 20 ms.

Baseline: a plain httpx loop sending the same 10,000 PATCHes with the same concurrency as the
worker (one thread and one keep-alive client per slot). Before it, the same PATCHes from a client
that does nothing but the HTTP (one event loop, h11, a sixth to a fifth of the loop's CPU): how
near the loop is to what the sandbox allows at that concurrency and latency (at most concurrency /
latency PATCH/s, and less: a call takes it a little longer than its latency). Ours: the real worker
process, from the first event accepted to the last PATCH applied (the ledger holds every user).
Every run uses the same sandbox and Redis, in this process run. Targets (issue 19): ours at least
the baseline's rate, and the worker's CPU per synced user at most the loop's CPU per PATCH.

    python -m bench.sync_throughput [--users N] [--concurrency C] [--pool threads|prefork]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import h11
import httpx
import redis
import uvloop

from bench.harness import (
    SANDBOX_KEY,
    Processes,
    all_applied,
    cpu_seconds,
    environment,
    start_sandbox,
    table,
    wait_until,
)
from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.pending import PendingStore

HEADER = ["run", "concurrency", "seconds", "PATCH/s", "ratio", "CPU s: ours / Redis / sandbox",
          "CPU ratio"]  # fmt: skip


WARM = 64
"""Customers `warm_1..` each side PATCHes before its clock starts: the loop's threads build their
clients, the worker's Celery consumer and slots get going. Neither pays its start-up in the
figure (a worker runs for days; 1.2 s of its first seconds went into a 16 s run)."""


def seed(sandbox: str, users: int, latency_ms: int) -> None:
    """Fresh customers user_1..N and warm_1..WARM, and the latency (a reset clears every fault)."""
    httpx.post(sandbox + "/_sandbox/reset", timeout=30).raise_for_status()
    for prefix, count in (("user_", users), ("warm_", WARM)):
        httpx.post(
            sandbox + "/_sandbox/seed", json={"count": count, "prefix": prefix}, timeout=60
        ).raise_for_status()
    httpx.patch(
        sandbox + "/_sandbox/faults", json={"latency_ms": latency_ms}, timeout=10
    ).raise_for_status()


def baseline(sandbox: str, users: int, concurrency: int) -> float:
    """Seconds for a plain threaded httpx loop to PATCH every user once."""
    ids = [f"user_{i}" for i in range(1, users + 1)]
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(
                base_url=sandbox, headers={"Authorization": f"Bearer {SANDBOX_KEY}"}
            )
        return local.client  # type: ignore[no-any-return]

    def patch(user: str) -> None:
        client().patch(f"/v1/customers/external/{user}", json={"name": f"{user} baseline"})

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(patch, [f"warm_{i}" for i in range(1, WARM + 1)]))
        started = time.perf_counter()
        list(pool.map(patch, ids))
    return time.perf_counter() - started


class Refused(Exception):
    """A PATCH of the event-loop client answered with another status than 200."""


def ceiling(sandbox: str, users: int, concurrency: int) -> float:
    """Seconds for `concurrency` keep-alive connections on one event loop to PATCH every user
    once, parsing with h11 and nothing else: a client whose own cost hardly counts. A PATCH not
    answered 200 ends the run (SystemExit), so no refusal is counted as sent."""
    url = httpx.URL(sandbox)
    host, port = url.host, url.port or 80

    async def connection(queue: list[str]) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        http = h11.Connection(our_role=h11.CLIENT)
        try:
            while queue:
                user = queue.pop()
                body = json.dumps({"name": f"{user} ceiling"}).encode()
                head = [
                    ("Host", f"{host}:{port}"),
                    ("Authorization", f"Bearer {SANDBOX_KEY}"),
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                ]
                target = f"/v1/customers/external/{user}"
                writer.write(
                    http.send(h11.Request(method="PATCH", target=target, headers=head))
                    + http.send(h11.Data(data=body))
                    + http.send(h11.EndOfMessage())
                )
                status = 0
                while True:
                    event = http.next_event()
                    if event is h11.NEED_DATA:
                        http.receive_data(await reader.read(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.EndOfMessage):
                        break
                if status != 200:
                    raise Refused(f"the event loop's PATCH of {user} got {status}")
                http.start_next_cycle()
        finally:
            writer.close()

    async def send(ids: list[str]) -> None:
        queue = ids[::-1]
        async with asyncio.TaskGroup() as group:  # the first failure cancels the others
            for _ in range(concurrency):
                group.create_task(connection(queue))

    def run(ids: list[str]) -> None:
        try:
            uvloop.run(send(ids))
        except ExceptionGroup as failures:
            refused = failures.subgroup(Refused)
            if refused is None:
                raise
            raise SystemExit(str(refused.exceptions[0])) from failures

    run([f"warm_{i}" for i in range(1, WARM + 1)])
    started = time.perf_counter()
    run([f"user_{i}" for i in range(1, users + 1)])
    return time.perf_counter() - started


def ours(
    processes: Processes, redis_url: str, sandbox: str, users: int, concurrency: int, pool: str
) -> tuple[float, dict[str, float]]:
    """Seconds from the first event accepted to the last PATCH applied, through the worker."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    env = {
        "REDIS_URL": redis_url,
        "RECUR_API_URL": sandbox,
        "RECUR_SECRET_KEY": SANDBOX_KEY,
        "WORKER_CONCURRENCY": str(concurrency),
        "RATE_LIMIT_PER_SECOND": "100000",
        "RATE_LIMIT_BURST": "100000",
        "DEBOUNCE_WINDOW_SECONDS": "0",
        "LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "sync_worker", "worker", "--concurrency", str(concurrency)]
    if pool != "threads":
        argv = [
            sys.executable, "-m", "celery", "-A", "sync_worker.celery_app", "worker",
            "--pool", pool, "--concurrency", str(concurrency), "-Q", "sync,maintenance",
            "--loglevel", "WARNING",
        ]  # fmt: skip
    processes.start(f"worker-{pool}", argv, env=env)
    wait_until(lambda: client.keys(keys.WORKER_HEARTBEAT + "*"), timeout=60, what="the worker")
    pending = PendingStore(
        client, window_seconds=0, max_wait_seconds=1, dedup_ttl_seconds=3600, lease_seconds=120
    )
    now_ms = int(time.time() * 1000)
    for i in range(1, WARM + 1):
        user = f"warm_{i}"
        pending.accept(UserEvent(f"warm_{i}", "user.updated", user, now_ms, {"name": "warm"}))
    wait_until(lambda: all_applied(client, WARM), timeout=60, what="the warm-up PATCHes")
    worker = processes.pids[f"worker-{pool}"]
    cpu = [cpu_seconds(worker), cpu_seconds(processes.pids["redis"])]
    started = time.perf_counter()
    for i in range(1, users + 1):
        user = f"user_{i}"
        pending.accept(
            UserEvent(f"evt_{i}", "user.updated", user, now_ms, {"name": f"{user} ours"})
        )
    accepted = time.perf_counter() - started
    wait_until(lambda: all_applied(client, WARM + users), timeout=600, what="every PATCH")
    elapsed = time.perf_counter() - started
    worker_cpu = cpu_seconds(worker) - cpu[0]
    redis_cpu = cpu_seconds(processes.pids["redis"]) - cpu[1]
    return elapsed, {"accept_seconds": accepted, "worker_cpu": worker_cpu, "redis_cpu": redis_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--pool", default="threads", choices=["threads", "prefork", "gevent"])
    args = parser.parse_args()
    with environment() as (processes, redis_url):
        sandbox = start_sandbox(processes, latency_ms=args.latency_ms)
        seed(sandbox, args.users, args.latency_ms)
        own_cpu = cpu_seconds()
        bound = ceiling(sandbox, args.users, args.concurrency)
        bound_cpu = cpu_seconds() - own_cpu
        seed(sandbox, args.users, args.latency_ms)
        sandbox_cpu = cpu_seconds(processes.pids["sandbox"])
        own_cpu = cpu_seconds()
        base = baseline(sandbox, args.users, args.concurrency)
        base_cpu = cpu_seconds() - own_cpu
        base_sandbox_cpu = cpu_seconds(processes.pids["sandbox"]) - sandbox_cpu
        seed(sandbox, args.users, args.latency_ms)
        sandbox_cpu = cpu_seconds(processes.pids["sandbox"])
        mine, extra = ours(processes, redis_url, sandbox, args.users, args.concurrency, args.pool)
        my_sandbox_cpu = cpu_seconds(processes.pids["sandbox"]) - sandbox_cpu
    rows = [
        ["the HTTP alone (one event loop, h11)", args.concurrency, bound, args.users / bound,
         f"{base / bound:.2f}", f"{bound_cpu:.2f} / - / -", f"{bound_cpu / base_cpu:.2f}"],
        ["baseline: httpx loop", args.concurrency, base, args.users / base, "1.00",
         f"{base_cpu:.2f} / - / {base_sandbox_cpu:.2f}", "1.00"],
        [f"recur-sync worker ({args.pool})", args.concurrency, mine, args.users / mine,
         f"{base / mine:.2f}",
         f"{extra['worker_cpu']:.2f} / {extra['redis_cpu']:.2f} / {my_sandbox_cpu:.2f}",
         f"{extra['worker_cpu'] / base_cpu:.2f}"],
    ]  # fmt: skip
    print(
        table(
            f"Sync throughput: {args.users:,} users, one event each, sandbox latency "
            f"{args.latency_ms} ms (targets: ratio >= 1.00, CPU per user <= 1.00 of the loop's)",
            HEADER,
            rows,
        )
    )
    print(
        f"\n(accepting the {args.users:,} events took {extra['accept_seconds']:.2f} s of that; "
        "ours is the worker process: prefork children are not counted)"
    )


if __name__ == "__main__":
    main()
