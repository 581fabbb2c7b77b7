"""Flow control shared through Redis: the rate limit across processes, the 429 cool-down."""

from __future__ import annotations

from datetime import datetime

import pytest
import redis

from sync_worker.pipeline.flow import FlowControl, Throttled
from tests.fixtures.stack import Stack, user_event, wait_for


def test_token_bucket_refuses_beyond_the_burst(redis_url: str) -> None:
    flow = FlowControl(redis.Redis.from_url(redis_url), rate_per_second=1, burst=3)
    assert [flow.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = flow.try_acquire()
    assert 0 < wait <= 1.0


def test_acquire_gives_up_past_max_wait(redis_url: str) -> None:
    slept: list[float] = []
    flow = FlowControl(
        redis.Redis.from_url(redis_url), rate_per_second=0.5, burst=1, sleep=slept.append
    )
    flow.acquire(max_wait=0)
    with pytest.raises(Throttled) as throttled:
        flow.acquire(max_wait=0.5)
    assert throttled.value.wait > 0.5
    assert slept == []


def test_cool_down_stops_every_caller_and_only_extends(redis_url: str) -> None:
    first = FlowControl(redis.Redis.from_url(redis_url), rate_per_second=100, burst=100)
    second = FlowControl(redis.Redis.from_url(redis_url), rate_per_second=100, burst=100)
    first.cool_down(2.0)
    first.cool_down(0.5)  # a shorter Retry-After does not cut the cool-down short
    assert second.try_acquire() > 1.0
    assert second.cooldown_remaining() > 1.0


def test_pause_is_shared_and_says_why(redis_url: str) -> None:
    flow = FlowControl(redis.Redis.from_url(redis_url), rate_per_second=1, burst=1)
    assert flow.pause(reason="unauthorized", status=401, message="bad key") is True
    assert flow.pause(reason="unauthorized", status=401, message="bad key") is False
    paused = flow.paused()
    assert paused is not None
    assert (paused["reason"], paused["status"]) == ("unauthorized", 401)
    assert flow.resume() is True
    assert flow.paused() is None


def test_two_workers_share_one_rate_limit(stack: Stack) -> None:
    users = [f"user_{i}" for i in range(12)]
    stack.sandbox.control.create_customers(
        [{"email": f"{u}@x.tw", "name": "old", "external_id": u} for u in users]
    )
    limits = {"RATE_LIMIT_PER_SECOND": "4", "RATE_LIMIT_BURST": "1"}
    stack.restart_worker(env=limits, name="limited-a")
    stack.start_worker(name="limited-b", env=limits)
    for user in users:
        stack.post(user_event(f"evt_{user}", user, name="limited"))
    sent = wait_for(
        lambda: (
            len(stack.sandbox.control.requests(method="PATCH")) == len(users)
            and stack.sandbox.control.requests(method="PATCH")
        ),
        timeout=30,
    )
    moments = sorted(datetime.fromisoformat(r["at"]).timestamp() for r in sent)
    # 12 calls at 4/s with a burst of 1 take 11 intervals of 0.25 s whatever the workers (2.75 s;
    # the sandbox stamps requests when it answers, hence the margin). Two limits of 4/s, one per
    # worker, would take half that; no limit at all, a tenth of a second.
    assert moments[-1] - moments[0] >= 11 * 0.25 * 0.8
    for start in moments:
        in_window = [m for m in moments if start <= m < start + 1.0]
        assert len(in_window) <= 5


def test_workers_starting_together_keep_the_shared_limit_from_the_first_second(
    web_stack: Stack,
) -> None:
    """A deployment starting many workers at once, a backlog waiting: every slot's first call
    happens together. The limit holds from the first PATCH on, within 5 % in every second
    (plus the burst), not only once the workers are warm."""
    rate, burst, users = 20, 1, [f"user_{i}" for i in range(100)]
    web_stack.sandbox.control.create_customers(
        [{"email": f"{u}@x.tw", "name": "old", "external_id": u} for u in users]
    )
    for user in users:
        web_stack.post(user_event(f"evt_{user}", user, name="cold"))
    limits = {
        "RATE_LIMIT_PER_SECOND": str(rate),
        "RATE_LIMIT_BURST": str(burst),
        "WORKER_CONCURRENCY": "16",
    }
    workers = [
        web_stack.spawn(f"cold-{n}", "worker", "--hostname", f"cold-{n}@%h", env=limits)
        for n in range(4)
    ]
    sent = wait_for(
        lambda: (
            len(patches := web_stack.sandbox.control.requests(method="PATCH")) >= len(users)
            and patches
        ),
        timeout=90,
    )
    assert all(worker.alive() for worker in workers)
    moments = sorted(datetime.fromisoformat(r["at"]).timestamp() for r in sent)
    busiest = max(sum(start <= m < start + 1.0 for m in moments) for start in moments)
    assert busiest <= rate * 1.05 + burst, f"{busiest} PATCHes within one second"
