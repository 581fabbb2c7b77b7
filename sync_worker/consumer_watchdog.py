"""The consumer watchdog: tells when this worker's Celery consumer has stopped taking tasks.

After a Redis crash, Celery's consumer has been seen connected again yet consuming nothing
(celery/celery#10205, #8030 and #8384; kombu#2007 fixed one cause): the dispatcher goes on
claiming and publishing, the sync queue fills, and no task runs until the worker is restarted,
while every liveness check (the dispatcher's heartbeat, `/readyz`) says all is well.

The sign of it: the sync queue has held messages for `stall_seconds` while this worker had a free
slot and received no task. A consumer with a free slot is blocked reading the queue (BRPOP), so
a message that stays there is one no consumer of this worker is reading. The watchdog's first
answer is `RESTART`: the caller restarts the consumer as after a lost connection. If the stall
goes on for as long again, `EXIT`: the process should end, for its supervisor to start a new one.
This module decides only; `celery_app.ConsumerWatchdogStep` acts.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable


class Verdict(enum.Enum):
    """What the watchdog asks of the worker after a check."""

    OK = "ok"
    RESTART = "restart"
    EXIT = "exit"


class ConsumerWatch:
    """The stall of one worker's consumer, from what the worker reports.

    `received` is called (from any thread) for every task the consumer takes; `check` by the
    watchdog's thread, about once a second, with what the queue and the pool look like now.
    """

    def __init__(self, stall_seconds: float, *, clock: Callable[[], float] = time.monotonic):
        self.stall_seconds = stall_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last_received = clock()
        self._stalled_since: float | None = None
        self._restarted_at: float | None = None

    def received(self) -> None:
        """The consumer took a task: it is alive."""
        with self._lock:
            self._last_received = self._clock()

    def check(self, *, waiting: int | None, free_slots: int) -> Verdict:
        """`waiting`: messages in the sync queue, or None when there is nothing to judge (the
        queue could not be read, or the consumer is not connected: Celery is reconnecting);
        `free_slots`: tasks this worker could take now."""
        now = self._clock()
        with self._lock:
            last_received = self._last_received
        starved = waiting is not None and waiting > 0 and free_slots > 0
        if not starved or (self._stalled_since is not None and last_received > self._stalled_since):
            self._stalled_since = None
            self._restarted_at = None
            if starved:
                self._stalled_since = now
            return Verdict.OK
        if self._stalled_since is None:
            self._stalled_since = now
            return Verdict.OK
        if self._restarted_at is not None:
            if now - self._restarted_at >= self.stall_seconds:
                return Verdict.EXIT
            return Verdict.OK
        if now - self._stalled_since >= self.stall_seconds:
            self._restarted_at = now
            # A task received from here on counts as the restart having worked.
            self._stalled_since = now
            return Verdict.RESTART
        return Verdict.OK
