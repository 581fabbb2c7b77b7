"""A lean HTTP/1.1 load generator: N keep-alive connections replaying pre-built requests.

Python HTTP clients spend more CPU per request than the servers we measure, so this one
writes raw bytes and reads just enough of each answer to find its end. It runs in its own
process; requests are built (and signed) before the clock starts.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from collections import Counter
from dataclasses import dataclass


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
    host: str,
    port: int,
    requests: list[bytes],
    latencies: list[float],
    statuses: Counter[int],
    interval: float,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    origin = time.perf_counter()
    for index, raw in enumerate(requests):
        started = time.perf_counter()
        if interval:
            # Paced: each request has its slot, and its latency counts from that slot, so a
            # stall shows up in the percentiles instead of silently slowing the sender.
            slot = origin + index * interval
            if slot > started:
                await asyncio.sleep(slot - started)
            started = slot
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


async def _run(
    host: str, port: int, requests: list[bytes], connections: int, rate: float
) -> LoadResult:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    shares = [requests[i::connections] for i in range(connections)]
    interval = connections / rate if rate else 0.0
    started = time.perf_counter()
    await asyncio.gather(
        *(_connection(host, port, s, latencies, statuses, interval) for s in shares)
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


def _child(
    host: str, port: int, requests: list[bytes], connections: int, rate: float, out: object
) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_run(host, port, requests, connections, rate))
    out.put(result)  # type: ignore[attr-defined]


def run_load(
    host: str, port: int, requests: list[bytes], *, connections: int, rate: float = 0.0
) -> LoadResult:
    """Replay `requests` over `connections` keep-alive connections, from another process:
    as fast as the server answers, or at `rate` requests per second in all."""
    queue: multiprocessing.Queue[LoadResult] = multiprocessing.Queue()
    child = multiprocessing.Process(
        target=_child, args=(host, port, requests, connections, rate, queue)
    )
    child.start()
    result = queue.get(timeout=600)
    child.join(timeout=30)
    return result
