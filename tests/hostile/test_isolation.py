"""The module's shared stack hands each test a quiet system: a send an earlier test left in
flight lands before the flush, not in the next test."""

from __future__ import annotations

from sync_worker import redis_keys as keys
from tests.fixtures.stack import Stack, quiet, user_event, wait_for


def test_a_send_left_in_flight_does_not_land_in_the_next_test(web: Stack) -> None:
    web.sandbox.control.create_customer("left@x.tw", external_id="user_left")
    web.sandbox.control.set_faults(latency_ms=1500)
    assert web.post(user_event("evt_left", "user_left", name="x")).status_code == 202
    wait_for(lambda: web.redis.zcard(keys.INFLIGHT) == 1, timeout=30)  # its PATCH is out

    quiet(web)  # what the next test's `web` fixture does

    assert web.post(user_event("evt_ghost", "user_ghost", name="y")).status_code == 202
    wait_for(lambda: web.redis.zrange(keys.DEAD_LETTERS, 0, -1), timeout=30)
    worker = next(p for p in web.processes if p.name == "worker")
    # Positive marker before the negative: the worker has logged the left send's outcome.
    wait_for(lambda: '"user_id": "user_left", "result"' in worker.log(), timeout=30)
    patches = web.sandbox.control.requests(method="PATCH")
    assert [p["external_id"] for p in patches] == ["user_ghost"]
    assert [
        web.redis.hget(keys.dead_letter(i), "user_id")
        for i in web.redis.zrange(keys.DEAD_LETTERS, 0, -1)
    ] == ["user_ghost"]
