"""Reconciliation: 100,000 customers in a sandbox, against a raw paging loop over the same sandbox.

Baseline: a plain httpx loop paging `GET /v1/customers?limit=100&starting_after=...` to the end
and decoding each page, nothing else. Ours: `Reconciler.run()` over the same sandbox, with a
ledger entry (name and metadata) for every customer (1 % of them drifted in name, so repairs are
enqueued too). The shared rate limit is set high for both, so the time measures our overhead,
not the throttle. Peak RSS growth is this process's peak during the pass minus its size just
before it. Target: ours <= 1.25x the baseline, RSS growth < 50 MB.

PATCHes sent: after the passes, the repairs they enqueued go through the normal sync path, and
the sandbox's request log counts the PATCHes that reach it: one per drifted customer, none for
the metadata the sandbox (as Recur) never returns. Then `--synced` users (1,000) are synced with
metadata through the sync path into a fresh sandbox, left unchanged, and reconciled: with no
drift that pass must send 0 PATCHes.

    python -m bench.reconcile [--customers N] [--drift-percent P] [--repeat R] [--latency-ms L]
                              [--synced N]

With no latency the sandbox answers a page in about a millisecond, which is the worst case for
our overhead; `--latency-ms 20` is closer to Recur over the internet, where fetching the next
page while the current one is compared hides the Redis work.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time

import httpx
import redis

from bench.harness import SANDBOX_KEY, Processes, cpu_seconds, environment, start_sandbox, table
from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.logging import configure_logging
from sync_worker.pipeline.ledger import Ledger
from sync_worker.reconcile.reconciler import Reconciler
from sync_worker.runtime import Runtime
from sync_worker.sandbox import SandboxControl
from sync_worker.settings import Settings, load_settings

MB = 1024 * 1024


def current_rss() -> int:
    """Bytes resident now (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Peak bytes resident so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def raw_loop(sandbox: str) -> tuple[float, int]:
    """Seconds to page through every customer with plain httpx, and how many there were."""
    seen = 0
    started = time.perf_counter()
    with httpx.Client(
        base_url=sandbox, headers={"Authorization": f"Bearer {SANDBOX_KEY}"}, timeout=30
    ) as client:
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 100}
            if cursor is not None:
                params["starting_after"] = cursor
            page = client.get("/v1/customers", params=params).json()
            seen += len(page["data"])
            if not page["has_more"]:
                break
            cursor = page["next_cursor"]
    return time.perf_counter() - started, seen


METADATA = {"plan": "pro", "seats": 5}


def seed_ledger(redis_url: str, customers: int, drift_percent: float) -> int:
    """A ledger entry per customer, with metadata; every (100 / drift_percent)th has another
    name."""
    client = redis.Redis.from_url(redis_url)
    ledger = Ledger(client)
    every = round(100 / drift_percent) if drift_percent > 0 else 0
    drifted = 0
    for n in range(1, customers + 1):
        name = f"測試用戶 {n}"
        if every and n % every == 0:
            name += " (renamed)"
            drifted += 1
        ledger.seed(f"user_{n}", {"name": name, "metadata": METADATA}, ts_ms=1_700_000_000_000)
    client.close()
    return drifted


CPU_OF = ("self", "redis", "sandbox")


def cpu_now(processes: Processes) -> list[float]:
    """CPU seconds used so far by this process, Redis and the sandbox (in CPU_OF's order)."""
    return [cpu_seconds(processes.pids.get(name, name)) for name in CPU_OF]


def cpu_since(processes: Processes, before: list[float]) -> list[float]:
    """CPU seconds each of CPU_OF used since `before`."""
    return [now - then for now, then in zip(cpu_now(processes), before, strict=True)]


def ours(runtime: Runtime) -> tuple[float, int, int, dict[str, object]]:
    """Seconds for one pass, RSS before it, peak RSS after it, and the report."""
    gc.collect()
    before = current_rss()
    started = time.perf_counter()
    result = Reconciler.from_runtime(runtime).run()
    elapsed = time.perf_counter() - started
    if result.status != "finished":
        raise SystemExit(f"reconciliation {result.status}: {result.report.get('error')}")
    return elapsed, before, peak_rss(), result.report


def drain(runtime: Runtime) -> int:
    """Sync every pending user through the normal path until none is left; how many applied."""
    applied = 0
    while True:
        claims = runtime.pending.claim_due(100)
        if claims:
            outcomes = runtime.syncer.sync_claims(claims)
            applied += sum(o.result == "applied" for o in outcomes)
        elif runtime.redis.zcard(keys.DUE) == 0 and runtime.redis.zcard(keys.INFLIGHT) == 0:
            return applied
        else:
            time.sleep(0.05)  # the debounce window of the newest events has not ended yet


def patches_sent(control: SandboxControl, since: int) -> int:
    """PATCH requests the sandbox received after request `since`."""
    return len(control.requests(since=since, method="PATCH"))


def last_seq(control: SandboxControl) -> int:
    """The seq of the newest request the sandbox logged (0 when none)."""
    logged = control.requests(since=0)
    return logged[-1]["seq"] if logged else 0


