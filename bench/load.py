"""A lean HTTP/1.1 load generator: N keep-alive connections replaying pre-built requests.

Python HTTP clients spend more CPU per request than the servers we measure, so this one
writes raw bytes and reads just enough of each answer to find its end. It runs in its own
process; requests are built (and signed) before the clock starts.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

Arrivals = Literal["even", "poisson"]


@dataclass(frozen=True)
class LoadResult:
    """What one load run saw."""

    requests: int
    seconds: float
    statuses: dict[int, int]
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One raw POST request."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _connection(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    requests: list[bytes],
    slots: list[float] | None,
    latencies: list[float],
    statuses: Counter[int],
) -> None:
    reader, writer = stream
    for index, raw in enumerate(requests):
        started = time.perf_counter()
        if slots is not None:
            # Paced: each request has its slot, and its latency counts from that slot, so a
            # stall shows up in the percentiles instead of silently slowing the sender. Not from
            # before the request left, though: uvloop's timers have a resolution of a millisecond
            # and wake a sleep of under half of one at once, so a request can go out before its
            # slot, and counting from the slot took that time off its latency.
            slot = slots[index]
            if slot > started:
                await asyncio.sleep(slot - started)
            started = min(slot, time.perf_counter())
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
        statuses[status] += 1
    writer.close()


def arrival_times(count: int, rate: float, arrivals: Arrivals, seed: int = 0) -> list[float]:
    """Seconds from the start at which each of `count` requests is offered, `rate` a second
    in all: evenly spaced, or as a Poisson process (independent senders: gaps drawn from an
    exponential distribution, so arrivals bunch now and then, as real webhooks do)."""
    if arrivals == "even":
        return [index / rate for index in range(count)]
    draw = random.Random(seed)
    offsets, now = [], 0.0
    for _ in range(count):
        offsets.append(now)
        now += draw.expovariate(rate)
    return offsets


@dataclass(frozen=True)
class _Plan:
    """What one load run sends, where, and how fast (rate 0: as fast as answered)."""

    host: str
    port: int
    requests: list[bytes]
    connections: int
    rate: float
    arrivals: Arrivals


async def _run(plan: _Plan) -> LoadResult:
    requests, connections, rate = plan.requests, plan.connections, plan.rate
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    shares = [requests[i::connections] for i in range(connections)]
    # Connected before the clock starts: keep-alive connections are what is measured, and
    # their handshakes would otherwise land on the first slots.
    streams = await asyncio.gather(
        *(asyncio.open_connection(plan.host, plan.port) for _ in range(connections))
    )
    started = time.perf_counter()
    if rate:
        # One schedule for the whole run, dealt out in turn: the connections do not all send at
        # the same instant, which would offer bursts of `connections` requests, not a rate.
        offsets = arrival_times(len(requests), rate, plan.arrivals)
        slots: list[list[float] | None] = [
            [started + offset for offset in offsets[i::connections]] for i in range(connections)
        ]
    else:
        slots = [None] * connections
    await asyncio.gather(
        *(
            _connection(stream, share, slot, latencies, statuses)
            for stream, share, slot in zip(streams, shares, slots, strict=True)
        )
    )
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return LoadResult(
        requests=len(latencies),
        seconds=seconds,
        statuses=dict(statuses),
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[int(len(ordered) * 0.99) - 1] * 1000,
    )


def _child(plan: _Plan, out: object) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_run(plan))
    out.put(result)  # type: ignore[attr-defined]


def run_load(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    connections: int,
    rate: float = 0.0,
    arrivals: Arrivals = "even",
) -> LoadResult:
    """Replay `requests` over `connections` keep-alive connections, from another process:
    as fast as the server answers, or at `rate` requests per second in all, offered as
    `arrivals` say (see `arrival_times`)."""
    queue: multiprocessing.Queue[LoadResult] = multiprocessing.Queue()
    plan = _Plan(host, port, requests, connections, rate, arrivals)
    child = multiprocessing.Process(target=_child, args=(plan, queue))
    child.start()
    result = queue.get(timeout=600)
    child.join(timeout=30)
    return result
