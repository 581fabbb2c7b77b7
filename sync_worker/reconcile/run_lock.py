"""The reconciliation's run lock, renewed on a thread for as long as a pass holds it."""

from __future__ import annotations

import threading

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from sync_worker.logging import get_logger

log = get_logger(__name__)


class LockKeeper:
    """Renews the run lock on a thread while the pass runs; notes if it was lost."""

    def __init__(self, lock: Lock, *, ttl: float) -> None:
        self._lock = lock
        self._ttl = ttl
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="reconcile-lock", daemon=True)

    def _keep(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            try:
                self._lock.reacquire()
            except LockError:
                self.lost.set()
                return
            except redis.RedisError as error:
                # One missed renewal is not fatal: the TTL leaves two more tries.
                log.warning("reconcile_lock_renew_failed", error=str(error))

    def __enter__(self) -> LockKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._lock.release()
        except LockError:
            log.warning("reconcile_lock_lost_before_release")
