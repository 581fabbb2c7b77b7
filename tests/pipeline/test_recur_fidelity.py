"""Working against the Recur the documentation describes: the base URL as the seed writes it, a
wrong base URL, unbinding, and 408. Real web and worker processes, the sandbox over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from sync_worker import redis_keys as keys
from tests.fixtures.stack import Stack, user_event, wait_for

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    """This module's tests share one web and worker, each test finding them as new."""
    return shared_stack


def settled(stack: Stack) -> bool:
    client = stack.redis
    return not client.zcard(keys.DUE) and not client.zcard(keys.INFLIGHT)


def name_of(stack: Stack, user: str) -> str | None:
    customer = stack.sandbox.control.customer_by_external_id(user)
    return None if customer is None else customer["name"]


def test_a_base_url_ending_in_v1_reaches_recur(stack: Stack) -> None:
    # The seed's examples write the base as https://api.recur.tw/v1.
    stack.sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    stack.restart_worker(env={"RECUR_API_URL": stack.sandbox.url + "/v1/"})
    stack.post(user_event("evt_1", "user_1", name="via v1"))
    wait_for(lambda: name_of(stack, "user_1") == "via v1" and settled(stack), timeout=30)
    paths = [call["path"] for call in stack.sandbox.control.requests(method="PATCH")]
    assert paths == ["/v1/customers/external/user_1"]
    assert stack.dead_letters() == []


def test_a_wrong_base_url_pauses_instead_of_dead_lettering(stack: Stack) -> None:
    control = stack.sandbox.control
    for i in range(3):
        control.create_customer(f"u{i}@b.tw", name="old", external_id=f"user_{i}")
    # Outside /v1 the sandbox answers a plain-text 404, as a misrouted request would get.
    worker = stack.restart_worker(env={"RECUR_API_URL": stack.sandbox.url + "/api"}, name="wrong")
    for i in range(3):
        stack.post(user_event(f"evt_{i}", f"user_{i}", name="new"))

    def readyz() -> httpx.Response:
        return httpx.get(stack.web_url + "/readyz", timeout=5)

    wait_for(lambda: readyz().status_code == 503, timeout=30)
    paused = readyz().json()["paused"]
    assert paused["reason"] == "endpoint_not_found"
    assert "RECUR_API_URL" in paused["message"]
    assert '"sync_paused"' in worker.log()
    # Nothing was consumed: every change still waits, none became a not_found dead letter.
    assert stack.dead_letters() == []
    assert stack.waiting() == 3

    stack.restart_worker(name="fixed")
    wait_for(lambda: all(name_of(stack, f"user_{i}") == "new" for i in range(3)), timeout=30)
    wait_for(lambda: readyz().status_code == 200, timeout=10)
    assert stack.dead_letters() == []


def test_unbind_sends_external_id_null(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="a", external_id="user_1")
    response = stack.post(
        {
            "id": "evt_unbind",
            "type": "user.external_id_changed",
            "timestamp": T0.isoformat(),
            "data": {"user_id": "user_1", "new_user_id": None},
        }
    )
    assert response.status_code == 202
    wait_for(lambda: stack.sandbox.control.customer_by_external_id("user_1") is None, timeout=30)
    wait_for(lambda: settled(stack))
    (patch,) = stack.sandbox.control.requests(method="PATCH")
    assert patch["path"] == "/v1/customers/external/user_1"
    assert patch["body"] == {"external_id": None}
    assert patch["status"] == 200
    assert stack.dead_letters() == []


def test_408_is_retried_not_dead_lettered(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    stack.sandbox.control.update_faults(scripts={"user_1": [408, 200]})
    stack.post(user_event("evt_1", "user_1", name="after 408"))
    wait_for(lambda: name_of(stack, "user_1") == "after 408" and settled(stack), timeout=30)
    statuses = [call["status"] for call in stack.sandbox.control.requests(method="PATCH")]
    assert statuses == [408, 200]
    assert stack.dead_letters() == []
