"""A total deadline per call to Recur: connect, TLS, write and the whole read together.

httpx's timeouts bound each socket operation, so an answer trickling in a byte at a time keeps a
call alive for as long as the server likes. A lease must outlast the longest call, so calls need
a bound that holds whatever the server does: each socket operation (transport.py) gets at most
what is left of the call's deadline, and none starts once it has passed. The deadline is per
thread (`attempt_deadline`), set by the client around each call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def attempt_deadline(seconds: float) -> Iterator[None]:
    """Every socket operation of this thread, inside the block, ends within `seconds` in all."""
    _local.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _local.at = None


def remaining(timeout: float | None, expired: type[Exception]) -> float | None:
    """`timeout` capped by what is left of this thread's deadline; `expired` once it passed."""
    at: float | None = getattr(_local, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise expired("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)
