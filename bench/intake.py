"""Intake: signed events per second and p50/p99 latency under 32 concurrent connections.

Baseline: a bare endpoint in the same stack (FastAPI on uvicorn, one process) doing one Redis
write per request. Ours: `sync-worker web` verifying the signature, validating, and running the
accept script. Same load generator, same Redis (AOF with `appendfsync always`, as compose runs
it), same run. Targets (issue 19): >= 2,000 events/s, >= 85 % of the baseline, and p99 < 15 ms at
2,000/s offered, with and without a replica. The CPU each process used per event is printed too:
on a shared machine it moves less than the rates do.

The saturated runs give the capacity; a paced run offers the target rate (2,000/s) and gives
the latency a merchant sees at that rate (counted from each request's slot, so stalls count).
The requests of a paced run arrive one after the other, 0.5 ms apart at 2,000/s (or as a
Poisson process with `--arrivals poisson`); the baseline is paced the same way, which shows
what this machine allows any one-process endpoint at that rate. Then the same two runs with
one local replica and `REDIS_MIN_REPLICAS=1`: the cost of `WAIT`.

    python -m bench.intake [--events N] [--connections C] [--rate R] [--arrivals A]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench.harness import (
    WEBHOOK_SECRET,
    Processes,
    cpu_seconds,
    environment,
    free_port,
    signed_event,
    start_replica,
    start_sandbox,
    table,
    wait_until,
)
from bench.load import LoadResult, run_load


def baseline_app() -> FastAPI:
    """One Redis write per request, nothing else: the floor our intake is compared with."""
    import os

    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(os.environ["REDIS_URL"], max_connections=256)
    app = FastAPI()

    @app.post("/webhooks/user-updated")
    async def accept(request: Request) -> JSONResponse:
        body = await request.body()
        await client.set("bench:" + request.headers.get("webhook-id", ""), body)
        return JSONResponse({"status": "accepted"}, status_code=202)

    return app


def signed_requests(port: int, count: int, prefix: str) -> list[bytes]:
    now = int(time.time())
    stamp = datetime.now(tz=UTC).isoformat()
    requests = []
    for i in range(count):
        requests.append(
            signed_event(
                port, f"{prefix}_{i}", f"user_{i % 5000}", f"name {i}", stamp=stamp, now=now
            )
        )
    return requests


def serve(processes: Processes, name: str, argv: list[str], env: dict[str, str], port: int) -> None:
    processes.start(name, argv, env=env)
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code in (200, 404),
        timeout=30,
        what=name,
    )


HEADER = [
    "run", "requests", "events/s", "p50 ms", "p99 ms", "ratio",
    "CPU µs/event: server / Redis / replica", "statuses",
]  # fmt: skip


def measured(
    processes: Processes, server: str, port: int, requests: list[bytes], **load: Any
) -> tuple[LoadResult, dict[str, float]]:
    """One load run, and the CPU microseconds per request of the server, Redis and (when
    there is one) the replica."""
    names = [n for n in (server, "redis", "replica") if n in processes.pids]
    before = {n: cpu_seconds(processes.pids[n]) for n in names}
    result = run_load("127.0.0.1", port, requests, **load)
    used = {
        "server" if n == server else n: (cpu_seconds(processes.pids[n]) - before[n])
        / result.requests
        * 1e6
        for n in names
    }
    return result, used


def flat_out_and_paced(
    processes: Processes, server: str, port: int, args: argparse.Namespace, label: str
) -> list[tuple[str, LoadResult, dict[str, float]]]:
    """A warm-up, then a run as fast as `server` answers and one at the offered rate."""
    run_load("127.0.0.1", port, signed_requests(port, 500, f"warm_{server}"), connections=8)
    flat, flat_cpu = measured(
        processes,
        server,
        port,
        signed_requests(port, args.events, f"flat_{server}"),
        connections=args.connections,
    )
    paced, paced_cpu = measured(
        processes,
        server,
        port,
        signed_requests(port, args.rate * 5, f"paced_{server}"),
        connections=args.connections,
        rate=args.rate,
        arrivals=args.arrivals,
    )
    return [(label, flat, flat_cpu), (f"{label} at {args.rate:,}/s offered", paced, paced_cpu)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=2000, help="offered rate of the paced runs")
    parser.add_argument(
        "--arrivals",
        choices=["even", "poisson"],
        default="even",
        help="how the paced runs offer their rate (poisson: independent senders, which bunch)",
    )
    parser.add_argument(
        "--appendfsync",
        choices=["always", "everysec"],
        default="always",
        help="Redis AOF fsync policy (always: as docker-compose.yml runs it)",
    )
    args = parser.parse_args()
    results: list[tuple[str, LoadResult, dict[str, float]]] = []
    with environment(appendfsync=args.appendfsync) as (processes, redis_url):
        sandbox = start_sandbox(processes)
        env = {
            "REDIS_URL": redis_url,
            "RECUR_API_URL": sandbox,
            "RECUR_SECRET_KEY": "sk_test_sandbox",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LOG_LEVEL": "WARNING",
        }
        base_port = free_port()
        serve(
            processes,
            "baseline",
            [
                sys.executable, "-m", "uvicorn", "--factory", "bench.intake:baseline_app",
                "--host", "127.0.0.1", "--port", str(base_port),
                "--no-access-log", "--log-level", "warning",
            ],
            env,
            base_port,
        )  # fmt: skip
        results += flat_out_and_paced(
            processes, "baseline", base_port, args, "baseline: one Redis SET"
        )
        base = results[0][1]
        redis.Redis.from_url(redis_url).flushall()
        web_port = free_port()
        serve(
            processes,
            "web",
            [sys.executable, "-m", "sync_worker", "web", "--port", str(web_port)],
            env,
            web_port,
        )
        results += flat_out_and_paced(processes, "web", web_port, args, "recur-sync intake")
        start_replica(processes, redis_url)
        replicated_port = free_port()
        serve(
            processes,
            "web-replicated",
            [sys.executable, "-m", "sync_worker", "web", "--port", str(replicated_port)],
            {**env, "REDIS_MIN_REPLICAS": "1"},
            replicated_port,
        )
        results += flat_out_and_paced(
            processes,
            "web-replicated",
            replicated_port,
            args,
            "recur-sync intake with one local replica and REDIS_MIN_REPLICAS=1",
        )
    rows = [
        [name, r.requests, r.rate, r.p50_ms, r.p99_ms,
         "-" if "offered" in name else f"{r.rate / base.rate:.2f}",
         " / ".join(f"{cpu[n]:.0f}" if n in cpu else "-" for n in ("server", "redis", "replica")),
         " ".join(f"{k}:{v}" for k, v in sorted(r.statuses.items()))]
        for name, r, cpu in results
    ]  # fmt: skip
    print(
        table(
            f"Intake: {args.events:,} signed events, {args.connections} connections, "
            f"appendfsync {args.appendfsync}, {args.arrivals} arrivals when paced "
            "(targets: >= 2,000/s, ratio >= 0.85, p99 < 15 ms at 2,000/s offered)",
            HEADER,
            rows,
        )
    )


if __name__ == "__main__":
    main()
