"""Binding by email: a customer Recur Checkout made (no external id) is found by the user's email
and bound in one PATCH by Recur id. Real web and worker processes, the sandbox over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from sync_worker import redis_keys as keys
from sync_worker.pipeline.ledger import Ledger
from tests.fixtures.stack import ADMIN_TOKEN, Stack, user_event, wait_for


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    """This module's tests share one web and worker, each test finding them as new."""
    return shared_stack


def settled(stack: Stack) -> bool:
    client = stack.redis
    return not client.zcard(keys.DUE) and not client.zcard(keys.INFLIGHT)


def calls(stack: Stack) -> list[dict[str, Any]]:
    return stack.sandbox.control.requests()  # type: ignore[return-value]


def external_id_changed(event_id: str, user_id: str, new_user_id: str | None) -> dict[str, Any]:
    """A `user.external_id_changed` envelope (`None`: unbind)."""
    return {
        "id": event_id,
        "type": "user.external_id_changed",
        "timestamp": datetime.now(tz=UTC).isoformat(),
        "data": {"user_id": user_id, "new_user_id": new_user_id},
    }


def applied_fields(stack: Stack, user_id: str) -> dict[str, Any]:
    """The user's ledger fields (values), none without an entry."""
    entry = Ledger(stack.redis).get(user_id)
    return {} if entry is None else {name: state.value for name, state in entry.fields.items()}


def never_sends_email(stack: Stack) -> None:
    for call in calls(stack):
        assert "email" not in (call["body"] or {}), call


def test_an_unbound_customer_with_the_users_email_is_bound_and_updated(stack: Stack) -> None:
    checkout = stack.sandbox.control.create_customer("wang@b.tw", name="from checkout")
    assert checkout["external_id"] is None
    event = user_event(
        "evt_1", "user_1", name="王大明", email="wang@b.tw", metadata={"plan": "pro"}
    )
    assert stack.post(event).status_code == 202

    wait_for(lambda: stack.sandbox.control.customer_by_external_id("user_1"), timeout=30)
    wait_for(lambda: settled(stack))
    customer = stack.sandbox.control.customer(checkout["id"])
    assert customer is not None
    assert (customer["external_id"], customer["name"]) == ("user_1", "王大明")
    first, lookup, bind = calls(stack)
    assert (first["method"], first["path"], first["status"]) == (
        "PATCH",
        "/v1/customers/external/user_1",
        404,
    )
    assert (lookup["method"], lookup["path"], lookup["query"]["email"]) == (
        "GET",
        "/v1/customers",
        "wang@b.tw",
    )
    assert (bind["method"], bind["path"], bind["status"]) == (
        "PATCH",
        f"/v1/customers/{checkout['id']}",
        200,
    )
    assert bind["body"] == {"name": "王大明", "metadata": {"plan": "pro"}, "external_id": "user_1"}
    never_sends_email(stack)

    # Recorded as applied: the ledger holds it, no dead letter, a log line and a counter.
    applied = Ledger(stack.redis).get("user_1")
    assert applied is not None
    assert applied.fields["name"].value == "王大明"
    assert applied.fields["email"].value == "wang@b.tw"
    assert stack.dead_letters() == []
    # The batch's counters reach Redis in the flush after its settle.
    wait_for(lambda: stack.redis.hget(keys.STATS, "bound_by_email_total") == "1")
    worker_log = next(p for p in stack.processes if p.name == "worker").log()
    assert '"bound_by_email"' in worker_log
    metrics = httpx.get(stack.web_url + "/metrics", timeout=10).text
    assert "recur_sync_bound_by_email_total 1.0" in metrics

    # From now on the user is found by its external id: no second lookup.
    stack.sandbox.control.clear_requests()
    stack.post(user_event("evt_2", "user_1", name="王小明"))
    wait_for(lambda: [c["status"] for c in calls(stack)] == [200], timeout=30)
    assert calls(stack)[0]["path"] == "/v1/customers/external/user_1"


def test_the_email_known_from_the_ledger_is_used(stack: Stack) -> None:
    created = stack.sandbox.control.create_customer("li@b.tw", name="old", external_id="user_2")
    stack.post(user_event("evt_1", "user_2", name="first", email="li@b.tw"))
    ledger = Ledger(stack.redis)
    wait_for(lambda: (entry := ledger.get("user_2")) and "email" in entry.fields, timeout=30)
    wait_for(lambda: settled(stack))
    # Someone unbinds the customer in Recur; the next event carries no email.
    unbind = httpx.patch(
        f"{stack.sandbox.api_url}/customers/{created['id']}",
        json={"external_id": None},
        headers={"Authorization": f"Bearer {stack.sandbox.secret_key}"},
        timeout=10,
    )
    assert unbind.status_code == 200
    stack.post(user_event("evt_2", "user_2", name="second"))
    wait_for(
        lambda: (
            (stack.sandbox.control.customer_by_external_id("user_2") or {}).get("name") == "second"
        ),
        timeout=30,
    )
    lookups = [c for c in calls(stack) if c["method"] == "GET"]
    assert [c["query"].get("email") for c in lookups] == ["li@b.tw"]
    never_sends_email(stack)
    assert stack.dead_letters() == []


def test_a_customer_bound_to_another_id_is_a_conflict_naming_the_holder(stack: Stack) -> None:
    stack.sandbox.control.create_customer("chen@b.tw", name="theirs", external_id="someone_else")
    stack.post(user_event("evt_1", "user_3", name="mine", email="chen@b.tw"))
    (letter,) = wait_for(lambda: stack.dead_letters(), timeout=30)
    assert letter["reason"] == "conflict"
    assert letter["user_id"] == "user_3"
    assert "someone_else" in letter["error_message"]
    held = stack.sandbox.control.customer_by_external_id("someone_else")
    assert held is not None
    assert held["name"] == "theirs"
    assert [c["method"] for c in calls(stack)] == ["PATCH", "GET"], "never rebound"


