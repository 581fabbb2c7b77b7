"""Intake: signed events per second and p50/p99 latency under 32 concurrent connections.

Baseline: a bare endpoint in the same stack (FastAPI on uvicorn, one process) doing one Redis
write per request. Ours: `sync-worker web` verifying the signature, validating, and running the
accept script. Same load generator, same Redis (AOF with `appendfsync always`, as compose runs
it), same run. Targets (issue 19): >= 2,000 events/s, >= 85 % of the baseline, and p99 < 15 ms at
2,000/s offered, with and without a replica. With the replica, the baseline runs with it
attached too (its `SET`s are replicated, and the replica takes its share of the two cores), so
each ratio compares two endpoints on the same set-up: the difference is our work and our `WAIT`.
The CPU each process used per event is printed too: on a shared machine it moves less than the
rates do.

The saturated runs give the capacity; a paced run offers the target rate (2,000/s) and gives
the latency a merchant sees at that rate (counted from each request's slot, so stalls count, or
from when it was sent if the sender's timer woke it early).
A paced run's schedule spaces its requests 0.5 ms apart at 2,000/s (or draws them as a
Poisson process with `--arrivals poisson`); the sender's timers (uvloop's) have a resolution of
a millisecond, so at 2,000/s they mostly leave two at a time on the millisecond (bench/README.md).
The baseline is paced the same way, which shows
what this machine allows any one-process endpoint at that rate. Then the same with one local
replica and `REDIS_MIN_REPLICAS=1`: the cost of `WAIT`. That set-up starts on a new, empty Redis,
as the first did: on the first one, some 150,000 events in, the AOF passed 64 MB and Redis
rewrote it (a fork and a rewrite of the whole file) inside whichever run was going on.

A machine's speed drifts from one minute to the next (on the two-core machine of bench/README.md
the same web spent 250 µs of CPU per paced event in one minute and 385 µs a quarter of an hour
later), and a p99 moves with it. So the paced runs come in `--repeat` rounds, each running the
baseline and ours in turn: the table gives their medians and in how many runs the p99 stayed
under 15 ms, and a second table the runs round by round, ours beside the baseline of the same
minute.

    python -m bench.intake [--events N] [--connections C] [--rate R] [--repeat K] [--arrivals A]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench.harness import (
    WEBHOOK_SECRET,
    Processes,
    cpu_seconds,
    environment,
    free_port,
    positive,
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


@dataclass(frozen=True)
class Run:
    """What one load run saw, and the CPU each process spent per request."""

    load: LoadResult
    cpu: dict[str, float]


def measured(
    processes: Processes, server: str, port: int, requests: list[bytes], **load: Any
) -> Run:
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
    return Run(result, used)


@dataclass
class Series:
    """The runs of one server under one kind of load: flat out, or paced in rounds (then
    `offered` says at what rate, e.g. "at 2,000/s offered")."""

    name: str
    server: str
    port: int
    offered: str = ""
    runs: list[Run] = field(default_factory=list)
    compared_with: Series | None = None
    """The baseline run flat out in the same set-up (the same replica attached, or none), whose
    rate this one's ratio divides by; None for a baseline itself."""

    @property
    def label(self) -> str:
        return f"{self.name} {self.offered}" if self.offered else self.name

    def median(self, value: Callable[[Run], float]) -> float:
        return statistics.median(value(run) for run in self.runs)

    def median_cpu(self) -> dict[str, float]:
        return {
            name: statistics.median(run.cpu[name] for run in self.runs) for name in self.runs[0].cpu
        }


def flat_out(processes: Processes, series: Series, args: argparse.Namespace) -> Series:
    """A warm-up, then one run as fast as the server answers."""
    port = series.port
    run_load("127.0.0.1", port, signed_requests(port, 500, f"warm_{series.server}"), connections=8)
    requests = signed_requests(port, args.events, f"flat_{series.server}")
    series.runs.append(
        measured(processes, series.server, port, requests, connections=args.connections)
    )
    return series


def paced_rounds(processes: Processes, every: list[Series], args: argparse.Namespace) -> None:
    """`args.repeat` rounds of one run at the offered rate per series, in turn: the servers
    compared in one round see the same minute of the machine, whose speed drifts between
    minutes by more than the differences measured."""
    for _ in range(args.repeat):
        for series in every:
            prefix = f"paced_{series.server}_{time.monotonic_ns()}"  # a baseline runs in 2 phases
            series.runs.append(
                measured(
                    processes,
                    series.server,
                    series.port,
                    signed_requests(series.port, args.rate * 5, prefix),
                    connections=args.connections,
                    rate=args.rate,
                    arrivals=args.arrivals,
                )
            )


def _cpu(run_cpu: dict[str, float]) -> str:
    return " / ".join(
        f"{run_cpu[n]:.0f}" if n in run_cpu else "-" for n in ("server", "redis", "replica")
    )


