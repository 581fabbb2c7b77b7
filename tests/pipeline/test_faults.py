"""Faults the real system must survive: killed workers, a restarted Redis, lost messages,
two workers racing. Each asserts what the sandbox finally holds: nothing lost, nothing stale."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
import redis

from sync_worker.events import UserEvent
from sync_worker.pending import PendingStore
from tests.fixtures.stack import Stack, user_event, wait_for

pytestmark = pytest.mark.slow
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def seed(stack: Stack, users: int) -> list[str]:
    ids = [f"user_{i}" for i in range(users)]
    stack.sandbox.control.create_customers(
        [{"email": f"{u}@example.com", "name": "old", "external_id": u} for u in ids]
    )
    return ids


def names(stack: Stack, ids: list[str]) -> dict[str, str | None]:
    found = {}
    for user in ids:
        customer = stack.sandbox.control.customer_by_external_id(user)
        found[user] = None if customer is None else customer["name"]
    return found


def all_named(stack: Stack, expected: dict[str, str]) -> bool:
    return names(stack, list(expected)) == expected


def test_worker_killed_mid_stream_loses_nothing(stack: Stack) -> None:
    ids = seed(stack, 30)
    stack.sandbox.control.update_faults(latency_ms=300)
    expected = {user: f"{user} v2" for user in ids}
    for user in ids:
        assert stack.post(user_event(f"evt_{user}", user, name=expected[user])).status_code == 202
    wait_for(lambda: stack.sandbox.control.requests(method="PATCH"), timeout=20)
    worker = next(p for p in stack.processes if p.name == "worker")
    worker.kill()  # SIGKILL while PATCHes are in flight
    stack.sandbox.control.update_faults(latency_ms=0)
    stack.start_worker(name="worker-after-crash")
    wait_for(lambda: all_named(stack, expected), timeout=60)
    assert stack.dead_letters() == []


def test_redis_restart_with_aof_loses_nothing(stack: Stack) -> None:
    ids = seed(stack, 20)
    stack.sandbox.control.update_faults(latency_ms=200)
    expected = {user: f"{user} after restart" for user in ids}
    for user in ids:
        assert stack.post(user_event(f"evt_{user}", user, name=expected[user])).status_code == 202
    stack.redis_server.restart()
    stack.sandbox.control.update_faults(latency_ms=0)
    wait_for(lambda: all_named(stack, expected), timeout=90)
    assert stack.dead_letters() == []


def test_sweeper_recovers_a_lost_message(stack: Stack) -> None:
    ids = seed(stack, 1)
    # Accept and claim exactly as the dispatcher would, but never publish: the message is lost.
    pending = PendingStore(
        redis.Redis.from_url(stack.redis_server.url),
        window_seconds=0,
        max_wait_seconds=1,
        dedup_ttl_seconds=60,
        lease_seconds=3,
    )
    for proc in stack.processes:
        if proc.name == "worker":
            proc.terminate()  # no worker may claim the user before the lost message does
    pending.accept(UserEvent("evt_lost", "user.updated", ids[0], 1000, {"name": "recovered"}))
    claims = pending.claim_due(10)
    assert [c.user_id for c in claims] == ids
    stack.start_worker(name="worker-after-loss")
    wait_for(lambda: all_named(stack, {ids[0]: "recovered"}), timeout=30)


def test_two_workers_never_leave_a_stale_value(stack: Stack) -> None:
    ids = seed(stack, 10)
    stack.start_worker(name="worker-b")
    rng = random.Random(7)
    events = []
    for user in ids:
        for version in range(6):
            moment = T0 + timedelta(seconds=version)
            events.append(
                user_event(f"evt_{user}_{version}", user, at=moment, name=f"{user} v{version}")
            )
    rng.shuffle(events)  # deliveries arrive in any order, spread over both workers' batches
    for payload in events:
        assert stack.post(payload).status_code == 202
    expected = {user: f"{user} v5" for user in ids}
    wait_for(lambda: all_named(stack, expected), timeout=60)
    sent: dict[str, list[int]] = {}
    for request in stack.sandbox.control.requests(method="PATCH"):
        assert request["status"] == 200
        version = int(request["body"]["name"].rsplit("v", 1)[1])
        sent.setdefault(request["external_id"], []).append(version)
    for user, versions in sent.items():
        assert versions == sorted(set(versions)), f"{user} went back in time: {versions}"
