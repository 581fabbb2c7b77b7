"""The dispatcher's batching and pacing, on a real Redis: a claim goes out in as few tasks as the
batch size allows, evenly, a round that took everyone due is followed by the next an interval after
its start, one cut short by the queue's room goes again at once, and after an empty round it waits
only until the earliest user falls due."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from sync_worker import redis_keys as keys
from sync_worker.pipeline.dispatch import Dispatcher
from sync_worker.pipeline.records import Claim
from sync_worker.runtime import Runtime
from sync_worker.settings import load_settings
from tests.operators.conftest import accept

INTERVAL = 0.5


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Iterator[Runtime]:
    env = {
        "REDIS_URL": redis_url,
        "RECUR_API_URL": "http://127.0.0.1:9",  # never called: nothing here syncs
        "RECUR_SECRET_KEY": "sk_test_sandbox",
        "DEBOUNCE_WINDOW_SECONDS": "0",
        "WORKER_CONCURRENCY": "16",
        "SYNC_BATCH_SIZE": "50",
        "DISPATCH_INTERVAL_SECONDS": str(INTERVAL),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    process = Runtime(load_settings())
    yield process
    process.close()


def test_a_claim_goes_out_in_as_few_tasks_as_the_batch_size_allows(runtime: Runtime) -> None:
    for n in range(10):
        accept(runtime, f"user_{n}", name="x")
    published: list[list[Claim]] = []
    dispatcher = Dispatcher(runtime, publish=published.append, queue_depth=lambda: 0, hostname="t")
    assert dispatcher.tick() == 10
    # Its users are sent together (senders.py): spread over the 16 slots, that would be ten
    # tasks of one user, each paying a task's cost.
    assert [len(batch) for batch in published] == [10]
    for n in range(10, 70):
        accept(runtime, f"user_{n}", name="x")
    assert dispatcher.tick() == 60
    assert [len(batch) for batch in published[1:]] == [30, 30]  # not 50 and 10


def test_behind_a_backlog_a_claim_goes_out_in_no_more_tasks_than_the_room(
    runtime: Runtime,
) -> None:
    for n in range(200):
        accept(runtime, f"user_{n}", name="x")
    published: list[list[Claim]] = []
    # Room for two more tasks (30 of the 32 queued): two full batches, not 16 tasks of six or
    # seven users that overfill the queue and cost a task's overhead every few users.
    dispatcher = Dispatcher(runtime, publish=published.append, queue_depth=lambda: 30, hostname="t")
    assert dispatcher.tick() == 100
    assert [len(batch) for batch in published] == [50, 50]


def rounds_in(
    runtime: Runtime, seconds: float, *, queue_depth: int = 0, publish_seconds: float = 0
) -> list[float]:
    """Run the dispatcher's loop for `seconds`, each publish taking `publish_seconds`; the
    times its rounds started."""
    started: list[float] = []
    dispatcher = Dispatcher(
        runtime,
        publish=lambda _: time.sleep(publish_seconds),
        queue_depth=lambda: queue_depth,
        hostname="t",
    )
    tick = dispatcher.tick

    def counted_tick() -> int:
        started.append(time.monotonic())
        return tick()

    dispatcher.tick = counted_tick  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,))
    thread.start()
    stop.wait(seconds)
    stop.set()
    thread.join(timeout=5)
    return started


def test_after_a_claim_it_waits_the_interval_unless_the_room_cut_it_short(
    runtime: Runtime,
) -> None:
    for n in range(3):
        accept(runtime, f"user_{n}", name="x")
    # The first round took the three; the next is an interval later, not at once, so that the
    # users falling due meanwhile go out together.
    assert len(rounds_in(runtime, 0.3)) == 1
    for n in range(60):
        accept(runtime, f"user_{n}", name="y")
    # Room for one task of 50 users (31 of the 32 queue places taken): 50, then the rest at once.
    started = rounds_in(runtime, 0.3, queue_depth=31)
    assert len(started) >= 2
    assert started[1] - started[0] < INTERVAL / 2
    assert runtime.redis.zcard(keys.DUE) == 0


def test_the_interval_after_a_claim_counts_from_the_rounds_start(runtime: Runtime) -> None:
    accept(runtime, "user_1", name="x")
    # The round's publish takes 0.3 s: the next round starts 0.5 s after the first began, not
    # 0.5 s after it ended, so the round's own time is not added to the next users' wait.
    started = rounds_in(runtime, 0.7, publish_seconds=0.3)
    assert len(started) >= 2
    assert INTERVAL * 0.9 < started[1] - started[0] < INTERVAL + 0.15


def test_after_an_empty_round_it_waits_only_until_the_earliest_user_is_due(
    runtime: Runtime,
) -> None:
    accept(runtime, "user_1", name="x")
    runtime.redis.zadd(keys.DUE, {"user_1": time.time() + 0.2})
    started = rounds_in(runtime, 0.45)
    assert runtime.redis.zcard(keys.DUE) == 0  # claimed before the interval (0.5 s) was over
    assert 0.15 < started[1] - started[0] < 0.4