def summary_rows(every: list[Series], target_ms: float) -> list[list[object]]:
    """One row a series; a series of several runs by their medians. A flat-out row's ratio is
    to the baseline run flat out in the same set-up (see `Series.compared_with`)."""
    rows: list[list[object]] = []
    for series in every:
        runs = series.runs
        paced = bool(series.offered)
        statuses: Counter[int] = Counter()
        for run in runs:
            statuses.update(run.load.statuses)
        rate = series.median(lambda run: run.load.rate)
        base = series.compared_with or series
        rows.append(
            [series.label if len(runs) == 1 else f"{series.label} (median of {len(runs)} runs)",
             sum(run.load.requests for run in runs),
             rate,
             series.median(lambda run: run.load.p50_ms),
             series.median(lambda run: run.load.p99_ms),
             "-" if paced else f"{rate / base.median(lambda run: run.load.rate):.2f}",
             _cpu(series.median_cpu()),
             f"{sum(run.load.p99_ms < target_ms for run in runs)} of {len(runs)}" if paced else "-",
             " ".join(f"{k}:{v}" for k, v in sorted(statuses.items()))]
        )  # fmt: skip
    return rows


def round_rows(paced: list[Series]) -> list[list[object]]:
    """The paced runs round by round: p50 / p99 ms of each series."""
    return [
        [index + 1]
        + [f"{s.runs[index].load.p50_ms:.1f} / {s.runs[index].load.p99_ms:.1f}" for s in paced]
        for index in range(min(len(s.runs) for s in paced))
    ]


HEADER = [
    "run", "requests", "events/s", "p50 ms", "p99 ms", "ratio",
    "CPU µs/event: server / Redis / replica", "runs with p99 < 15 ms", "statuses",
]  # fmt: skip
TARGET_P99_MS = 15.0


def servers(processes: Processes, redis_url: str, *, replicas: int) -> tuple[int, int]:
    """The sandbox, the bare endpoint and our web on this Redis, ours with `replicas` as
    REDIS_MIN_REPLICAS: the ports of the last two."""
    env = {
        "REDIS_URL": redis_url,
        "RECUR_API_URL": start_sandbox(processes),
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
    web_port = free_port()
    serve(
        processes,
        "web",
        [sys.executable, "-m", "sync_worker", "web", "--port", str(web_port)],
        {**env, "REDIS_MIN_REPLICAS": str(replicas)},
        web_port,
    )
    return base_port, web_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=positive, default=20_000)
    parser.add_argument("--connections", type=positive, default=32)
    parser.add_argument(
        "--rate", type=positive, default=2000, help="offered rate of the paced runs"
    )
    parser.add_argument(
        "--repeat",
        type=positive,
        default=5,
        help="rounds of paced runs; each round runs every server once, in turn",
    )
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
    offered = f"at {args.rate:,}/s offered"
    with environment(appendfsync=args.appendfsync) as (processes, redis_url):
        base_port, web_port = servers(processes, redis_url, replicas=0)
        base = flat_out(processes, Series("baseline: one Redis SET", "baseline", base_port), args)
        ours = flat_out(
            processes, Series("recur-sync intake", "web", web_port, compared_with=base), args
        )
        paced = [
            Series("baseline: one Redis SET", "baseline", base_port, offered),
            Series("recur-sync intake", "web", web_port, offered),
        ]
        paced_rounds(processes, paced, args)
    # A new, empty Redis, as the first set-up had (see the module's docstring).
    with environment(appendfsync=args.appendfsync) as (processes, redis_url):
        start_replica(processes, redis_url)
        base_port, web_port = servers(processes, redis_url, replicas=1)
        with_replica = "recur-sync intake with one local replica and REDIS_MIN_REPLICAS=1"
        replica_base = flat_out(
            processes,
            Series("baseline: one Redis SET (replica attached)", "baseline", base_port),
            args,
        )
        replicated = flat_out(
            processes,
            Series(with_replica, "web", web_port, compared_with=replica_base),
            args,
        )
        paced_with_replica = [
            Series("baseline: one Redis SET (replica attached)", "baseline", base_port, offered),
            Series(with_replica, "web", web_port, offered),
        ]
        paced_rounds(processes, paced_with_replica, args)
    every = [base, paced[0], ours, paced[1], replica_base, replicated, *paced_with_replica]
    print(
        table(
            f"Intake: {args.events:,} signed events flat out, {args.connections} connections, "
            f"appendfsync {args.appendfsync}; {args.repeat} round(s) of {args.rate * 5:,} events "
            f"{offered}, {args.arrivals} arrivals "
            "(targets: >= 2,000/s, ratio >= 0.85, p99 < 15 ms at 2,000/s offered)",
            HEADER,
            summary_rows(every, TARGET_P99_MS),
        )
    )
    if args.repeat > 1:
        both = [*paced, *paced_with_replica]
        print()
        print(
            table(
                "Paced runs round by round, p50 / p99 ms (each round runs its servers in turn)",
                ["round", *(s.name for s in both)],
                round_rows(both),
            )
        )


if __name__ == "__main__":
    main()
