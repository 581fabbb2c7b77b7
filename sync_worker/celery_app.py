"""The Celery app: reliability settings, queues, the dispatcher bootstep and the beat schedule.

`celery -A sync_worker.celery_app worker` and `sync-worker worker` run the same thing. The
settings follow the notes on Celery and Redis failure modes: late acks, prefetch 1, redelivery
of tasks whose worker died, a visibility timeout set in all three places and longer than any
lease, publish retries, and socket timeouts so a half-open connection cannot hang a worker.

The worker pool is `threads`: a sync is an HTTP call, so a worker spends its time waiting on the
network, and threads share one Recur connection pool and one Redis pool. (bench/sync_throughput
measures it against prefork.)
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from functools import cached_property
from typing import Any, NoReturn

import click
from celery import Celery, bootsteps
from celery.schedules import crontab
from celery.signals import setup_logging, task_prerun, task_received
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu import Queue
from redis import RedisError

from sync_worker.connections import broker_ssl, broker_transport, broker_transport_options
from sync_worker.consumer_watchdog import ConsumerWatch, Verdict
from sync_worker.logging import configure_logging, get_logger
from sync_worker.pipeline.records import Claim
from sync_worker.runtime import Runtime
from sync_worker.settings import ConfigError, Settings, load_settings
from sync_worker.telemetry.ops_webhooks import OpsDeliverer

log = get_logger(__name__)

SYNC_QUEUE = "sync"
MAINTENANCE_QUEUE = "maintenance"
# Task names route messages already queued: they never follow a module's path.
SYNC_BATCH_TASK = "sync_worker.sync_batch"


class SyncCelery(Celery):
    """A Celery app that carries the settings and the process's runtime."""

    settings: Settings

    @cached_property
    def runtime(self) -> Runtime:
        """The collaborators of this process, built on first use."""
        return Runtime(self.settings)

    def start(self, argv: list[str] | None = None) -> NoReturn:
        """Run a `celery` command (worker, beat) and exit the process with its exit code.

        Celery's own `start` drops the code (it runs click with standalone_mode off and discards
        what it returns), so a worker that stopped on "Unrecoverable error" exited 0, and a
        supervisor that restarts on failure left it dead. `worker_main` comes through here too.
        """
        from celery.bin.celery import celery

        celery.params[0].default = self
        try:
            code = celery.main(args=sys.argv if argv is None else argv, standalone_mode=False)
        except click.exceptions.Exit as stop:
            code = stop.exit_code
        finally:
            celery.params[0].default = None
        raise SystemExit(code if isinstance(code, int) else 0)


