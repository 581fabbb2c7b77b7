"""Sync semantics end to end: real web and worker processes, real Redis, the sandbox over HTTP."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis

from sync_worker import redis_keys as keys
from sync_worker.pipeline.ledger import Ledger
from tests.fixtures.stack import Stack, user_event, wait_for

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    """This module's tests share one web and worker, each test finding them as new."""
    return shared_stack


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def patches(stack: Stack, user: str | None = None) -> list[dict]:  # type: ignore[type-arg]
    return stack.sandbox.control.requests(method="PATCH", external_id=user)  # type: ignore[return-value]


def settled(stack: Stack) -> bool:
    client = stack.redis
    return not client.zcard(keys.DUE) and not client.zcard(keys.INFLIGHT)


def name_of(stack: Stack, user: str) -> str | None:
    customer = stack.sandbox.control.customer_by_external_id(user)
    assert customer is not None
    return customer["name"]


def test_a_burst_of_ten_becomes_one_patch_with_merged_fields(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    for i in range(10):
        fields: dict[str, object] = {"name": f"name {i}"}
        if i == 4:
            fields = {"metadata": {"plan": "pro"}}
        assert stack.post(user_event(f"evt_{i}", "user_1", at=at(i), **fields)).status_code == 202
    wait_for(lambda: patches(stack))
    wait_for(lambda: settled(stack))
    sent = patches(stack)
    assert [p["body"] for p in sent] == [{"name": "name 9", "metadata": {"plan": "pro"}}]


def test_out_of_order_events_keep_the_newest_per_field(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    stack.post(user_event("evt_new", "user_1", at=at(10), name="newest"))
    stack.post(user_event("evt_old", "user_1", at=at(5), name="older", metadata={"k": 1}))
    wait_for(lambda: patches(stack) and settled(stack))
    assert name_of(stack, "user_1") == "newest"
    assert [p["body"] for p in patches(stack)] == [{"name": "newest", "metadata": {"k": 1}}]
    # a late event older than the applied state changes nothing and sends nothing
    assert stack.post(user_event("evt_late", "user_1", at=at(1), name="ancient")).status_code == 202
    stack.post(user_event("evt_marker", "user_2", at=at(1), name="marker"))
    stack.sandbox.control.create_customer("c@d.tw", name="m", external_id="user_2")
    wait_for(lambda: patches(stack, "user_2"))
    assert len(patches(stack, "user_1")) == 1
    assert name_of(stack, "user_1") == "newest"


@contextlib.contextmanager
def watching(stack: Stack, command: str) -> Iterator[threading.Event]:
    """An event set once Redis runs `command` (as MONITOR prints it, e.g. from a script)."""
    seen = threading.Event()
    client = redis.Redis.from_url(stack.redis_server.url)
    monitor = client.monitor()
    listening = monitor.__enter__()  # MONITOR is on once this returns

    def listen() -> None:
        with contextlib.suppress(redis.RedisError, OSError, ValueError, AttributeError):
            for line in listening.listen():
                if line["command"] == command:
                    seen.set()
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        monitor.__exit__(None, None, None)  # closes the connection: the listener returns
        thread.join(timeout=5)
        client.close()


def test_event_arriving_during_a_slow_patch_is_sent_after_it(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    stack.sandbox.control.update_faults(latency_ms=1500)
    with watching(stack, f"HGETALL {keys.pending('user_1')}") as read:
        stack.post(user_event("evt_1", "user_1", at=at(1), name="first"))
        # The worker's snapshot script has read the change it sends (its slow PATCH is next):
        # what is accepted from now on is a change of its own, sent after that PATCH.
        wait_for(read.is_set)
    stack.post(user_event("evt_2", "user_1", at=at(2), name="second"))
    wait_for(lambda: len(patches(stack)) == 2 and settled(stack), timeout=30)
    assert [p["body"]["name"] for p in patches(stack)] == ["first", "second"]
    assert name_of(stack, "user_1") == "second"


def test_server_errors_are_retried_until_success(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    stack.sandbox.control.update_faults(scripts={"user_1": [500, 502, 503, 200]})
    stack.post(user_event("evt_1", "user_1", name="after errors"))
    wait_for(lambda: name_of(stack, "user_1") == "after errors", timeout=30)
    statuses = [p["status"] for p in patches(stack)]
    assert statuses == [500, 502, 503, 200]
    assert stack.dead_letters() == []


def test_429_retry_after_is_honoured(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    stack.sandbox.control.update_faults(scripts={"user_1": [429, 200]}, retry_after_seconds=2)
    stack.post(user_event("evt_1", "user_1", name="patient"))
    wait_for(lambda: name_of(stack, "user_1") == "patient", timeout=30)
    refused, accepted = patches(stack)
    assert (refused["status"], accepted["status"]) == (429, 200)
    gap = datetime.fromisoformat(accepted["at"]) - datetime.fromisoformat(refused["at"])
    assert gap.total_seconds() >= 2.0


def test_timeouts_are_retried(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    stack.sandbox.control.update_faults(latency_ms=3000)  # above the 2 s read timeout
    stack.post(user_event("evt_1", "user_1", name="eventually"))
    # a request the client gave up on is not in the sandbox's log: count the worker's failures
    wait_for(lambda: stack.redis.hget(keys.STATS, "patches_total|status_class=error"), timeout=20)
    stack.sandbox.control.update_faults(latency_ms=0)
    wait_for(lambda: settled(stack) and name_of(stack, "user_1") == "eventually", timeout=30)
    assert stack.dead_letters() == []


def test_not_found_conflict_and_invalid_land_in_the_dead_letter_queue(stack: Stack) -> None:
    control = stack.sandbox.control
    control.create_customer("a@b.tw", name="a", external_id="user_1")
    control.create_customer("b@b.tw", name="b", external_id="user_2")
    control.create_customer("c@b.tw", name="c", external_id="user_3")
    control.update_faults(scripts={"user_3": [422]})
    stack.post(user_event("evt_404", "ghost", name="nobody"))
    stack.post(
        {
            "id": "evt_409",
            "type": "user.external_id_changed",
            "timestamp": T0.isoformat(),
            "data": {"user_id": "user_1", "new_user_id": "user_2"},
        }
    )
    stack.post(user_event("evt_422", "user_3", name="refused"))
    letters = wait_for(lambda: len(stack.dead_letters()) == 3 and stack.dead_letters(), timeout=30)
    by_user = {letter["user_id"]: letter for letter in letters}
    assert by_user["ghost"]["reason"] == "not_found"
    assert by_user["ghost"]["http_status"] == "404"
    assert by_user["ghost"]["error_code"] == "resource_not_found"
    assert json.loads(by_user["ghost"]["request"]) == {"name": "nobody"}
    assert json.loads(by_user["ghost"]["event_ids"]) == ["evt_404"]
    assert by_user["user_1"]["reason"] == "conflict"
    assert json.loads(by_user["user_1"]["request"]) == {"external_id": "user_2"}
    assert by_user["user_3"]["reason"] == "rejected"
    for letter in letters:
        assert letter["attempts"] == "1"
        assert float(letter["first_failure"]) <= float(letter["last_failure"])
        assert letter["replay_count"] == "0"
    assert settled(stack)


def test_rebind_moves_the_customer_to_the_new_id(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="a", external_id="old_1")
    stack.post(
        {
            "id": "evt_mv",
            "type": "user.external_id_changed",
            "timestamp": T0.isoformat(),
            "data": {"user_id": "old_1", "new_user_id": "new_1"},
        }
    )
    wait_for(lambda: stack.sandbox.control.customer_by_external_id("new_1"), timeout=20)
    assert stack.sandbox.control.customer_by_external_id("old_1") is None
    wait_for(lambda: settled(stack))
    client = stack.redis
    assert Ledger(client).get("new_1") is not None
    assert Ledger(client).get("old_1") is None
    # the merchant's next update uses the new id, and reaches the same customer
    stack.post(user_event("evt_after", "new_1", name="renamed"))
    wait_for(lambda: name_of(stack, "new_1") == "renamed")


def test_retry_budget_exhausted_dead_letters(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="a", external_id="user_1")
    stack.restart_worker(env={"RETRY_BUDGET_SECONDS": "2"})
    stack.sandbox.control.update_faults(outage=True)
    stack.post(user_event("evt_1", "user_1", name="never"))
    letters = wait_for(lambda: stack.dead_letters(), timeout=30)
    assert letters[0]["reason"] == "retries_exhausted"
    assert letters[0]["http_status"] == "503"
    assert int(letters[0]["attempts"]) >= 2


def test_unauthorized_pauses_without_losing_anything_then_resumes(stack: Stack) -> None:
    control = stack.sandbox.control
    for i in range(3):
        control.create_customer(f"u{i}@b.tw", name="old", external_id=f"user_{i}")
    stack.restart_worker(env={"RECUR_SECRET_KEY": "sk_test_revoked"}, name="badkey")
    for i in range(3):
        stack.post(user_event(f"evt_{i}", f"user_{i}", name="new"))

    def readyz() -> int:
        return httpx.get(stack.web_url + "/readyz", timeout=5).status_code

    wait_for(lambda: readyz() == 503, timeout=20)
    body = httpx.get(stack.web_url + "/readyz", timeout=5).json()
    assert body["reason"] == "sync_paused"
    assert all(name_of(stack, f"user_{i}") == "old" for i in range(3))
    assert stack.dead_letters() == []
    assert stack.waiting() == 3

    stack.restart_worker(name="goodkey")  # the key is fixed: the probe succeeds, the sync resumes
    wait_for(lambda: all(name_of(stack, f"user_{i}") == "new" for i in range(3)), timeout=30)
    assert readyz() == 200
    assert stack.dead_letters() == []
