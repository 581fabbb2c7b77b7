"""Dead letters past DLQ_RETENTION_DAYS are trimmed by the sweeper, with a log line and a metric."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from sync_worker import redis_keys as keys
from sync_worker.runtime import Runtime
from sync_worker.settings import load_settings
from tests.operators.conftest import make_dead_letter


def test_sweep_trims_only_entries_past_the_retention(
    monkeypatch: pytest.MonkeyPatch, runtime: Runtime
) -> None:
    monkeypatch.setenv("DLQ_RETENTION_DAYS", "7")
    sweeper = Runtime(load_settings(), client=runtime.redis)
    old = make_dead_letter(runtime, "user_old")
    recent = make_dead_letter(runtime, "user_recent")
    eight_days_ago = time.time() - 8 * 86400
    runtime.redis.zadd(keys.DEAD_LETTERS, {old: eight_days_ago})
    runtime.redis.zadd(keys.DEAD_LETTERS, {recent: time.time() - 6 * 86400})

    with capture_logs() as logs:
        assert sweeper.sweep() == {"requeued": 0, "trimmed": 1}

    assert runtime.dlq.ids() == [recent]
    assert not runtime.redis.exists(keys.dead_letter(old))
    assert {"event": "dead_letters_trimmed", "count": 1, "retention_days": 7.0}.items() <= (
        next(line for line in logs if line["event"] == "dead_letters_trimmed").items()
    )
    assert runtime.stats.read()["dead_letters_trimmed_total"] == 1
