"""The shared fixtures hand every test a clean Redis, whatever ran before it in the session, and
a module's shared stack hands each of its tests what a new one would."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync_worker import redis_keys as keys
from tests.fixtures.stack import SharedStack, user_event, wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_a_module_scoped_fixture_starts_on_what_no_earlier_test_left(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As tests/hostile's stack: module-scoped, on the session's Redis, set up before the first
    # per-test flush of its module; the module before it leaves a user pending.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest('pytest_plugins = ["tests.fixtures.redis_server"]')
    pytester.makepyfile(
        test_a_leaves="""
def test_accepts_and_stops(redis_client):
    redis_client.hset("rs:pending:user_1", "name", "x")
""",
        test_b_module="""
import pytest
import redis


@pytest.fixture(scope="module")
def keys_at_module_start(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client.keys("*")
    client.close()


def test_nothing_left_for_the_module(keys_at_module_start):
    assert keys_at_module_start == []
""",
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-p", "no:cacheprovider", "test_a_leaves.py", "test_b_module.py"
    )
    result.assert_outcomes(passed=2)


def test_a_shared_stack_hands_each_test_what_a_new_one_would(module_stack: SharedStack) -> None:
    first = module_stack.fresh()
    first.sandbox.control.create_customer("left@x.tw", external_id="user_left")
    first.sandbox.control.update_faults(latency_ms=1000)
    assert first.post(user_event("evt_left", "user_left", name="x")).status_code == 202
    wait_for(lambda: first.redis.zcard(keys.INFLIGHT) == 1, timeout=30)  # its PATCH is out

    second = module_stack.fresh()  # what the next test's fixture does
    assert second.redis.keys("*") == []
    assert second.sandbox.control.requests() == []
    worker = next(p for p in second.processes if p.name == "worker")
    assert "ready." not in worker.log(), "the log starts with the test"

    second.restart_worker(env={"BIND_BY_EMAIL": "false"}, name="reconfigured")
    third = module_stack.fresh()
    assert [(p.name, p.alive()) for p in third.processes] == [("web", True), ("worker", True)]
    assert not worker.alive(), "started again, not reused: the test replaced it"
    assert all(not p.alive() for p in second.processes if p.name == "reconfigured")
    assert third.env == module_stack.env
