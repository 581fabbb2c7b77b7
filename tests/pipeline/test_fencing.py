"""Writes Recur cannot fence: a PATCH that timed out may still land after a newer one.

The sandbox's `apply_delay_ms` makes a PATCH land after its client gave up. The store and the
Syncer run in this process (real Redis, the real sandbox over HTTP); what Recur received, in the
order it applied it, is the sandbox's request log.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
import redis

from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.outcomes import SyncOutcome
from sync_worker.pipeline.sync import is_ambiguous
from sync_worker.recur.errors import (
    NotFound,
    RateLimited,
    RecurTimeout,
    RecurTransportError,
    ServerError,
)
from sync_worker.runtime import Runtime
from sync_worker.settings import ConfigError, Settings
from tests.fixtures.runtime import runtime_settings
from tests.fixtures.sandbox import SandboxHandle

_ids = itertools.count()

CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 0.5


FENCING_OPTIONS: dict[str, Any] = {
    "recur_connect_timeout_seconds": CONNECT_TIMEOUT,
    "recur_read_timeout_seconds": READ_TIMEOUT,
    "retry_fast_attempts": 1,
    "retry_fast_max_seconds": 1,
    "retry_backoff_base_seconds": 0.1,
    "retry_backoff_max_seconds": 0.2,
    "lease_seconds": 10,
    "breaker_min_calls": 1000,
    "log_format": "json",
}


def settings_for(redis_url: str, sandbox: SandboxHandle, **overrides: Any) -> Settings:
    return runtime_settings(redis_url, sandbox, **{**FENCING_OPTIONS, **overrides})


@pytest.fixture
def make_runtime(make_runtime: Callable[..., Runtime]) -> Callable[..., Runtime]:
    """The shared factory (tests/fixtures/runtime.py) with this module's short timeouts."""
    return lambda **overrides: make_runtime(**{**FENCING_OPTIONS, **overrides})


def accept(runtime: Runtime, user: str, ts_ms: int, **fields: Any) -> None:
    event = UserEvent(f"evt_{next(_ids)}", "user.updated", user, ts_ms, fields)
    assert runtime.pending.accept(event).changed


def drive(runtime: Runtime, done: Callable[[], bool], *, timeout: float = 30) -> list[SyncOutcome]:
    """Claim and sync what is due, as a worker's dispatcher and task would, until `done()`."""
    outcomes: list[SyncOutcome] = []
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, outcomes
        claims = runtime.pending.claim_due(10)
        if claims:
            outcomes += runtime.syncer.sync_claims(claims)
        else:
            time.sleep(0.02)  # poll interval of the due set, not a wait for anything
    return outcomes


def applied_names(sandbox: SandboxHandle, user: str) -> list[Any]:
    """The names Recur applied for `user`, in the order it applied them."""
    return [
        r["body"].get("name")
        for r in sandbox.control.requests(method="PATCH", external_id=user, status=200)
    ]


def current_name(sandbox: SandboxHandle, user: str) -> Any:
    customer = sandbox.control.customer_by_external_id(user)
    assert customer is not None
    return customer["name"]


def settled(client: redis.Redis, user: str) -> bool:
    return not client.exists(keys.pending(user))


