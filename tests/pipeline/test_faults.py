"""Faults the real system must survive: killed workers, a restarted Redis, lost messages,
two workers racing. Each asserts what the sandbox finally holds: nothing lost, nothing stale."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.pending import PendingStore
from tests.fixtures.redis_server import free_port
from tests.fixtures.stack import Proc, Stack, user_event, wait_for

pytestmark = pytest.mark.slow
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)

FULL = os.environ.get("CHAOS_FULL") == "1"
REDIS_CRASHES = int(os.environ.get("REDIS_CRASHES", "3" if FULL else "1"))
REDIS_DOWN_SECONDS = float(os.environ.get("REDIS_CRASH_DOWN_SECONDS", "60" if FULL else "3"))
"""How long Redis stays dead in each crash, and how often: one short crash in `make test`, three
of a minute each under `make chaos` (CHAOS_FULL=1, which CI runs too), anything with
REDIS_CRASH_DOWN_SECONDS and REDIS_CRASHES."""


def seed(stack: Stack, users: int) -> list[str]:
    ids = [f"user_{i}" for i in range(users)]
    stack.sandbox.control.create_customers(
        [{"email": f"{u}@example.com", "name": "old", "external_id": u} for u in ids]
    )
    return ids


def names(stack: Stack, ids: list[str]) -> dict[str, str | None]:
    found = {}
    for user in ids:
        customer = stack.sandbox.control.customer_by_external_id(user)
        found[user] = None if customer is None else customer["name"]
    return found


def all_named(stack: Stack, expected: dict[str, str]) -> bool:
    return names(stack, list(expected)) == expected


def test_worker_killed_mid_stream_loses_nothing(stack: Stack) -> None:
    ids = seed(stack, 30)
    stack.sandbox.control.update_faults(latency_ms=300)
    expected = {user: f"{user} v2" for user in ids}
    for user in ids:
        assert stack.post(user_event(f"evt_{user}", user, name=expected[user])).status_code == 202
    wait_for(lambda: stack.sandbox.control.requests(method="PATCH"), timeout=20)
    worker = next(p for p in stack.processes if p.name == "worker")
    worker.kill()  # SIGKILL while PATCHes are in flight
    stack.sandbox.control.update_faults(latency_ms=0)
    stack.start_worker(name="worker-after-crash")
    wait_for(lambda: all_named(stack, expected), timeout=60)
    assert stack.dead_letters() == []


def test_redis_restart_with_aof_loses_nothing(stack: Stack) -> None:
    ids = seed(stack, 20)
    stack.sandbox.control.update_faults(latency_ms=200)
    expected = {user: f"{user} after restart" for user in ids}
    for user in ids:
        assert stack.post(user_event(f"evt_{user}", user, name=expected[user])).status_code == 202
    stack.redis_server.restart(kill=True)  # a crash: AOF with appendfsync always keeps every 202
    stack.sandbox.control.update_faults(latency_ms=0)
    wait_for(lambda: all_named(stack, expected), timeout=90)
    assert stack.dead_letters() == []


def test_a_worker_frozen_while_redis_restarts_takes_tasks_again(stack: Stack) -> None:
    """A worker frozen (SIGSTOP: a paused VM or container, a starved machine) while Redis
    crashes and comes back wakes to every broker socket closed, with Redis already answering.
    It must take tasks again by itself, without the watchdog: a retried read of kombu's pub/sub
    connection used to reconnect it unsubscribed and wait on it for good (see create_celery_app).
    Nor does it wait a second for neighbours (mingle) once reconnected (see SyncConsumer)."""
    worker = next(p for p in stack.processes if p.command == "worker")
    ids = seed(stack, 5)
    warm = {user: f"{user} before the freeze" for user in ids}
    for user in ids:
        assert stack.post(user_event(f"evt_{user}_warm", user, name=warm[user])).status_code == 202
    wait_for(lambda: all_named(stack, warm), timeout=30)
    worker.process.send_signal(signal.SIGSTOP)
    try:
        stack.redis_server.restart(kill=True)
    finally:
        worker.process.send_signal(signal.SIGCONT)
    expected = {user: f"{user} after the freeze" for user in ids}
    for user in ids:
        assert (
            stack.post(user_event(f"evt_{user}_after", user, name=expected[user])).status_code
            == 202
        )
    wait_for(lambda: all_named(stack, expected), timeout=60)
    assert worker.alive()
    log = worker.log()
    assert log.count("Connected to") >= 2, "the worker reconnected"
    assert "consumer_stalled" not in log
    assert "mingle" not in log


def patches_in_flight(
    stack: Stack, users: int, *, latency_ms: int
) -> tuple[list[str], dict[str, str]]:
    """Seed `users`, slow Recur's answers to `latency_ms`, accept an event for each (its name
    "<user> before"), and return once the first PATCH is on its way: the ids and those names."""
    ids = seed(stack, users)
    stack.sandbox.control.update_faults(latency_ms=latency_ms)
    before = {user: f"{user} before" for user in ids}
    for user in ids:
        assert stack.post(user_event(f"evt_{user}_b", user, name=before[user])).status_code == 202
    wait_for(lambda: stack.sandbox.control.requests(method="PATCH"), timeout=30)
    return ids, before


def unshaken_worker(stack: Stack) -> Proc:
    """The stack's worker, checked alive, without a watchdog restart, and with no task ended in
    a traceback (Celery's "raised unexpected")."""
    worker = next(p for p in stack.processes if p.command == "worker")
    assert worker.alive()
    log = worker.log()
    assert "consumer_stalled" not in log
    assert "raised unexpected" not in log
    return worker


def sync_through_refused_writes(
    stack: Stack,
    users: int,
    *,
    refuse: Callable[[redis.Redis], Any],
    allow: Callable[[redis.Redis], Any],
    seconds: float,
) -> Proc:
    """Accept an event for each of `users`, and once PATCHes are in flight make Redis refuse
    writes (`refuse`) for `seconds`, long enough for them to end, then `allow` writes again.
    Meanwhile intake answers 503 with Retry-After (nothing stored, so the sender must retry);
    then every event, the refused one re-sent included, reaches Recur and none is dead-lettered.
    A task that Redis failed under says so in a line naming its users, not in a traceback.
    Returns the worker, unshaken (see `unshaken_worker`)."""
    ids, before = patches_in_flight(stack, users, latency_ms=1500)
    control = stack.sandbox.control
    client = stack.redis
    refuse(client)
    try:
        late = user_event("evt_late", ids[0], name=f"{ids[0]} after")
        refused = stack.post(late)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"]
        time.sleep(seconds)
    finally:
        allow(client)
    control.update_faults(latency_ms=0)
    assert stack.post(late).status_code == 202
    wait_for(lambda: all_named(stack, {**before, ids[0]: f"{ids[0]} after"}), timeout=60)
    assert stack.dead_letters() == []
    worker = unshaken_worker(stack)
    for line in worker.log().splitlines():
        if "sync_batch_interrupted" in line:
            assert set(json.loads(line)["users"]) <= set(ids), line
    return worker


def test_redis_at_maxmemory_refuses_intake_and_loses_nothing(stack: Stack) -> None:
    """Redis at `maxmemory` with `noeviction` answers but refuses every write, with every slot
    of the worker busy on a PATCH and a task waiting: the worker's task acks and records are
    refused (once, that ended the worker), yet it keeps taking tasks without its watchdog, and
    nothing is lost (see `sync_through_refused_writes`). 8 s: a restore sweep (every 5 s) too."""
    worker = sync_through_refused_writes(
        stack,
        60,
        refuse=lambda client: client.config_set("maxmemory", "1"),
        allow=lambda client: client.config_set("maxmemory", "0"),
        seconds=8,
    )
    log = worker.log()
    refused = [json.loads(line) for line in log.splitlines() if "broker_write_refused" in line]
    assert {"ack", "restore"} <= {line["action"] for line in refused}
    # The PATCHes in flight ended under the limit: their settles were refused.
    assert "sync_batch_interrupted" in log
    assert "Error in timer" not in log  # the restore sweep's refusals, once a traceback each


@pytest.mark.parametrize("users", [3, 60], ids=["a-slot-free", "every-slot-busy"])
def test_redis_demoted_to_a_replica_and_back_loses_nothing(stack: Stack, users: int) -> None:
    """The primary becomes a replica (of a primary that is not there: it keeps its data) with
    PATCHes in flight, then a primary again, as a failover that keeps the old primary does to
    the connections already open: a blocked `BRPOP` (a slot free) is answered `UNBLOCKED`, and
    the acks of the tasks that end (every slot busy) `READONLY`. The worker takes both as a
    lost connection (once, the first ended it, and the second held its slots until the
    watchdog came), reconnects, and nothing is lost (see `sync_through_refused_writes`)."""
    sync_through_refused_writes(
        stack,
        users,
        refuse=lambda client: client.execute_command("REPLICAOF", "127.0.0.1", str(free_port())),
        allow=lambda client: client.execute_command("REPLICAOF", "NO", "ONE"),
        seconds=4,
    )


def test_redis_pausing_writes_delays_intake_and_sync_and_loses_nothing(stack: Stack) -> None:
    """`CLIENT PAUSE WRITE` is how Redis starts a coordinated failover (`FAILOVER`, and managed
    Redis services): every write waits until the pause ends, reads go on. With PATCHes in
    flight and an event posted during the pause, the post is answered `202` once the pause
    ends, every name arrives, nothing is dead-lettered, and the worker never needs its
    watchdog nor ends a task in a traceback."""
    ids, before = patches_in_flight(stack, 20, latency_ms=300)
    control = stack.sandbox.control
    stack.redis.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
    posted = time.monotonic()
    during = stack.post(user_event("evt_during", ids[0], name=f"{ids[0]} during"))
    waited = time.monotonic() - posted
    assert during.status_code == 202, during.text
    assert waited > 2, "the post was answered while writes were paused"
    control.update_faults(latency_ms=0)
    wait_for(lambda: all_named(stack, {**before, ids[0]: f"{ids[0]} during"}), timeout=60)
    assert stack.dead_letters() == []
    unshaken_worker(stack)


class WorkerSupervisor:
    """What `sync-worker dev` or a container runtime does for the worker: start it again when it
    exits, so the later crashes are still tested. Each exit is kept with its log, for the test
    to show (the worker should need no restart at all)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.worker = next(p for p in stack.processes if p.name == "worker")
        self.exits: list[int] = []
        self.dead: list[Proc] = []

    def check(self) -> Proc:
        if not self.worker.alive():
            self.exits.append(self.worker.process.returncode)
            self.dead.append(self.worker)
            self.worker = self.stack.start_worker(name=f"worker-restart-{len(self.exits)}")
        return self.worker

    def logs(self) -> str:
        """The last lines of each worker that exited."""
        return "\n".join("\n".join(p.log().splitlines()[-40:]) for p in self.dead)


@pytest.mark.timeout(60 + REDIS_CRASHES * (REDIS_DOWN_SECONDS + 120))
def test_worker_rides_out_redis_crashes(stack: Stack) -> None:
    """Redis SIGKILLed while PATCHes are in flight, dead for REDIS_DOWN_SECONDS, restarted,
    REDIS_CRASHES times: the events accepted after each restart reach Recur, what was accepted
    before each crash is not lost, and the worker process rides it all out by itself."""
    ids = seed(stack, 12)
    supervisor = WorkerSupervisor(stack)
    control = stack.sandbox.control
    for cycle in range(REDIS_CRASHES):
        control.update_faults(latency_ms=400)
        seen = len(control.requests(method="PATCH"))
        before = {user: f"{user} before crash {cycle}" for user in ids}
        for user in ids:
            event = user_event(f"evt_{user}_b{cycle}", user, name=before[user])
            assert stack.post(event).status_code == 202
        wait_for(lambda s=seen: len(control.requests(method="PATCH")) > s, timeout=30)
        stack.redis_server.crash()  # mid-sync: PATCHes are in flight, claims leased
        time.sleep(REDIS_DOWN_SECONDS)  # the outage itself, not a wait for some state
        stack.redis_server.start()
        control.update_faults(latency_ms=0)
        after = {user: f"{user} after crash {cycle}" for user in ids}
        for user in ids:
            event = user_event(f"evt_{user}_a{cycle}", user, name=after[user])
            # The web process reconnects on its own; until it has, intake answers 503.
            wait_for(lambda e=event: stack.post(e).status_code == 202, timeout=30)

        def applied(expected: dict[str, str] = after) -> bool:
            supervisor.check()
            return all_named(stack, expected)

        wait_for(applied, timeout=90)
        last_sent = {
            request["external_id"]: request["body"].get("name")
            for request in control.requests(method="PATCH", status=200)
        }
        assert last_sent == after, f"crash {cycle}: the sandbox's last PATCHes were {last_sent}"
    # Celery's reconnection survives kombu's failures on the lost connection (celery_app.py):
    # the worker rode out every crash by itself, with no restart.
    assert supervisor.exits == [], f"the worker exited {supervisor.exits}:\n{supervisor.logs()}"
    assert stack.dead_letters() == []


def test_sweeper_recovers_a_lost_message(stack: Stack) -> None:
    ids = seed(stack, 1)
    # Accept and claim exactly as the dispatcher would, but never publish: the message is lost.
    pending = PendingStore(
        redis.Redis.from_url(stack.redis_server.url),
        window_seconds=0,
        max_wait_seconds=1,
        dedup_ttl_seconds=60,
        lease_seconds=3,
    )
    for proc in stack.processes:
        if proc.name == "worker":
            proc.terminate()  # no worker may claim the user before the lost message does
    pending.accept(UserEvent("evt_lost", "user.updated", ids[0], 1000, {"name": "recovered"}))
    claims = pending.claim_due(10)
    assert [c.user_id for c in claims] == ids
    stack.start_worker(name="worker-after-loss")
    wait_for(lambda: all_named(stack, {ids[0]: "recovered"}), timeout=30)


def test_two_workers_never_leave_a_stale_value(stack: Stack) -> None:
    ids = seed(stack, 10)
    stack.start_worker(name="worker-b")
    rng = random.Random(7)
    events = []
    for user in ids:
        for version in range(6):
            moment = T0 + timedelta(seconds=version)
            events.append(
                user_event(f"evt_{user}_{version}", user, at=moment, name=f"{user} v{version}")
            )
    rng.shuffle(events)  # deliveries arrive in any order, spread over both workers' batches
    for payload in events:
        assert stack.post(payload).status_code == 202
    expected = {user: f"{user} v5" for user in ids}
    wait_for(lambda: all_named(stack, expected), timeout=60)
    sent: dict[str, list[int]] = {}
    for request in stack.sandbox.control.requests(method="PATCH"):
        assert request["status"] == 200
        version = int(request["body"]["name"].rsplit("v", 1)[1])
        sent.setdefault(request["external_id"], []).append(version)
    for user, versions in sent.items():
        assert versions == sorted(set(versions)), f"{user} went back in time: {versions}"
