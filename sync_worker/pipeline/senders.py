"""The worker's senders: a fixed set of threads that every batch's PATCHes go out on.

A task used to send its users one after the other, so the last user of a task of five waited for
four calls to Recur before its own (bench/latency.py: 71 ms at the median from the task's start
to its send). Handing the calls to a shared pool lets a batch's users go out together while the
pool's size, WORKER_CONCURRENCY, stays the bound on the calls one worker has in flight, whatever
the number of tasks running.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait


class Senders:
    """Runs the steps of a batch at once, on threads shared by every batch of the worker."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run_all(
        self,
        steps: Sequence[Callable[[], None]],
        *,
        check_at: float,
        clock: Callable[[], float],
        keep: Callable[[list[int]], float],
    ) -> None:
        """Run every step and wait for all of them; then raise the first error one raised.

        Meanwhile, from `check_at` on, `keep` gets the indices of the steps not yet finished
        (queued behind other batches' calls, or sending) and returns when to call it next:
        this is how the claims of a batch keep their leases while they wait for a thread.
        """
        pool = self._started()
        # Each step runs in a copy of the caller's context, so the task's log fields go along
        # (one copy per step: a context cannot be entered by two threads at once).
        futures = [pool.submit(contextvars.copy_context().run, step) for step in steps]
        waiting = set(futures)
        while waiting:
            timeout = None if math.isinf(check_at) else max(0.0, check_at - clock())
            _, waiting = wait(waiting, timeout=timeout)
            if waiting and clock() >= check_at:
                check_at = keep([i for i, future in enumerate(futures) if not future.done()])
        for future in futures:
            future.result()

    def _started(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._size, thread_name_prefix="recur-send")
            return self._pool

    def close(self) -> None:
        """Let the threads end once the calls they have are done."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
