"""The benchmarks' load generator: a paced run offers a rate, not bursts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from bench import load
from bench.load import arrival_times, build_request, run_load

_sleep = asyncio.sleep
"""asyncio's own sleep, for the test server while a test stands in for the sender's."""


def test_even_arrivals_are_one_interval_apart() -> None:
    assert arrival_times(4, 1000, "even") == pytest.approx([0.0, 0.001, 0.002, 0.003])


def test_poisson_arrivals_keep_the_rate_and_bunch_now_and_then() -> None:
    offsets = arrival_times(20_000, 2000, "poisson")
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 2000, rel=0.03)
    assert min(gaps) < 0.1 / 2000  # some arrive almost together
    assert max(gaps) > 4 / 2000  # and some after a lull
    assert arrival_times(100, 2000, "poisson") == arrival_times(100, 2000, "poisson")


@contextlib.contextmanager
def serving(answer_after: float = 0.0) -> Iterator[tuple[int, list[float]]]:
    """A keep-alive HTTP server on a thread answering 202 to every POST `answer_after` seconds
    after reading it; yields its port and the monotonic time at which each request arrived."""
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
            if answer_after:
                await _sleep(answer_after)
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


@pytest.fixture
def recording_server() -> Iterator[tuple[int, list[float]]]:
    with serving() as server:
        yield server


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


def test_no_paced_request_is_counted_faster_than_the_server_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request's latency counts from its slot, but not from before it was sent. uvloop's
    timers fire early (a sleep of under half a millisecond returns at once): here every sleep
    of the sender returns halfway, and the server answers in 3 ms. Counted from the slots,
    requests sent 5 ms early came back in -2 ms."""

    async def halfway(delay: float) -> None:
        await _sleep(delay / 2)

    async def send() -> list[float]:
        stream = await asyncio.open_connection("127.0.0.1", port)
        request = build_request("127.0.0.1", port, "/", b"{}", {})
        first = time.perf_counter() + 0.01
        slots = [first + 0.01 * i for i in range(20)]
        latencies: list[float] = []
        await load._connection(stream, [request] * 20, slots, latencies, Counter())
        return latencies

    with serving(answer_after=0.003) as (port, _):
        monkeypatch.setattr(asyncio, "sleep", halfway)
        latencies = asyncio.run(send())
    assert len(latencies) == 20
    assert min(latencies) >= 0.003
