"""A call whose answer was lost may have been applied: a following 404/409 is checked by a read
of Recur before anything is dead-lettered. Real web and worker processes, the sandbox over HTTP,
whose `lost_answers` fault applies a PATCH and answers it after the worker's read timeout."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sync_worker import redis_keys as keys
from sync_worker.pipeline.ledger import Ledger
from tests.fixtures.stack import Stack, wait_for

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
LOST_ANSWER_MS = 4000
"""Longer than the stack's 2 s read timeout: the worker never sees the answer."""


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    """This module's tests share one web and worker, each test finding them as new."""
    return shared_stack


def rebind(old: str, new: str | None) -> dict[str, Any]:
    return {
        "id": f"evt_{old}_{new}",
        "type": "user.external_id_changed",
        "timestamp": T0.isoformat(),
        "data": {"user_id": old, "new_user_id": new},
    }


def settled(stack: Stack) -> bool:
    client = stack.redis
    return not client.zcard(keys.DUE) and not client.zcard(keys.INFLIGHT)


def calls(stack: Stack) -> list[tuple[str, str, int]]:
    return [(c["method"], c["path"], c["status"]) for c in stack.sandbox.control.requests()]


def assert_rebound_without_dead_letter(stack: Stack) -> None:
    wait_for(lambda: stack.sandbox.control.customer_by_external_id("new_1"), timeout=30)
    ledger = Ledger(stack.redis)
    wait_for(lambda: settled(stack) and ledger.get("new_1") is not None)
    assert stack.dead_letters() == []
    assert stack.sandbox.control.customer_by_external_id("old_1") is None
    assert ledger.get("old_1") is None
    assert calls(stack) == [
        ("PATCH", "/v1/customers/external/old_1", 200),  # applied; its answer never arrived
        ("PATCH", "/v1/customers/external/old_1", 404),
        ("GET", "/v1/customers/external/new_1", 200),
    ]
    # The batch's counters reach Redis in the flush after its settle.
    wait_for(lambda: stack.redis.hget(keys.STATS, "lost_answers_confirmed_total") == "1")


def test_a_rebind_applied_but_unanswered_is_not_dead_lettered(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="a", external_id="old_1")
    stack.sandbox.control.update_faults(lost_answers={"old_1": 1}, lost_answer_ms=LOST_ANSWER_MS)
    assert stack.post(rebind("old_1", "new_1")).status_code == 202
    assert_rebound_without_dead_letter(stack)


def test_the_lost_answer_of_an_earlier_round_counts_too(stack: Stack) -> None:
    # One attempt per round: the timeout hands the change back, the next round gets the 404.
    stack.restart_worker(env={"RETRY_FAST_ATTEMPTS": "1"}, name="one_attempt")
    stack.sandbox.control.create_customer("a@b.tw", name="a", external_id="old_1")
    stack.sandbox.control.update_faults(lost_answers={"old_1": 1}, lost_answer_ms=LOST_ANSWER_MS)
    assert stack.post(rebind("old_1", "new_1")).status_code == 202
    assert_rebound_without_dead_letter(stack)


def test_an_unbind_applied_but_unanswered_is_not_dead_lettered(stack: Stack) -> None:
    created = stack.sandbox.control.create_customer("a@b.tw", name="a", external_id="old_1")
    stack.sandbox.control.update_faults(lost_answers={"old_1": 1}, lost_answer_ms=LOST_ANSWER_MS)
    assert stack.post(rebind("old_1", None)).status_code == 202
    wait_for(lambda: len(calls(stack)) >= 2 and settled(stack), timeout=30)
    assert stack.dead_letters() == []
    customer = stack.sandbox.control.customer(created["id"])
    assert customer is not None
    assert customer["external_id"] is None
    assert calls(stack) == [
        ("PATCH", "/v1/customers/external/old_1", 200),
        ("PATCH", "/v1/customers/external/old_1", 404),
    ]


def test_a_real_conflict_after_a_5xx_is_still_a_conflict(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="a", external_id="old_1")
    stack.sandbox.control.create_customer("b@b.tw", name="b", external_id="new_1")
    stack.sandbox.control.update_faults(scripts={"old_1": [502]})
    assert stack.post(rebind("old_1", "new_1")).status_code == 202
    (letter,) = wait_for(lambda: stack.dead_letters(), timeout=30)
    assert letter["reason"] == "conflict"
    # The read showed the old id still bound: the rebind did not happen.
    assert ("GET", "/v1/customers/external/old_1", 200) in calls(stack)
    assert Ledger(stack.redis).get("new_1") is None