def _crontab(expression: str, timezone: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def create_celery_app(settings: Settings) -> SyncCelery:
    """Build the Celery app from the settings."""
    celery = SyncCelery("sync_worker", broker=settings.redis_url, include=["sync_worker.tasks"])
    celery.settings = settings
    visibility = settings.visibility_timeout_seconds
    # No redis-py retry on the broker's connections (no `retry_on_timeout`): a retried read of
    # kombu's pub/sub connection reconnects it unsubscribed and then waits forever for a message,
    # so a Redis back within the retry left the consumer blocked in that read, deaf to every
    # task. Unretried, the error reaches Celery, which reconnects and subscribes again.
    transport = {
        "visibility_timeout": visibility,
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 25,
        **broker_transport_options(settings),
    }
    celery.conf.update(
        broker_transport=broker_transport(settings),
        broker_use_ssl=broker_ssl(settings),
        broker_transport_options=transport,
        result_backend_transport_options={
            "visibility_timeout": visibility,
            **broker_transport_options(settings),
        },
        visibility_timeout=visibility,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_retry_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_soft_time_limit=min(600, visibility // 3),
        task_time_limit=min(900, visibility // 2),
        task_publish_retry_policy={
            "max_retries": 10,
            "interval_start": 0.5,
            "interval_step": 1,
            "interval_max": 5,
        },
        task_default_queue=SYNC_QUEUE,
        task_queues=[Queue(SYNC_QUEUE), Queue(MAINTENANCE_QUEUE)],
        task_routes={
            "sync_worker.sweep": {"queue": MAINTENANCE_QUEUE},
            "sync_worker.reconcile": {"queue": MAINTENANCE_QUEUE},
        },
        worker_pool="threads",
        worker_consumer=f"{__name__}:SyncConsumer",
        worker_concurrency=settings.worker_concurrency,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_eta_task_limit=1000,
        worker_soft_shutdown_timeout=10,
        worker_enable_soft_shutdown_on_idle=True,
        worker_hijack_root_logger=False,
        timezone=settings.reconcile_timezone,
        enable_utc=True,
        beat_schedule={
            "sweep": {
                "task": "sync_worker.sweep",
                "schedule": settings.sweep_interval_seconds,
            },
            "nightly-reconciliation": {
                "task": "sync_worker.reconcile",
                "schedule": _crontab(settings.reconcile_schedule, settings.reconcile_timezone),
                "kwargs": {"scheduled": True},
            },
        },
    )
    celery.steps["worker"].add(DispatcherStep)
    celery.steps["worker"].add(ConsumerWatchdogStep)
    if settings.ops_webhook_url is not None:
        celery.steps["worker"].add(OpsWebhooksStep)

    @setup_logging.connect(weak=False)
    def _configure_logging(**_: Any) -> None:
        configure_logging(settings)

    return celery


class SyncConsumer(Consumer):
    """Celery's consumer, made to survive the cleanup after a Redis crash.

    When the broker connection is lost, Celery closes it; kombu's Redis channel then tries to
    put back the messages this worker had taken but not acknowledged, through a connection pool
    it rebuilds from a transport that `collect()` has already detached. That raises
    AttributeError ("'NoneType' object has no attribute 'hostname'"), which Celery does not
    expect there: it ends the worker with "Unrecoverable error" (measured: one crash in three
    with Redis SIGKILLed mid-sync). Putting messages back cannot work anyway while Redis is
    down; they come back by themselves (kombu restores unacknowledged messages after the
    visibility timeout, and the pending store offers their users again once their lease lapses).
    So the failed cleanup is logged and the consumer goes on to reconnect.

    It also starts without mingle, whatever the command line says. Mingle asks the other
    workers for the tasks they were told to revoke, and waits a second for their answers, at
    every start and after every reconnection. recur-sync revokes no task (a user's work is
    fenced by its lease, not by a revoke), so that second only delayed the recovery.
    """

    def __init__(
        self,
        on_task_request: Callable[..., Any],
        *,
        worker_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = {**(worker_options or {}), "without_mingle": True}
        super().__init__(on_task_request, worker_options=options, **kwargs)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Celery's cleanup of the lost connection; a failure in it is logged, not fatal."""
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError as error:
            # Celery drops `self.connection` before closing it, so the reconnect starts afresh.
            # What it skips after the close, cancelling long-running tasks, the threads pool
            # cannot do (no kill_job); their users' leases cover them.
            self.connection = None
            log.warning(
                "broker_cleanup_failed",
                error_type=type(error).__name__,
                error=str(error),
                why="kombu could not put unacknowledged messages back on the lost connection",
            )


class SyncRequest(Request):
    """Celery's task request, made to survive acknowledging a message after a Redis crash.

    A task that was running when the broker connection was lost finishes later and acknowledges
    its message on the old channel, whose transport Celery has detached by then: kombu raises
    AttributeError instead of a connection error, nothing in the event loop catches it, and the
    worker stops with "Unrecoverable error". Counted among the connection errors, it is logged
    ("Couldn't ack") and the worker goes on; the message comes back after the visibility timeout
    and finds its users already settled (or their leases lapsed, and offered again).
    """

    def __init__(self, message: Any, *, connection_errors: Any = None, **kwargs: Any) -> None:
        errors = (*(connection_errors or ()), AttributeError)
        super().__init__(message, connection_errors=errors, **kwargs)


class ThreadStep(bootsteps.StartStopStep):
    """A worker bootstep that runs one daemon thread for as long as the worker runs; the
    thread's function gets an event that `stop` sets, then the step waits for it (5 s)."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_thread(self, name: str, target: Callable[[threading.Event], None]) -> None:
        """Start `target(stop_event)` on a daemon thread called `name`."""
        self._thread = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class DispatcherStep(ThreadStep):
    """Runs the dispatcher thread for as long as the worker runs."""

    def start(self, worker: Any) -> None:
        from sync_worker.pipeline.dispatch import Dispatcher

        runtime = worker.app.runtime
        _refuse_a_mixed_mode(runtime)
        dispatcher = Dispatcher(
            runtime,
            publish=claim_publisher(worker.app),
            queue_depth=lambda: sync_queue_depth(runtime),
            hostname=worker.hostname,
        )
        self.run_thread("dispatcher", dispatcher.run)


class ConsumerStalled(ConnectionError):
    """Raised in the consumer's event loop by the watchdog: Celery then reconnects the consumer
    as after a lost broker connection (a `ConnectionError` is among the transport's connection
    errors)."""


STALLED_EXIT_CODE = 3
"""The worker's exit code when its consumer stayed stalled after a restart."""


class ConsumerWatchdogStep(ThreadStep):
    """Watches the Celery consumer on a thread (consumer_watchdog.py): restarts a consumer that
    stopped taking tasks, and ends the worker if that did not help."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._watch: ConsumerWatch | None = None

    def _received(self, **_: Any) -> None:
        if self._watch is not None:
            self._watch.received()

    def start(self, worker: Any) -> None:
        runtime = worker.app.runtime
        watch = self._watch = ConsumerWatch(runtime.settings.consumer_stall_seconds)
        task_received.connect(self._received, weak=False)
        self.run_thread("watchdog", lambda stop: self._run(worker, runtime, watch, stop))

    def _run(
        self, worker: Any, runtime: Runtime, watch: ConsumerWatch, stop: threading.Event
    ) -> None:
        while not stop.wait(1.0):
            try:
                self._check(worker, runtime, watch)
            except Exception as error:  # noqa: BLE001 - the watchdog outlives any one failed check
                log.warning(
                    "consumer_watchdog_error", error_type=type(error).__name__, error=str(error)
                )

    def _check(self, worker: Any, runtime: Runtime, watch: ConsumerWatch) -> None:
        """One look at the queue and the pool, and what the verdict asks."""
        waiting: int | None = None
        # No connection: Celery is (re)connecting, with a backoff of its own that grows past
        # 15 s over a long Redis outage; a consumer that is not connected is not stalled.
        if getattr(worker.consumer, "connection", None) is not None:
            with contextlib.suppress(RedisError, OSError):  # Redis down: nothing is stalled
                waiting = sync_queue_depth(runtime)
        free = worker.concurrency - len(worker_state.reserved_requests)
        verdict = watch.check(waiting=waiting, free_slots=free)
        hub = getattr(worker.consumer, "hub", None)
        if verdict is Verdict.RESTART and hub is not None:
            log.error(
                "consumer_stalled",
                action="restarting the consumer",
                waiting=waiting,
                free_slots=free,
                seconds=watch.stall_seconds,
                consumer_stack=_consumer_stack(),
            )
            runtime.stats.incr("consumer_restarts_total")
            hub.call_soon(_raise_stalled)
        elif verdict is not Verdict.OK:
            log.error(
                "consumer_stalled",
                action="exiting for the supervisor to start the worker again",
                waiting=waiting,
                free_slots=free,
                exit_code=STALLED_EXIT_CODE,
                consumer_stack=_consumer_stack(),
            )
            with contextlib.suppress(RedisError, OSError):
                runtime.stats.flush()
            time.sleep(0.1)  # the log line out before the process goes
            os._exit(STALLED_EXIT_CODE)

    def stop(self, worker: Any) -> None:
        task_received.disconnect(self._received)
        super().stop(worker)


def _consumer_stack() -> list[str]:
    """Where the consumer's thread (the main thread) is now, innermost frame last: what it is
    blocked in when its event loop no longer runs."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    if frame is None:
        return []
    return [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)[-12:]]


def _raise_stalled() -> None:
    raise ConsumerStalled("the consumer took no task while the sync queue had some waiting")


def claim_publisher(app: Celery) -> Callable[[list[Claim]], None]:
    """Publish each batch of claims as one `sync_batch` message.

    The task is looked up by its name in the app's registry (the worker has imported
    `tasks`, the app's `include`), not imported: `tasks` imports this module for the app.
    """
    sync_batch = app.tasks[SYNC_BATCH_TASK]

    def publish(claims: list[Claim]) -> None:
        sync_batch.apply_async(
            args=([[claim.user_id, claim.token] for claim in claims],), queue=SYNC_QUEUE
        )

    return publish


def sync_queue_depth(runtime: Runtime) -> int:
    """Messages waiting in the sync queue (not counting those a worker holds)."""
    client: Any = runtime.redis
    return int(client.llen(SYNC_QUEUE))


def _refuse_a_mixed_mode(runtime: Runtime) -> None:
    """Exit 2 with one line when the key's mode differs from the Redis state's (mode.py).

    `sync-worker worker` checks before Celery starts; this covers a plain `celery -A ... worker`,
    where raising from a bootstep would leave a traceback and a worker that never syncs.
    """
    from sync_worker.mode import claim_mode

    try:
        claim_mode(runtime.redis, runtime.settings)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        os._exit(2)


class OpsWebhooksStep(ThreadStep):
    """Delivers operational webhooks on a thread of their own (ops_webhooks.py), so a slow
    receiver never delays the dispatcher's claims. Added only when OPS_WEBHOOK_URL is set."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._deliverer: OpsDeliverer | None = None

    def start(self, worker: Any) -> None:
        runtime = worker.app.runtime
        deliverer = OpsDeliverer.from_settings(
            runtime.settings, client=runtime.redis, stats=runtime.stats
        )
        self._deliverer = deliverer
        self.run_thread("ops-webhooks", deliverer.run)

    def stop(self, worker: Any) -> None:
        super().stop(worker)
        if self._deliverer is not None:
            self._deliverer.close()


@task_prerun.connect(weak=False)
def _bind_task_id(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    import structlog

    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None))


app = create_celery_app(load_settings())
