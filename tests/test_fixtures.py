"""The shared fixtures hand every test a clean Redis, whatever ran before it in the session."""

from __future__ import annotations

from pathlib import Path

import pytest

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
