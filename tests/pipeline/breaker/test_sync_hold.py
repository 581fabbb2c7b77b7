"""The sync path under an open breaker, on real Redis and the sandbox: work is held, not counted,
the retry budget does not burn, and the dispatcher's one probe decides."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sync_worker import redis_keys as keys
from sync_worker.pipeline.dispatch import Dispatcher
from sync_worker.pipeline.records import Claim
from sync_worker.runtime import Runtime
from sync_worker.settings import load_settings
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import wait_for
from tests.operators.conftest import accept, sync_due

USERS = ["user_1", "user_2", "user_3"]


@pytest.fixture
def runtime(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, sandbox: SandboxHandle
) -> Iterator[Runtime]:
    """A worker's collaborators with a breaker that trips on the second failure."""
    env = {
        "REDIS_URL": redis_url,
        "RECUR_API_URL": sandbox.url,
        "RECUR_SECRET_KEY": sandbox.secret_key,
        "DEBOUNCE_WINDOW_SECONDS": "0",
        "RETRY_FAST_ATTEMPTS": "1",
        "RETRY_BUDGET_SECONDS": "1",
        "RETRY_BACKOFF_BASE_SECONDS": "0.1",
        "RETRY_BACKOFF_MAX_SECONDS": "0.2",
        "BREAKER_MIN_CALLS": "2",
        "BREAKER_COOL_DOWN_SECONDS": "30",
        "BREAKER_MAX_COOL_DOWN_SECONDS": "120",
        "LOG_FORMAT": "json",
        # One call at a time, so which call trips the breaker is known: the second. Sent
        # together, every call of a batch is already in flight when the first answer comes.
        "WORKER_CONCURRENCY": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    process = Runtime(load_settings())
    yield process
    process.close()


def attempts(runtime: Runtime, user: str) -> int:
    return int(runtime.redis.hget(keys.pending(user), "attempts") or 0)


def end_cool_down(runtime: Runtime) -> None:
    """Skip the rest of the cool-down and make every waiting user due now, user_1 last."""
    runtime.redis.hset(keys.BREAKER, "open_until", "0")
    waiting: list[bytes] = runtime.redis.zrange(keys.DUE, 0, -1)  # type: ignore[assignment]
    runtime.redis.zadd(keys.DUE, {u: 1 if u == b"user_1" else 0 for u in waiting})


def changed_at_recur(runtime: Runtime, sandbox: SandboxHandle) -> None:
    """Every user exists in Recur named "old", and a change to "new <user>" is pending."""
    for user in USERS:
        sandbox.control.create_customer(f"{user}@x.tw", name="old", external_id=user)
        accept(runtime, user, name=f"new {user}")


def dispatcher(runtime: Runtime, published: list[list[Claim]]) -> Dispatcher:
    return Dispatcher(runtime, publish=published.append, queue_depth=lambda: 0, hostname="t")


def test_held_work_is_uncounted_and_outlives_the_retry_budget(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    changed_at_recur(runtime, sandbox)
    sandbox.control.set_faults(outage=True)

    outcomes = sync_due(runtime)
    assert [o.result for o in outcomes] == ["retry", "held", "held"]  # the 2nd call tripped it
    assert [attempts(runtime, u) for u in USERS] == [1, 0, 0]
    assert runtime.breaker.view().state == "open"

    # Let the whole retry budget pass since user_1's first failure, as Redis recorded it.
    first_failed = float(runtime.redis.hget(keys.pending("user_1"), "retry_since"))  # type: ignore[arg-type]
    budget = runtime.settings.retry_budget_seconds
    wait_for(lambda: time.time() - first_failed > budget, timeout=10, interval=0.05)
    runtime.redis.zadd(keys.DUE, {"user_1": 0})
    assert [o.result for o in sync_due(runtime)] == ["held"]  # claimed before it opened
    assert len(sandbox.control.requests(method="PATCH")) == 2

    published: list[list[Claim]] = []
    ticker = dispatcher(runtime, published)
    assert ticker.tick() == 0  # open: nothing claimed
    end_cool_down(runtime)
    assert ticker.tick() == 1  # the probe, sent here and failing
    assert published == []
    assert runtime.breaker.snapshot()["cool_down_seconds"] == 60
    assert len(sandbox.control.requests(method="PATCH")) == 3

    sandbox.control.set_faults(outage=False)
    sandbox.control.set_faults(scripts={"user_1": [500]})  # one more failure after recovery
    end_cool_down(runtime)
    assert ticker.tick() == 1  # the probe (user_3: user_2's change was the last one) succeeds
    assert runtime.breaker.view().state == "closed"
    assert ticker.tick() == 2
    outcomes = runtime.syncer.sync_claims([claim for batch in published for claim in batch])
    assert {o.user_id: o.result for o in outcomes} == {"user_1": "retry", "user_2": "applied"}
    # user_1 first failed more than the budget ago, but the breaker held it for most of that
    assert runtime.redis.zcard(keys.DEAD_LETTERS) == 0
    assert attempts(runtime, "user_1") == 2


def test_the_probe_is_a_user_whose_change_has_not_kept_failing(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    changed_at_recur(runtime, sandbox)
    runtime.redis.hset(keys.pending("user_1"), "attempts", 5)  # a poison change, due first
    runtime.breaker.record(failures=5)
    assert runtime.breaker.view().state == "open"
    runtime.redis.hset(keys.BREAKER, "open_until", "0")
    runtime.redis.zadd(keys.DUE, {"user_1": 0, "user_2": 1, "user_3": 2})

    published: list[list[Claim]] = []
    assert dispatcher(runtime, published).tick() == 1
    (probe,) = sandbox.control.requests(method="PATCH")
    assert probe["external_id"] == "user_2"
    assert runtime.breaker.view().state == "closed"
    # the candidates not chosen wait, due, for the next claim
    assert runtime.redis.zscore(keys.DUE, "user_1") is not None
    assert runtime.redis.zscore(keys.DUE, "user_3") is not None


def test_successive_probes_rotate_over_the_users(runtime: Runtime, sandbox: SandboxHandle) -> None:
    """A failed probe is held, not counted as an attempt; its probes are, so the next probe is
    another user's change: one user whose PATCH Recur keeps failing cannot keep it open."""
    changed_at_recur(runtime, sandbox)
    sandbox.control.set_faults(scripts={"user_2": [500] * 10})
    runtime.breaker.record(failures=5)
    ticker = dispatcher(runtime, [])
    for _ in range(2):
        end_cool_down(runtime)  # user_2 and user_3 due first, neither failed before
        assert ticker.tick() == 1
    probes = [r["external_id"] for r in sandbox.control.requests(method="PATCH")]
    assert probes == ["user_2", "user_3"]
    assert runtime.breaker.view().state == "closed"
    assert not runtime.redis.exists(keys.BREAKER_PROBED)  # a new outage starts afresh
