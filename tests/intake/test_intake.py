"""Every answer of `POST /webhooks/user-updated`, against the real web process and Redis."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from sync_worker import redis_keys as keys
from tests.fixtures.stack import Stack, user_event


@pytest.fixture
def web_stack(shared_web_stack: Stack) -> Stack:
    """This module's tests share one web process, each test finding it as new."""
    return shared_web_stack


def post_raw(stack: Stack, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        stack.web_url + "/webhooks/user-updated", content=body, headers=headers, timeout=10
    )


def test_accepted_only_once_recorded_in_redis(web_stack: Stack) -> None:
    response = web_stack.post(user_event("evt_a", "user_1", name="王大明"))
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "event_id": "evt_a", "user_id": "user_1"}
    stored = web_stack.redis.hgetall(keys.pending("user_1"))
    assert json.loads(stored["v:name"]) == "王大明"
    assert web_stack.redis.zscore(keys.DUE, "user_1") is not None


def test_redelivered_event_is_a_duplicate(web_stack: Stack) -> None:
    payload = user_event("evt_dup", "user_1", name="a")
    assert web_stack.post(payload).status_code == 202
    again = web_stack.post(payload)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert web_stack.redis.hget(keys.pending("user_1"), "version") == "1"


def test_bare_form_takes_its_id_from_the_header(web_stack: Stack) -> None:
    body = json.dumps({"userId": "user_9", "name": "Bare", "email": "b@x.tw"}).encode()
    response = post_raw(web_stack, body, web_stack.sign(body, msg_id="msg_bare"))
    assert response.status_code == 202
    assert response.json()["event_id"] == "msg_bare"
    stored = web_stack.redis.hgetall(keys.pending("user_9"))
    assert json.loads(stored["v:name"]) == "Bare"
    assert json.loads(stored["v:email"]) == "b@x.tw"


def test_body_that_is_not_json_is_400(web_stack: Stack) -> None:
    body = b"{not json"
    response = post_raw(web_stack, body, web_stack.sign(body, msg_id="m1"))
    assert response.status_code == 400


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda h: {k: v for k, v in h.items() if k != "webhook-signature"}, id="missing"
        ),
        pytest.param(lambda h: {**h, "webhook-signature": "v1,AAAA"}, id="wrong"),
        pytest.param(lambda h: {**h, "webhook-id": "other"}, id="other-id"),
    ],
)
def test_bad_signature_is_401(web_stack: Stack, mutate) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(user_event("evt_s", "user_1", name="x")).encode()
    response = post_raw(web_stack, body, mutate(web_stack.sign(body, msg_id="evt_s")))
    assert response.status_code == 401
    assert not web_stack.redis.exists(keys.pending("user_1"))


def test_stale_timestamp_is_401(web_stack: Stack) -> None:
    body = json.dumps(user_event("evt_old", "user_1", name="x")).encode()
    headers = web_stack.sign(body, msg_id="evt_old", at=int(time.time()) - 600)
    assert post_raw(web_stack, body, headers).status_code == 401


def test_body_over_64_kib_is_413(web_stack: Stack) -> None:
    payload = user_event("evt_big", "user_1", name="x", metadata={"blob": "x" * 70_000})
    response = web_stack.post(payload)
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"user_id": "user_1", "name": "x" * 256}, "data.name"),
        ({"user_id": "../etc", "name": "x"}, "data.user_id"),
        ({"user_id": "user_1"}, "data"),
        ({"user_id": "user_1", "name": 5}, "data.name"),
    ],
)
def test_schema_errors_are_422_naming_the_field(
    web_stack: Stack, data: dict[str, object], field: str
) -> None:
    payload = {
        "id": "evt_v",
        "type": "user.updated",
        "timestamp": "2026-11-24T10:00:00Z",
        "data": data,
    }
    response = web_stack.post(payload)
    assert response.status_code == 422
    fields = [item["field"] for item in response.json()["error"]["fields"]]
    assert field in fields
    assert not web_stack.redis.exists(keys.pending("user_1"))


def test_redis_down_is_503_and_nothing_half_accepted(web_stack: Stack) -> None:
    web_stack.redis_server.crash()
    try:
        response = web_stack.post(user_event("evt_down", "user_1", name="x"))
        assert response.status_code == 503
    finally:
        web_stack.redis_server.start()
    # the merchant retries the same delivery: it is accepted now, not seen as a duplicate
    retried = web_stack.post(user_event("evt_down", "user_1", name="x"))
    assert retried.status_code == 202
