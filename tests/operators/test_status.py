"""`sync-worker status`, `sync-worker resume` and the snapshot behind them, on real Redis."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from sync_worker import redis_keys as keys
from sync_worker.cli import app
from sync_worker.ops.status import gather_status
from sync_worker.runtime import Runtime
from tests.fixtures.sandbox import SandboxHandle
from tests.operators.conftest import accept, make_dead_letter, sync_due

runner = CliRunner()


def test_an_idle_system(runtime: Runtime) -> None:
    snapshot = gather_status(runtime)
    assert snapshot.queues == {"sync": 0, "maintenance": 0}
    assert (snapshot.pending_users, snapshot.due_now, snapshot.inflight) == (0, 0, 0)
    assert snapshot.retrying_users == 0
    assert snapshot.dead_letters_total == 0
    assert snapshot.workers == []
    assert snapshot.paused is None
    assert snapshot.last_reconciliation is None
    assert snapshot.mode == "test"
    assert (snapshot.replicas_online, snapshot.min_replicas) == (0, 0)
    # A lone Redis, as most run it: no replica line to puzzle over.
    assert "redis replicas" not in runner.invoke(app, ["status"]).stdout


def test_every_number(runtime: Runtime, sandbox: SandboxHandle) -> None:
    make_dead_letter(runtime, "user_dead")
    sandbox.control.create_customer("r@x.tw", external_id="user_retry")
    sandbox.control.set_faults(scripts={"user_retry": [500] * 10})
    accept(runtime, "user_retry", name="x")
    [retry] = sync_due(runtime)
    assert retry.result == "retry"
    accept(runtime, "user_later", name="y", ts_ms=int(time.time() * 1000))
    runtime.redis.zadd(keys.DUE, {"user_later": time.time() + 60})  # inside its window
    runtime.redis.rpush("sync", "m1", "m2")
    runtime.redis.set(
        keys.worker_heartbeat("w1@host"), json.dumps({"hostname": "w1@host", "at": time.time()})
    )
    runtime.redis.lpush(keys.RECONCILE_REPORTS, json.dumps({"scanned": 1}))
    runtime.redis.lpush(keys.RECONCILE_REPORTS, json.dumps({"scanned": 7, "drifted": 2}))
    runtime.flow.pause(reason="unauthorized", status=401, message="bad key")
    runtime.flow.cool_down(30)

    snapshot = gather_status(runtime)
    assert snapshot.queues["sync"] == 2
    assert snapshot.pending_users == 2
    assert snapshot.due_now == 0
    assert snapshot.retrying_users == 1  # user_later waits for its window, not for a retry
    assert snapshot.dead_letters == {
        "not_found": 1,
        "conflict": 0,
        "rejected": 0,
        "retries_exhausted": 0,
    }
    assert [w["hostname"] for w in snapshot.workers] == ["w1@host"]
    assert snapshot.paused is not None
    assert snapshot.paused["reason"] == "unauthorized"
    assert 0 < snapshot.cooldown_seconds <= 30
    assert snapshot.last_reconciliation == {"scanned": 7, "drifted": 2}

    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0
    as_json = json.loads(result.stdout)
    assert as_json["workers_alive"] == 1
    assert as_json["dead_letters_total"] == 1
    assert as_json["retrying_users"] == 1

    text = runner.invoke(app, ["status"]).stdout
    assert "PAUSED" in text
    assert "bad key" in text
    assert "w1@host" in text
    assert "scanned 7, drifted 2" in text


def test_resume_lifts_the_pause(runtime: Runtime) -> None:
    runtime.flow.pause(reason="unauthorized", status=403, message="forbidden")
    assert runner.invoke(app, ["resume"]).stdout == "resumed\n"
    assert runtime.flow.paused() is None
    assert runner.invoke(app, ["resume"]).stdout == "was not paused\n"


def test_help_explains_the_options() -> None:
    status_help = runner.invoke(app, ["status", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--json" in status_help
    assert "Queue depths" in status_help
    assert "auth pause" in runner.invoke(app, ["resume", "--help"]).stdout


def test_mode_is_what_the_workers_hold_when_the_caller_has_no_key() -> None:
    from sync_worker.ops.status import sync_mode

    assert sync_mode("unset", [{"mode": "test"}]) == "test"
    assert sync_mode("live", []) == "live"
    assert sync_mode("unset", [{"mode": "live"}, {"mode": "test"}]) == "mixed: live, test"


def test_a_worker_whose_dispatcher_stopped_getting_rounds_done_is_stalled(
    runtime: Runtime,
) -> None:
    now = time.time()
    heartbeats = {
        "w1@host": {"hostname": "w1@host", "at": now, "loop_at": now - 600, "failures": 4000},
        "w2@host": {"hostname": "w2@host", "at": now, "loop_at": now - 1},
        "w3@host": {"hostname": "w3@host", "at": now},  # an older worker: no loop_at yet
    }
    for name, record in heartbeats.items():
        runtime.redis.set(keys.worker_heartbeat(name), json.dumps(record))
    snapshot = gather_status(runtime)
    assert snapshot.stalled_workers == ["w1@host"]
    assert snapshot.to_dict()["workers_stalled"] == ["w1@host"]
    assert [w["dispatcher_seconds_ago"] >= 600 for w in snapshot.workers] == [True, False, False]