def test_an_ambiguous_patch_holds_the_next_one_until_it_can_no_longer_land(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    runtime = make_runtime(fence_hold_seconds=2.5, fence_verify_delay_seconds=0.2)
    sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    sandbox.control.update_faults(apply_delay_ms=1500)  # lands 1 s after the client gave up
    accept(runtime, "user_1", 1000, name="v1")
    first = drive(runtime, lambda: runtime.redis.exists(keys.fence("user_1")) == 1)
    assert [o.result for o in first] == ["retry"]  # timed out: ambiguous
    sandbox.control.update_faults(apply_delay_ms=0)
    accept(runtime, "user_1", 2000, name="v2")
    outcomes = drive(runtime, lambda: settled(runtime.redis, "user_1"))
    assert "fenced" in [o.result for o in outcomes]
    # v2 waited for the late v1: Recur applied them in the order they were meant
    assert applied_names(sandbox, "user_1") == ["v1", "v2"]
    assert current_name(sandbox, "user_1") == "v2"
    # and Recur was read back once the hold was over
    reads = sandbox.control.requests(method="GET", external_id="user_1")
    assert len(reads) == 1
    patches = sandbox.control.requests(method="PATCH", external_id="user_1", status=200)
    assert reads[0]["seq"] > patches[-1]["seq"]


def test_a_read_back_resends_what_a_patch_landing_after_the_hold_overwrote(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    # The hold (1.6 s) is shorter than the late PATCH takes to land (3 s after it was sent):
    # the read-back, 2.5 s after the hold, sees the old name and sends the newest one again.
    runtime = make_runtime(fence_hold_seconds=1.6, fence_verify_delay_seconds=2.5)
    sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    sandbox.control.update_faults(apply_delay_ms=3000)
    accept(runtime, "user_1", 1000, name="v1", metadata={"plan": "free"})
    drive(runtime, lambda: runtime.redis.exists(keys.fence("user_1")) == 1)
    sandbox.control.update_faults(apply_delay_ms=0)
    accept(runtime, "user_1", 2000, name="v2", metadata={"plan": "pro"})
    outcomes = drive(runtime, lambda: settled(runtime.redis, "user_1"))
    results = [o.result for o in outcomes]
    assert "read_back_resend" in results, results
    assert results[-1] == "read_back_ok", results
    assert applied_names(sandbox, "user_1") == ["v2", "v1", "v2"]
    assert current_name(sandbox, "user_1") == "v2"
    counted = runtime.redis.hgetall(keys.STATS)
    assert counted[b"read_backs_total|outcome=resend"] == b"1"
    assert counted[b"read_backs_total|outcome=ok"] == b"1"
    # the re-send carries the ledger's value of the field Recur returned wrong (name) only
    last = sandbox.control.requests(method="PATCH", external_id="user_1", status=200)[-1]
    assert last["body"] == {"name": "v2"}


def test_a_quick_retry_that_succeeds_still_fences_the_next_change(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    # The first attempt is a 502 (maybe applied behind the proxy), the quick retry succeeds:
    # the late first attempt would write the same value, but it must not overwrite a newer one.
    runtime = make_runtime(
        retry_fast_attempts=2, fence_hold_seconds=3, fence_verify_delay_seconds=0.2
    )
    sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    sandbox.control.update_faults(scripts={"user_1": [502]})
    accept(runtime, "user_1", 1000, name="v1")
    outcomes = drive(runtime, lambda: applied_names(sandbox, "user_1") == ["v1"])
    assert [o.result for o in outcomes] == ["applied"]
    fenced_until = float(runtime.redis.hget(keys.fence("user_1"), "until") or 0)
    accept(runtime, "user_1", 2000, name="v2")
    drive(runtime, lambda: applied_names(sandbox, "user_1") == ["v1", "v2"])
    v2 = sandbox.control.requests(method="PATCH", external_id="user_1", status=200)[-1]
    sent_at = datetime.fromisoformat(v2["at"]).timestamp()
    assert sent_at >= fenced_until - 0.05  # not before the hold ended (sandbox clock: ms)


def test_the_same_change_is_sent_again_at_once_behind_its_own_fence(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    # A late copy of the request would write the same values: only a different one must wait.
    runtime = make_runtime(fence_hold_seconds=30, fence_verify_delay_seconds=0.2)
    sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    sandbox.control.update_faults(scripts={"user_1": [502]})
    accept(runtime, "user_1", 1000, name="v1")
    outcomes = drive(runtime, lambda: applied_names(sandbox, "user_1") == ["v1"])
    assert [o.result for o in outcomes] == ["retry", "applied"]
    assert runtime.redis.exists(keys.fence("user_1"))  # still fenced, for anything else


@pytest.mark.parametrize(
    ("error", "ambiguous"),
    [
        (RecurTimeout("read timed out"), True),
        (ServerError(method="PATCH", path="/", status=502, code="bad_gateway", message=""), True),
        (ServerError(method="PATCH", path="/", status=503, code="x", message=""), True),
        (RateLimited(method="PATCH", path="/", status=429, code="rate_limited", message=""), False),
        (NotFound(method="PATCH", path="/", status=404, code="x", message=""), False),
    ],
)
def test_which_outcomes_are_ambiguous(error: Exception, ambiguous: bool) -> None:
    assert is_ambiguous(error) is ambiguous


@pytest.mark.parametrize(
    ("cause", "ambiguous"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("no answer to SYN"), False),
        (httpx.PoolTimeout("no free connection"), False),
        (httpx.RemoteProtocolError("server disconnected"), True),
        (httpx.ReadError("connection reset"), True),
    ],
)
def test_a_transport_error_is_ambiguous_once_the_request_may_have_left(
    cause: Exception, ambiguous: bool
) -> None:
    error = RecurTransportError("failed")
    error.__cause__ = cause
    assert is_ambiguous(error) is ambiguous


def test_the_hold_must_outlast_a_request(redis_url: str, sandbox: SandboxHandle) -> None:
    derived = settings_for(redis_url, sandbox)
    assert derived.fence_hold == 2 * (CONNECT_TIMEOUT + READ_TIMEOUT)
    deadline = settings_for(redis_url, sandbox, recur_attempt_deadline_seconds=2)
    assert deadline.fence_hold == 4
    assert settings_for(redis_url, sandbox, fence_hold_seconds=9).fence_hold == 9
    with pytest.raises(ConfigError, match=r"^FENCE_HOLD_SECONDS must exceed"):
        settings_for(redis_url, sandbox, fence_hold_seconds=CONNECT_TIMEOUT + READ_TIMEOUT)
