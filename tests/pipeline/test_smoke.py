"""The shortest path through the real system: one signed event becomes one PATCH."""

from __future__ import annotations

from tests.fixtures.stack import Stack, user_event, wait_for


def test_one_event_becomes_one_patch(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    response = stack.post(user_event("evt_1", "user_1", name="王大明", metadata={"plan": "pro"}))
    assert response.status_code == 202
    assert response.json()["status"] == "accepted"

    patches = wait_for(lambda: stack.sandbox.control.requests(method="PATCH"))
    assert [p["body"] for p in patches] == [{"name": "王大明", "metadata": {"plan": "pro"}}]
    customer = stack.sandbox.control.customer_by_external_id("user_1")
    assert customer is not None
    assert customer["name"] == "王大明"


def test_plain_celery_worker_command_syncs_too(web_stack: Stack) -> None:
    """`celery -A sync_worker.celery_app worker`, with no options, runs the same worker, and
    like it does not wait a second for neighbours (mingle) before it takes tasks."""
    worker = web_stack.spawn("celery", "-A", "sync_worker.celery_app", "worker", module="celery")
    wait_for(lambda: "ready." in worker.log(), timeout=60)
    assert "mingle" not in worker.log()
    web_stack.sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    assert web_stack.post(user_event("evt_c", "user_1", name="via celery")).status_code == 202
    wait_for(lambda: web_stack.sandbox.control.requests(method="PATCH"))
    customer = web_stack.sandbox.control.customer_by_external_id("user_1")
    assert customer is not None
    assert customer["name"] == "via celery"
