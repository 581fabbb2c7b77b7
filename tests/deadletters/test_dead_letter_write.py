"""A dead letter that cannot be written must not cost the change: it stays claimed, and the
sweeper offers it again once the lease lapses."""

from __future__ import annotations

import pytest
import redis

from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.pending import PendingStore
from sync_worker.pipeline.records import Claim, Snapshot
from sync_worker.runtime import Runtime
from sync_worker.settings import Settings
from tests.fixtures.sandbox import SandboxHandle


class DeadLetterWriteFails(PendingStore):
    """A pending store whose dead-letter write hits a Redis failure."""

    def dead_letter(self, claim: Claim, snapshot: Snapshot, **_: object) -> tuple[str, str]:
        raise redis.ConnectionError("Redis went away during the dead-letter write")


def test_failed_dead_letter_write_keeps_the_change(redis_url: str, sandbox: SandboxHandle) -> None:
    settings = Settings(
        redis_url=redis_url,
        recur_api_url=sandbox.url,
        recur_secret_key=sandbox.secret_key,
        debounce_window_seconds=0,
        lease_seconds=60,
    )
    runtime = Runtime(settings)
    runtime.pending = DeadLetterWriteFails(
        runtime.redis,
        window_seconds=0,
        max_wait_seconds=1,
        dedup_ttl_seconds=60,
        lease_seconds=60,
    )
    runtime.pending.accept(UserEvent("evt_1", "user.updated", "ghost", 1000, {"name": "x"}))
    claims = runtime.pending.claim_due(10)
    assert [c.user_id for c in claims] == ["ghost"]

    with pytest.raises(redis.ConnectionError):
        runtime.syncer.sync_claims(claims)  # the 404 wants a dead letter; writing it fails

    assert sandbox.control.requests(method="PATCH")[0]["status"] == 404
    client = redis.Redis.from_url(redis_url)
    assert client.exists(keys.pending("ghost"))  # the change is still there...
    assert client.zscore(keys.INFLIGHT, "ghost") is not None  # ...claimed, not acknowledged
    assert client.zcard(keys.DEAD_LETTERS) == 0
    client.zadd(keys.INFLIGHT, {"ghost": 0})  # let the lease lapse now
    assert runtime.pending.requeue_expired() == 1
    assert client.zscore(keys.DUE, "ghost") is not None
    runtime.close()
