"""The retry policy for calls to Recur.

Two tiers, so that no worker slot sleeps for minutes:
- in the task, tenacity makes a few quick attempts (jittered exponential, `Retry-After`
  honoured) within `retry_fast_max_seconds`;
- after that, `handback_delay()` says when the pending store should offer the work again, on a
  capped, jittered exponential schedule, until the retry budget is spent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    DoAttempt,
    DoSleep,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from sync_worker.recur.errors import RecurStatusError, is_transient

T = TypeVar("T")

FAST_INITIAL_SECONDS = 0.5
FAST_MAX_WAIT_SECONDS = 4.0


class RetryAfterTooLong(Exception):
    """Recur asked us to wait longer than a quick retry may: hand the work back instead."""

    def __init__(self, error: BaseException, wait: float) -> None:
        super().__init__(f"Retry-After {wait:.1f} s exceeds the quick-retry window")
        self.error = error
        self.wait = wait


def retry_after_of(error: BaseException | None) -> float | None:
    """The wait Recur asked for on this error, if it did."""
    if isinstance(error, RecurStatusError):
        return error.retry_after
    return None


class _RetryAfterAwareWait:
    """Wait as long as Recur asked (Retry-After), else a jittered exponential."""

    def __init__(self, *, cap: float) -> None:
        self._cap = cap

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        asked = retry_after_of(error)
        if asked is not None:
            if asked > self._cap:
                assert error is not None  # noqa: S101 - retry_after implies an exception
                raise RetryAfterTooLong(error, asked)
            return asked
        # Jittered exponential, like tenacity's wait_exponential_jitter, whose `initial`
        # argument is deprecated (a DeprecationWarning on every call) since tenacity 9.2.
        exponent = min(state.attempt_number - 1, 30)
        jitter = random.uniform(0, FAST_INITIAL_SECONDS)  # noqa: S311 - jitter, not security
        return min(FAST_MAX_WAIT_SECONDS, FAST_INITIAL_SECONDS * 2.0**exponent + jitter)


def call_with_quick_retries(
    fn: Callable[[], T],
    *,
    attempts: int,
    max_seconds: float,
    before_attempt: Callable[[int], None] | None = None,
    on_retry: Callable[[RetryCallState], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn`, retrying transient Recur errors a few times within `max_seconds`.

    The last error is re-raised as it is; `RetryAfterTooLong` when Recur asked for a wait longer
    than `max_seconds`. `before_attempt(n)` runs before each attempt (e.g. to renew a lease and to
    give up if it was lost). `sleep` waits between attempts (tests pass one that records).
    """
    started = time.monotonic()
    try:
        if before_attempt is not None:
            before_attempt(1)
        return fn()
    except Exception as error:
        if not is_transient(error):
            raise
        first = error
    # Only a transient failure pays for tenacity (a tenth of a synced user's CPU when every
    # call went through it): the first attempt is handed to it as if it had made it, and the
    # rest runs as its own iteration does.
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_seconds),
        wait=_RetryAfterAwareWait(cap=max_seconds),
        before_sleep=on_retry,
        sleep=sleep,
        reraise=True,
    )
    retrying.begin()
    state = RetryCallState(retrying, fn=None, args=(), kwargs={})
    state.start_time = started
    state.set_exception((type(first), first, first.__traceback__))
    while True:
        action = retrying.iter(retry_state=state)
        if isinstance(action, DoAttempt):
            try:
                if before_attempt is not None:
                    before_attempt(state.attempt_number)
                return fn()
            except BaseException as error:  # noqa: BLE001 - tenacity decides, as in its loop
                state.set_exception((type(error), error, error.__traceback__))
        elif isinstance(action, DoSleep):
            state.prepare_for_next_attempt()
            sleep(action)
        else:  # pragma: no cover - reraise=True: tenacity raises rather than return
            raise AssertionError("unreachable: tenacity re-raises the last error")


def handback_delay(
    attempts: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds until the pending store offers the work again after `attempts` failed rounds.

    Exponential from `base`, capped at `cap`, with full jitter on the upper half so that many
    users failing together do not come back together; never sooner than Recur's `Retry-After`.
    """
    source = rng if rng is not None else random
    # The exponent is bounded: 2.0 ** 1024 raises OverflowError; 1000 doublings reach any cap.
    ceiling = min(cap, base * 2.0 ** min(max(0, attempts - 1), 1000))
    delay = ceiling / 2 + source.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
