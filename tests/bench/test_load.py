"""The benchmarks' load generator: a paced run offers a rate, not bursts."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from bench.load import arrival_times, build_request, run_load


def test_even_arrivals_are_one_interval_apart() -> None:
    assert arrival_times(4, 1000, "even") == pytest.approx([0.0, 0.001, 0.002, 0.003])


def test_poisson_arrivals_keep_the_rate_and_bunch_now_and_then() -> None:
    offsets = arrival_times(20_000, 2000, "poisson")
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 2000, rel=0.03)
    assert min(gaps) < 0.1 / 2000  # some arrive almost together
    assert max(gaps) > 4 / 2000  # and some after a lull
    assert arrival_times(100, 2000, "poisson") == arrival_times(100, 2000, "poisson")


@pytest.fixture
def recording_server() -> Iterator[tuple[int, list[float]]]:
    """A keep-alive HTTP server on a thread answering 202 to every POST; yields its port and
    the monotonic time at which each request arrived."""
    arrived: list[float] = []
    loop = asyncio.new_event_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            arrived.append(time.monotonic())
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port, arrived
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    server.close()

    async def finish() -> None:
        handlers = asyncio.all_tasks() - {asyncio.current_task()}
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()

    loop.run_until_complete(finish())
    loop.close()


def test_a_paced_run_spreads_its_requests_over_the_connections(
    recording_server: tuple[int, list[float]],
) -> None:
    """Eight connections at 100 requests/s: one request every 10 ms, not eight at once every
    80 ms (each connection on a clock of its own sent them together)."""
    port, arrived = recording_server
    request = build_request("127.0.0.1", port, "/", b"{}", {})
    result = run_load("127.0.0.1", port, [request] * 48, connections=8, rate=100)
    assert result.statuses == {202: 48}
    assert result.seconds > 0.45  # the last request's slot is at 0.47 s (timers may fire early)
    gaps = sorted(b - a for a, b in itertools.pairwise(arrived))
    # Evenly offered, the median gap is the interval; in bursts of eight it would be ~0.
    assert statistics.median(gaps) > 0.005