def bench_settings(redis_url: str, sandbox: str) -> Settings:
    """Settings on the bench's Redis and a sandbox, with a rate limit that never throttles."""
    return load_settings(
        redis_url=redis_url,
        recur_api_url=sandbox,
        recur_secret_key=SANDBOX_KEY,
        rate_limit_per_second=1_000_000,
        rate_limit_burst=1_000_000,
        log_level="WARNING",
    )


def synced_with_metadata(
    processes: Processes, redis_url: str, users: int
) -> tuple[float, int, dict[str, object]]:
    """`users` synced with metadata through the sync path into a fresh sandbox and an emptied
    Redis, then reconciled unchanged: the pass's seconds, the PATCHes it led to, its report."""
    sandbox = start_sandbox(processes, name="sandbox-synced")
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    runtime = Runtime(bench_settings(redis_url, sandbox))
    with SandboxControl(sandbox) as control:
        control.create_customers(
            {"email": f"synced_{n}@example.com", "name": "before", "external_id": f"synced_{n}"}
            for n in range(1, users + 1)
        )
        for n in range(1, users + 1):
            fields = {"name": f"同步用戶 {n}", "metadata": {**METADATA, "n": n}}
            runtime.pending.accept(
                UserEvent(
                    f"evt_synced_{n}", "user.updated", f"synced_{n}", 1_700_000_000_000, fields
                )
            )
        if drain(runtime) != users:
            raise SystemExit("not every synced user was applied")
        since = last_seq(control)
        started = time.perf_counter()
        result = Reconciler.from_runtime(runtime).run()
        elapsed = time.perf_counter() - started
        drain(runtime)
        sent = patches_sent(control, since)
    runtime.close()
    return elapsed, sent, result.report


def main() -> None:
    """Run both, `--repeat` times each (alternating), and print the best of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--drift-percent", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--latency-ms", type=int, default=0, help="Added by the sandbox to every request."
    )
    parser.add_argument(
        "--synced", type=int, default=1_000, help="Users synced with metadata, then reconciled."
    )
    args = parser.parse_args()

    with environment() as (processes, redis_url):
        print(f"starting a sandbox with {args.customers:,} customers ...", file=sys.stderr)
        sandbox = start_sandbox(processes, customers=args.customers, latency_ms=args.latency_ms)
        started = time.perf_counter()
        drifted = seed_ledger(redis_url, args.customers, args.drift_percent)
        print(f"ledger seeded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        settings = bench_settings(redis_url, sandbox)
        configure_logging(settings)
        runtime = Runtime(settings)
        raw_times: list[tuple[float, list[float]]] = []
        our_times: list[tuple[float, list[float]]] = []
        growth: list[int] = []
        report: dict[str, object] = {}
        baseline_rss = current_rss()
        for _ in range(args.repeat):
            cpu = cpu_now(processes)
            elapsed, before, peak, report = ours(runtime)
            our_times.append((elapsed, cpu_since(processes, cpu)))
            growth.append(max(0, peak - before))
            cpu = cpu_now(processes)
            seconds, seen = raw_loop(sandbox)
            raw_times.append((seconds, cpu_since(processes, cpu)))
            if seen != args.customers:
                raise SystemExit(f"the raw loop saw {seen:,} customers, not {args.customers:,}")
        with SandboxControl(sandbox) as control:
            since = last_seq(control)
            drain(runtime)
            repairs = patches_sent(control, since)
        runtime.close()
        synced_seconds, synced_patches, synced_report = synced_with_metadata(
            processes, redis_url, args.synced
        )

    (raw, raw_cpu), (mine, my_cpu) = min(raw_times), min(our_times)
    print(
        table(
            f"Reconciliation of {args.customers:,} customers ({drifted:,} drifted), "
            f"sandbox latency {args.latency_ms} ms, best of {args.repeat}",
            [
                "",
                "seconds",
                "customers/s",
                "x raw loop",
                "peak RSS growth (MB)",
                CPU_HEADER,
                "PATCHes sent",
            ],
            [
                ["raw httpx paging loop", raw, args.customers / raw, 1.0, "-", _cpu(raw_cpu), "-"],
                [
                    "Reconciler.run()",
                    mine,
                    args.customers / mine,
                    mine / raw,
                    growth[0] / MB,
                    _cpu(my_cpu),
                    repairs,
                ],
            ],
        )
    )
    print(
        f"\npages {report['pages']}, in sync {report['in_sync']:,}, drifted {report['drifted']:,}, "
        f"enqueued {report['enqueued']:,}; RSS before the first pass {baseline_rss / MB:.1f} MB, "
        f"growth per pass {', '.join(f'{g / MB:.1f}' for g in growth)} MB; PATCHes sent after "
        f"{args.repeat} passes: {repairs:,} (one per drifted customer)"
    )
    print(
        f"{args.synced:,} users synced with metadata, no drift: reconciled in "
        f"{synced_seconds:.2f} s, in sync {synced_report['in_sync']:,}, drifted "
        f"{synced_report['drifted']:,}, fields compared {synced_report['fields_compared']}, "
        f"PATCHes sent {synced_patches:,}"
    )
    if synced_patches:
        raise SystemExit("a reconciliation without drift sent PATCHes")


CPU_HEADER = "CPU s: ours / Redis / sandbox"


def _cpu(seconds: list[float]) -> str:
    return " / ".join(f"{s:.2f}" for s in seconds)


if __name__ == "__main__":
    main()
