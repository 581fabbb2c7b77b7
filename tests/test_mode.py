"""Test and live never mix: the first process with a key records its mode in Redis, and any
process whose key has the other mode refuses to start with one line naming RECUR_SECRET_KEY."""

from __future__ import annotations

from sync_worker import redis_keys as keys
from tests.fixtures.stack import Proc, Stack

LIVE_KEY = "sk_live_not_for_this_redis"


def refused(proc: Proc) -> list[str]:
    """Wait for the process to exit 2; its output lines that name the variable."""
    assert proc.process.wait(timeout=90) == 2, proc.log()
    lines = [line for line in proc.log().splitlines() if "RECUR_SECRET_KEY" in line]
    assert len(lines) == 1, proc.log()
    return lines


def test_processes_with_a_live_key_refuse_state_written_in_test_mode(stack: Stack) -> None:
    # The stack's worker ran first, with the sandbox's sk_test_ key.
    assert stack.redis.get(keys.MODE) == "test"
    live = {"RECUR_SECRET_KEY": LIVE_KEY}

    worker = stack.spawn("live_worker", "worker", "--hostname", "live@%h", env=live)
    (line,) = refused(worker)
    assert line.startswith("error: RECUR_SECRET_KEY: is a live key")
    assert "test" in line
    assert LIVE_KEY not in worker.log()

    refused(stack.spawn("live_beat", "beat", env=live))
    refused(stack.spawn("live_reconcile", "reconcile", "--dry-run", env=live))
    # Plain Celery, as the README allows, refuses too (from the worker's bootstep).
    celery = stack.spawn(
        "live_celery",
        "-A",
        "sync_worker.celery_app",
        "worker",
        "--hostname",
        "celery@%h",
        env=live,
        module="celery",
    )
    refused(celery)

    assert stack.redis.get(keys.MODE) == "test"
    assert all(proc.alive() for proc in stack.processes if proc.name in ("web", "worker"))


def test_the_first_key_decides(web_stack: Stack) -> None:
    # Nothing has run with a key yet: a live reconcile (refused by the sandbox: 401) claims live.
    reconcile = web_stack.spawn(
        "live_reconcile", "reconcile", "--dry-run", env={"RECUR_SECRET_KEY": LIVE_KEY}
    )
    assert reconcile.process.wait(timeout=90) != 2, reconcile.log()
    assert web_stack.redis.get(keys.MODE) == "live"

    refused(web_stack.spawn("test_worker", "worker", "--hostname", "test@%h"))
    refused(web_stack.spawn("test_reconcile", "reconcile", "--dry-run"))
