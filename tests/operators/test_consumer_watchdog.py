"""The consumer watchdog: a worker whose Celery consumer stops taking tasks while the sync queue
has some is restarted, first its consumer, then (if that does not cure it) the whole process.

The decision is tested on its own with a clock the test moves; the whole of it with the real
worker, on real Redis and the sandbox, its consumer made deaf as consumers were seen to be after
a Redis crash (tests/fixtures/deaf_worker.py)."""

from __future__ import annotations

import pytest

from sync_worker.celery_app import (
    STALLED_EXIT_CODE,
    SYNC_BATCH_TASK,
    SYNC_QUEUE,
    create_celery_app,
)
from sync_worker.consumer_watchdog import ConsumerWatch, Verdict
from sync_worker.settings import Settings
from tests.fixtures.clock import Clock
from tests.fixtures.stack import Proc, Stack, user_event, wait_for
from tests.pipeline.test_faults import all_named, seed


def watched() -> tuple[Clock, ConsumerWatch]:
    """A watch of 10 s on a clock the test moves."""
    clock = Clock()
    return clock, ConsumerWatch(10, clock=clock)


def test_a_queue_left_waiting_with_a_free_slot_restarts_the_consumer_then_ends_the_worker() -> None:
    clock, watch = watched()
    assert watch.check(waiting=3, free_slots=2) is Verdict.OK  # the stall starts here
    clock.now += 9.9
    assert watch.check(waiting=3, free_slots=2) is Verdict.OK
    clock.now += 0.1
    assert watch.check(waiting=3, free_slots=2) is Verdict.RESTART
    clock.now += 5
    assert watch.check(waiting=3, free_slots=2) is Verdict.OK  # the restart gets its time
    clock.now += 5
    assert watch.check(waiting=3, free_slots=2) is Verdict.EXIT


def test_a_task_received_after_the_restart_means_it_worked() -> None:
    clock, watch = watched()
    watch.check(waiting=3, free_slots=2)
    clock.now += 10
    assert watch.check(waiting=3, free_slots=2) is Verdict.RESTART
    clock.now += 1
    watch.received()
    clock.now += 15
    assert watch.check(waiting=3, free_slots=2) is Verdict.OK  # a new stall starts, no exit
    clock.now += 10
    assert watch.check(waiting=3, free_slots=2) is Verdict.RESTART


@pytest.mark.parametrize(
    ("waiting", "free_slots", "why"),
    [
        (0, 4, "nothing waits"),
        (3, 0, "every slot is busy: a full worker does not read the queue"),
        (None, 4, "the queue could not be read: Redis is down"),
    ],
)
def test_no_stall_without_tasks_waiting_for_a_free_slot(
    waiting: int | None, free_slots: int, why: str
) -> None:
    clock, watch = watched()
    for _ in range(30):
        assert watch.check(waiting=waiting, free_slots=free_slots) is Verdict.OK, why
        clock.now += 1


def test_a_consumer_taking_tasks_is_never_stalled_however_long_the_queue() -> None:
    """A busy worker's queue is never empty for long; each task it takes restarts the count."""
    clock, watch = watched()
    for _ in range(60):
        assert watch.check(waiting=8, free_slots=1) is Verdict.OK
        clock.now += 1
        watch.received()


def test_a_stall_that_ends_starts_the_count_again() -> None:
    clock, watch = watched()
    watch.check(waiting=3, free_slots=2)
    clock.now += 9
    assert watch.check(waiting=0, free_slots=2) is Verdict.OK
    clock.now += 1
    assert watch.check(waiting=3, free_slots=2) is Verdict.OK
    clock.now += 9
    assert watch.check(waiting=3, free_slots=2) is Verdict.OK
    clock.now += 1
    assert watch.check(waiting=3, free_slots=2) is Verdict.RESTART


def deaf_worker(stack: Stack, **env: str) -> Proc:
    worker = stack.spawn(
        "deaf-worker",
        "--hostname",
        "deaf@%h",
        module="tests.fixtures.deaf_worker",
        env={"CONSUMER_STALL_SECONDS": "5", **env},
    )
    wait_for(lambda: "deaf: the consumer no longer takes tasks" in worker.log(), timeout=30)
    return worker


def post_names(stack: Stack, names: dict[str, str]) -> None:
    """One accepted event per user, setting its name."""
    for user, name in names.items():
        assert stack.post(user_event(f"evt_{user}", user, name=name)).status_code == 202


def test_a_deaf_consumer_is_restarted_and_the_events_go_out(web_stack: Stack) -> None:
    ids = seed(web_stack, 5)
    worker = deaf_worker(web_stack)
    expected = {user: f"{user} heard" for user in ids}
    post_names(web_stack, expected)
    wait_for(lambda: all_named(web_stack, expected), timeout=60)
    # The worker logs each outcome once Recur has answered: after the sandbox holds the name.
    wait_for(lambda: worker.log().count('"result": "applied"') == len(ids), timeout=10)
    log = worker.log()
    assert '"event": "consumer_stalled"' in log, log
    assert "restarting the consumer" in log
    assert '"consumer_stack": [' in log  # where the consumer's thread was, for the operator
    assert log.index("restarting the consumer") < log.index('"result": "applied"')
    assert worker.alive(), log


def test_a_consumer_deaf_after_every_restart_ends_the_worker(web_stack: Stack) -> None:
    ids = seed(web_stack, 2)
    worker = deaf_worker(web_stack, DEAF_EVERY_TIME="1")
    post_names(web_stack, dict.fromkeys(ids, "unheard"))
    worker.process.wait(timeout=60)
    log = worker.log()
    assert worker.process.returncode == STALLED_EXIT_CODE, log
    assert "exiting for the supervisor" in log
    assert log.count("deaf: the consumer no longer takes tasks") == 2  # the start and the restart
    assert not web_stack.sandbox.control.requests(method="PATCH")


def test_a_consumer_still_reconnecting_after_a_long_outage_is_left_alone(web_stack: Stack) -> None:
    """Over a 12 s Redis outage Celery's own reconnection backoff grows to 8 s: once Redis is
    back, tasks wait while the consumer sleeps out its backoff. That consumer is reconnecting,
    not stalled, and the watchdog (5 s here) must not restart it."""
    ids = seed(web_stack, 3)
    worker = web_stack.start_worker(name="patient", env={"CONSUMER_STALL_SECONDS": "5"})
    web_stack.redis_server.stop()
    wait_for(lambda: "Trying again in 8.00 seconds" in worker.log(), timeout=60)
    web_stack.redis_server.start()
    # Tasks waiting from the first second Redis is back (empty batches: nothing to sync).
    publisher = create_celery_app(Settings(redis_url=web_stack.redis_server.url))
    for _ in range(3):
        publisher.send_task(SYNC_BATCH_TASK, args=([],), queue=SYNC_QUEUE)
    expected = {user: f"{user} after the outage" for user in ids}
    post_names(web_stack, expected)
    wait_for(lambda: all_named(web_stack, expected), timeout=60)
    log = worker.log()
    assert "consumer_stalled" not in log, log
