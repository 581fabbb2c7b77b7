"""What production does to a sync worker, done to the real processes: each scenario sends
numbered events, breaks something, and asserts (through the harness) that every accepted
event's newest value reached the sandbox or the DLQ, and no PATCH ever went back in time.

tests/pipeline/test_faults.py holds the plain cases (one kill -9, one Redis restart, a claim
never published, two workers); these add what happens around them.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from celery import Celery

from sync_worker import redis_keys as keys
from sync_worker.celery_app import SYNC_QUEUE
from sync_worker.reconcile.reconciler import reports
from tests.chaos.harness import Chaos, Event, poll
from tests.fixtures.stack import Proc, Stack

pytestmark = pytest.mark.slow


def worker_of(stack: Stack) -> Proc:
    return next(p for p in stack.processes if p.name == "worker" and p.alive())


def retrying(stack: Stack, users: list[str]) -> list[str]:
    """Users whose change failed at least one round and waits for its retry."""
    client = stack.redis
    return [u for u in users if int(client.hget(keys.pending(u), "attempts") or 0) > 0]


def timed_out(stack: Stack, users: list[str]) -> list[str]:
    """Users with a call to Recur that timed out, by their traces (whatever the worker did next:
    a retry, a hold by the breaker, a probe)."""
    client = stack.redis
    return [
        u for u in users if any("RecurTimeout" in e for e in client.lrange(keys.trace(u), 0, -1))
    ]


def pending_users(stack: Stack, users: list[str]) -> list[str]:
    client = stack.redis
    return [u for u in users if client.exists(keys.pending(u))]


def requeued_claims(stack: Stack) -> int:
    return int(stack.redis.hget(keys.STATS, "claims_requeued_total") or 0)


@pytest.mark.chaos_full
def test_kill_9_mid_patch_then_restart(stack: Stack) -> None:
    chaos = Chaos.start(stack, "1a kill -9 mid-PATCH, restart", users=20)
    control = stack.sandbox.control
    control.update_faults(latency_ms=800)
    chaos.post_all(chaos.wave())
    assert poll(lambda: control.requests(method="PATCH"), timeout=30)
    assert stack.redis.zcard(keys.INFLIGHT) > 0  # PATCHes are under way as it dies
    worker_of(stack).kill()
    chaos.post_all(chaos.wave())  # newer changes while no worker runs
    control.update_faults(latency_ms=0)
    stack.start_worker(name="worker-restarted")
    chaos.finish()
    assert stack.dead_letters() == []
    assert requeued_claims(stack) > 0  # the dead worker's claims came back through the sweeper


@pytest.mark.chaos_full
def test_kill_9_one_of_two_workers_the_other_takes_over(stack: Stack) -> None:
    stack.start_worker(name="worker-b")
    chaos = Chaos.start(stack, "1b kill -9 one of two workers", users=24)
    control = stack.sandbox.control
    control.update_faults(latency_ms=800)
    chaos.post_all(chaos.wave())
    assert poll(lambda: control.requests(method="PATCH"), timeout=30)
    worker_of(stack).kill()
    chaos.post_all(chaos.wave())
    control.update_faults(latency_ms=0)
    chaos.finish()  # worker-b alone finishes everything, the dead one's claims included
    assert stack.dead_letters() == []


@pytest.mark.chaos_full
def test_redis_restart_with_work_queued_in_flight_and_retrying(stack: Stack) -> None:
    chaos = Chaos.start(stack, "2 Redis restart, work in every state", users=30)
    control = stack.sandbox.control
    failing = chaos.users[:5]
    control.update_faults(latency_ms=300, scripts={u: [503] * 3 for u in failing})
    chaos.post_all(chaos.wave())
    assert poll(lambda: retrying(stack, failing), timeout=30), "no retry was scheduled"
    chaos.post_all(chaos.wave())  # queued: fresh changes inside their debounce window
    client = stack.redis
    states = {
        "scheduled retries": len(retrying(stack, failing)),
        "in flight": client.zcard(keys.INFLIGHT),
        "due": client.zcard(keys.DUE),
    }
    assert states["scheduled retries"], states
    assert states["due"], states
    stack.redis_server.stop()
    time.sleep(2)
    stack.redis_server.start()
    control.update_faults(latency_ms=0)
    chaos.finish(timeout=120)
    assert stack.dead_letters() == []


@pytest.mark.chaos_full
def test_redis_down_5_s_during_intake(stack: Stack) -> None:
    chaos = Chaos.start(stack, "3 Redis down 5 s during intake", users=10)
    stop = threading.Event()
    first_answers: list[int] = []
    refused: list[Event] = []

    def merchant() -> None:
        with httpx.Client(timeout=15) as client:
            while not stop.is_set():
                for user in chaos.users:
                    event = chaos.event(user)
                    status = chaos.post(event, client=client)
                    first_answers.append(status)
                    if status != 202:
                        refused.append(event)
                time.sleep(0.05)

    thread = threading.Thread(target=merchant)
    thread.start()
    try:
        assert poll(lambda: len(first_answers) > 30, timeout=30)
        stack.redis_server.stop()
        time.sleep(5)
        stack.redis_server.start()
        assert poll(lambda: first_answers[-10:].count(202) == 10, timeout=30)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert set(first_answers) <= {202, 503}, sorted(set(first_answers))
    assert 503 in first_answers
    # The merchant retries what was refused: stored now, or already stored (duplicate).
    for event in refused:
        assert chaos.post(event) in (200, 202)
    chaos.finish(timeout=120)
    assert stack.dead_letters() == []


def test_sigterm_with_debounced_and_scheduled_work(stack: Stack) -> None:
    chaos = Chaos.start(stack, "4 SIGTERM, debounced + scheduled", users=20)
    control = stack.sandbox.control
    failing = chaos.users[:5]
    control.update_faults(latency_ms=200, scripts={u: [503] * 3 for u in failing})
    chaos.post_all(chaos.wave())
    assert poll(lambda: retrying(stack, failing), timeout=30)
    chaos.post_all(chaos.wave())  # debounced, not yet due
    worker = worker_of(stack)
    worker.terminate(timeout=30)
    assert worker.process.returncode != -signal.SIGKILL, "the worker ignored SIGTERM"
    assert pending_users(stack, chaos.users), "nothing was held when the worker stopped"
    control.update_faults(latency_ms=0)
    stack.start_worker(name="worker-after-term")
    chaos.finish(timeout=120)
    assert stack.dead_letters() == []


@pytest.mark.chaos_full
def test_recur_5xx_429_and_late_applied_patches(stack: Stack) -> None:
    chaos = Chaos.start(stack, "5 Recur 30% 5xx, 429, late-applied PATCHes", users=20)
    control = stack.sandbox.control
    limited = chaos.users[:5]
    control.update_faults(
        error_rate=0.3, retry_after_seconds=2, scripts={u: [429] for u in limited}
    )
    chaos.post_all(chaos.wave())
    assert poll(lambda: not pending_users(stack, chaos.users), timeout=90)
    # For a while every PATCH is applied 3 s after it arrives: past the client's 2 s timeout.
    # Recur has no conditional update, so those late writes cannot be fenced at Recur: the
    # newer values posted meanwhile must wait for them (and be read back after).
    slow = chaos.users[5:10]
    control.update_faults(apply_delay_ms=3000)
    late = [chaos.event(u) for u in slow]
    chaos.post_all(late)
    # every one of them timed out (and is on its way to Recur still)
    everyone = poll(lambda: set(timed_out(stack, slow)) == set(slow), timeout=60)
    assert everyone, timed_out(stack, slow)
    control.update_faults(apply_delay_ms=0)
    newer = [chaos.event(u) for u in slow]
    chaos.post_all(newer)  # while the timed-out ones are still landing
    assert poll(lambda: not pending_users(stack, chaos.users), timeout=90)

    def landed() -> bool:
        sent = {r["body"].get("name") for r in control.requests(method="PATCH")}
        return all(event.name in sent for event in late)

    assert poll(landed, timeout=30)  # the late writes are in: the newer values must have won
    final = {u: (control.customer_by_external_id(u) or {}).get("name") for u in slow}
    assert final == {event.user_id: event.name for event in newer}
    assert "timed out" in worker_of(stack).log()
    chaos.post_all(chaos.wave())
    verdict = chaos.finish(timeout=120)
    assert verdict.row.dead_lettered == 0
    assert stack.dead_letters() == []
    log = control.requests(method="PATCH")
    assert any(r["status"] == 500 for r in log)
    for user in limited:  # the next call for a user told to wait came after Retry-After
        mine = [r for r in log if r["external_id"] == user]
        told = next(i for i, r in enumerate(mine) if r["status"] == 429)
        gap = _seconds(mine[told + 1]["at"]) - _seconds(mine[told]["at"])
        assert gap >= 2 - 0.05, f"{user}: retried {gap:.2f} s after a 429 with Retry-After: 2"


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_dropped_celery_message_is_redriven_by_the_sweeper(stack: Stack) -> None:
    chaos = Chaos.start(stack, "6 Celery message dropped", users=12)
    celery = Celery("chaos-control", broker=stack.redis_server.url)
    try:
        replies = celery.control.cancel_consumer(SYNC_QUEUE, reply=True, timeout=5)
        assert replies, "the worker did not answer the remote control"
        chaos.post_all(chaos.wave())
        client = stack.redis

        # Some users claimed and their batches waiting in the broker. Not "every user": the
        # dispatcher claims only what the queue has room for, and under load the leases of the
        # first batches can lapse (and be swept back to due) before the last users are claimed.
        def claimed_and_published() -> bool:
            return client.zcard(keys.INFLIGHT) > 0 and client.llen(SYNC_QUEUE) > 0

        if not poll(claimed_and_published, timeout=60):
            state = {
                "due": client.zcard(keys.DUE),
                "queued": client.llen(SYNC_QUEUE),
                "in flight": client.zcard(keys.INFLIGHT),
                "control replies": replies,
            }
            pytest.fail(f"the batches never waited in the broker: {state}")
        client.delete(SYNC_QUEUE)  # every published batch is gone from the broker
        assert client.zcard(keys.INFLIGHT) > 0
        celery.control.add_consumer(SYNC_QUEUE, reply=True, timeout=5)
    finally:
        celery.close()
    chaos.finish(timeout=60)
    assert stack.dead_letters() == []
    # (a message the worker fetched just before it stopped consuming runs normally)
    assert requeued_claims(stack) > 0


def test_two_workers_burst_of_interleaved_updates(stack: Stack) -> None:
    stack.start_worker(name="worker-b")
    chaos = Chaos.start(stack, "7 two workers, interleaved burst", users=30)
    stack.sandbox.control.update_faults(latency_ms=30, error_rate=0.05)
    events = [chaos.event(u, version) for version in range(10) for u in chaos.users]
    # Out of order and concurrent: version 7 of a user may arrive before version 2.
    random.Random(8).shuffle(events)
    chaos.post_concurrently(events)
    chaos.post_concurrently(events[::5], threads=3, expect=200)  # redeliveries: duplicates
    chaos.finish()
    assert stack.dead_letters() == []


def _write_overdue_schedule(stack: Stack, path: Path) -> None:
    """A beat schedule file whose nightly run last happened two days ago: beat was down
    across the scheduled time, so it is due as soon as a beat starts."""
    import shelve
    from datetime import UTC, datetime, timedelta

    beat = stack.spawn("beat-seed", "beat", "--schedule", str(path))
    try:
        assert poll(lambda: "beat: Starting" in beat.log(), timeout=30), beat.log()
        time.sleep(1)
    finally:
        beat.terminate()
    with shelve.open(str(path), writeback=True) as stored:  # noqa: S301 - beat's own file
        entry = stored["entries"]["nightly-reconciliation"]
        entry.last_run_at = datetime.now(tz=UTC) - timedelta(days=2)
        stored["entries"]["nightly-reconciliation"] = entry


def test_two_beats_after_downtime_run_one_reconciliation(stack: Stack, tmp_path: Path) -> None:
    chaos = Chaos.start(stack, "8 two beats, one nightly run", users=10)
    chaos.post_all(chaos.wave())
    schedules = [tmp_path / "beat-a.schedule", tmp_path / "beat-b.schedule"]
    _write_overdue_schedule(stack, schedules[0])
    for part in tmp_path.glob("beat-a.schedule*"):  # dbm may keep it in several files
        (tmp_path / part.name.replace("beat-a", "beat-b")).write_bytes(part.read_bytes())
    beats = [
        stack.spawn(f"beat-{n}", "beat", "--schedule", str(path))
        for n, path in zip("ab", schedules, strict=True)
    ]
    sent = "Sending due task nightly-reconciliation"
    assert poll(lambda: all(sent in b.log() for b in beats), timeout=60), [
        b.log()[-2000:] for b in beats
    ]
    client = stack.redis
    worker = worker_of(stack)
    turned_away = ("reconcile_skipped", "reconcile_already_running")
    assert poll(lambda: reports(client) and any(t in worker.log() for t in turned_away), timeout=60)
    time.sleep(2)  # both beats keep running: nothing more is due tonight
    scheduled = [r for r in reports(client) if r.get("scheduled")]
    assert [r["status"] for r in scheduled] == ["finished"]
    assert all(b.log().count(sent) == 1 for b in beats)
    chaos.finish()