def test_no_match_is_not_found(stack: Stack) -> None:
    stack.sandbox.control.create_customer("other@b.tw", name="x")
    stack.post(user_event("evt_1", "ghost", name="nobody", email="ghost@b.tw"))
    (letter,) = wait_for(lambda: stack.dead_letters(), timeout=30)
    assert letter["reason"] == "not_found"
    assert [(c["method"], c["status"]) for c in calls(stack)] == [("PATCH", 404), ("GET", 200)]


def test_without_a_known_email_there_is_no_lookup(stack: Stack) -> None:
    stack.sandbox.control.create_customer("anon@b.tw", name="x")
    stack.post(user_event("evt_1", "anon", name="no email"))
    (letter,) = wait_for(lambda: stack.dead_letters(), timeout=30)
    assert letter["reason"] == "not_found"
    assert [c["method"] for c in calls(stack)] == ["PATCH"]


def test_bind_by_email_off(stack: Stack) -> None:
    stack.restart_worker(env={"BIND_BY_EMAIL": "false"}, name="nobind")
    stack.sandbox.control.create_customer("off@b.tw", name="x")
    stack.post(user_event("evt_1", "user_off", name="y", email="off@b.tw"))
    (letter,) = wait_for(lambda: stack.dead_letters(), timeout=30)
    assert letter["reason"] == "not_found"
    assert [c["method"] for c in calls(stack)] == ["PATCH"]


def test_a_replayed_not_found_dead_letter_binds_by_email(stack: Stack) -> None:
    stack.post(user_event("evt_1", "user_4", name="late", email="late@b.tw"))
    (letter,) = wait_for(lambda: stack.dead_letters(), timeout=30)
    assert letter["reason"] == "not_found"
    # The customer comes through Checkout afterwards; the operator replays.
    checkout = stack.sandbox.control.create_customer("late@b.tw", name="from checkout")
    replay = httpx.post(
        f"{stack.web_url}/admin/api/dead-letters/{letter['id']}/replay",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert replay.status_code == 202, replay.text
    wait_for(lambda: stack.sandbox.control.customer_by_external_id("user_4"), timeout=30)
    wait_for(lambda: stack.dead_letters() == [] and settled(stack), timeout=30)
    customer = stack.sandbox.control.customer(checkout["id"])
    assert customer is not None
    assert (customer["external_id"], customer["name"]) == ("user_4", "late")


def test_a_user_unbound_by_an_event_is_not_bound_again_by_email(stack: Stack) -> None:
    """The merchant detached user_5 from its customer (`new_user_id: null`). A late update of
    user_5 must not bind that customer again by email: it is a `not_found` dead letter saying
    why, and replaying it is the operator's decision to bind."""
    created = stack.sandbox.control.create_customer("wu@b.tw", name="old", external_id="user_5")
    stack.post(user_event("evt_1", "user_5", name="first", email="wu@b.tw"))
    wait_for(lambda: "email" in applied_fields(stack, "user_5"), timeout=30)
    wait_for(lambda: settled(stack))
    assert stack.post(external_id_changed("evt_2", "user_5", None)).status_code == 202
    wait_for(lambda: stack.sandbox.control.customer(created["id"])["external_id"] is None)
    wait_for(lambda: settled(stack))

    stack.sandbox.control.clear_requests()
    stack.post(user_event("evt_3", "user_5", name="late"))
    (letter,) = wait_for(lambda: stack.dead_letters(), timeout=30)
    assert letter["reason"] == "not_found"
    assert "unbound" in letter["error_message"]
    assert [(c["method"], c["status"]) for c in calls(stack)] == [("PATCH", 404)]
    customer = stack.sandbox.control.customer(created["id"])
    assert (customer["external_id"], customer["name"]) == (None, "first")

    replay = httpx.post(
        f"{stack.web_url}/admin/api/dead-letters/{letter['id']}/replay",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert replay.status_code == 202, replay.text
    wait_for(lambda: stack.dead_letters() == [] and settled(stack), timeout=30)
    customer = stack.sandbox.control.customer(created["id"])
    assert (customer["external_id"], customer["name"]) == ("user_5", "late")
    # Bound again: a later loss of the customer may be bound by email as before.
    assert "external_id" not in applied_fields(stack, "user_5")


def test_a_rebind_onto_an_unbound_user_ends_its_unbind(stack: Stack) -> None:
    """user_6 was unbound; later another user's customer takes the id user_6: that customer is
    user_6's now, so the unbind no longer holds (a later loss of it may be bound by email)."""
    stack.sandbox.control.create_customer("u6@b.tw", name="six", external_id="user_6")
    stack.sandbox.control.create_customer("u7@b.tw", name="seven", external_id="user_7")
    assert stack.post(external_id_changed("evt_1", "user_6", None)).status_code == 202
    wait_for(lambda: stack.sandbox.control.customer_by_external_id("user_6") is None)
    wait_for(lambda: settled(stack))
    assert applied_fields(stack, "user_6")["external_id"] is None

    assert stack.post(external_id_changed("evt_2", "user_7", "user_6")).status_code == 202
    wait_for(
        lambda: (
            (stack.sandbox.control.customer_by_external_id("user_6") or {}).get("email")
            == "u7@b.tw"
        )
    )
    wait_for(lambda: settled(stack))
    assert "external_id" not in applied_fields(stack, "user_6")
