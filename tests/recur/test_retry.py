"""The retry policy: quick retries of transient errors, Retry-After honoured, handback delays."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tenacity import RetryCallState

from sync_worker.recur.errors import (
    BadRequest,
    Conflict,
    NotFound,
    RateLimited,
    RecurError,
    RecurStatusError,
    RecurTimeout,
    RecurTransportError,
    ServerError,
    Unauthorized,
)
from sync_worker.recur.retry import (
    FAST_MAX_WAIT_SECONDS,
    RetryAfterTooLong,
    call_with_quick_retries,
    handback_delay,
)

PATH = "/v1/customers/external/u1"


def status_error(
    cls: type[RecurStatusError], status: int, retry_after: float | None = None
) -> RecurStatusError:
    return cls(
        method="PATCH", path=PATH, status=status, code="c", message="m", retry_after=retry_after
    )


class Script:
    """A callable that raises the scripted errors in turn, then returns "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class Recorder:
    """Stands in for time.sleep and for the hooks: records, never waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.attempts: list[int] = []
        self.retried: list[BaseException | None] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def before_attempt(self, attempt: int) -> None:
        self.attempts.append(attempt)

    def on_retry(self, state: RetryCallState) -> None:
        self.retried.append(state.outcome.exception() if state.outcome is not None else None)


def run(
    fn: Callable[[], str], recorder: Recorder, *, attempts: int = 3, max_seconds: float = 10.0
) -> str:
    return call_with_quick_retries(
        fn,
        attempts=attempts,
        max_seconds=max_seconds,
        before_attempt=recorder.before_attempt,
        on_retry=recorder.on_retry,
        sleep=recorder.sleep,
    )


def test_success_at_once() -> None:
    recorder, fn = Recorder(), Script()
    assert run(fn, recorder) == "ok"
    assert (fn.calls, recorder.waits, recorder.attempts, recorder.retried) == (1, [], [1], [])


TRANSIENT = [
    status_error(RateLimited, 429),
    status_error(ServerError, 500),
    status_error(ServerError, 503),
    RecurTransportError("connection refused"),
    RecurTimeout("read timeout"),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_errors_are_retried(error: RecurError) -> None:
    recorder, fn = Recorder(), Script(error, error)
    assert run(fn, recorder) == "ok"
    assert fn.calls == 3
    assert recorder.attempts == [1, 2, 3]
    assert recorder.retried == [error, error]
    assert len(recorder.waits) == 2


NOT_TRANSIENT = [
    status_error(BadRequest, 400),
    status_error(Unauthorized, 401),
    status_error(NotFound, 404),
    status_error(Conflict, 409),
    status_error(RecurStatusError, 418),
    RecurError("a 2xx that is not JSON"),
    ValueError("a bug"),
]


@pytest.mark.parametrize("error", NOT_TRANSIENT, ids=lambda e: type(e).__name__)
def test_other_errors_are_raised_at_once(error: Exception) -> None:
    recorder, fn = Recorder(), Script(error)
    with pytest.raises(type(error)) as caught:
        run(fn, recorder)
    assert caught.value is error
    assert (fn.calls, recorder.waits, recorder.retried, recorder.attempts) == (1, [], [], [1])


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_stops_after_attempts_with_the_last_error(attempts: int) -> None:
    errors = [status_error(ServerError, 500) for _ in range(10)]
    recorder, fn = Recorder(), Script(*errors)
    with pytest.raises(ServerError) as caught:
        run(fn, recorder, attempts=attempts)
    assert caught.value is errors[attempts - 1]
    assert fn.calls == attempts
    assert recorder.attempts == list(range(1, attempts + 1))
    assert len(recorder.waits) == len(recorder.retried) == attempts - 1


def test_fallback_waits_are_jittered_exponential_and_capped() -> None:
    recorder = Recorder()
    fn = Script(*[RecurTimeout("slow") for _ in range(6)])
    assert run(fn, recorder, attempts=7, max_seconds=60) == "ok"
    low = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(recorder.waits) == len(low)
    for wait, floor in zip(recorder.waits, low, strict=True):
        assert floor <= wait <= min(floor + 0.5, FAST_MAX_WAIT_SECONDS)


@pytest.mark.parametrize("retry_after", [0.0, 1.0, 2.5, 10.0])
def test_retry_after_is_the_wait(retry_after: float) -> None:
    recorder = Recorder()
    fn = Script(status_error(RateLimited, 429, retry_after), status_error(ServerError, 503, 3.0))
    assert run(fn, recorder, max_seconds=10) == "ok"
    assert recorder.waits == [retry_after, 3.0]


def test_retry_after_too_long_hands_back() -> None:
    error = status_error(RateLimited, 429, 30.0)
    recorder, fn = Recorder(), Script(error)
    with pytest.raises(RetryAfterTooLong) as caught:
        run(fn, recorder, max_seconds=10)
    assert caught.value.error is error
    assert caught.value.wait == 30.0
    assert "30.0 s" in str(caught.value)
    assert fn.calls == 1
    assert recorder.waits == []


def test_retry_after_too_long_on_the_last_attempt_still_carries_the_wait() -> None:
    # tenacity computes the wait before the stop: the caller learns the wait either way.
    error = status_error(RateLimited, 429, 30.0)
    with pytest.raises(RetryAfterTooLong) as caught:
        run(Script(error), Recorder(), attempts=1, max_seconds=10)
    assert caught.value.error is error


def test_retry_after_within_the_window_on_the_last_attempt_raises_the_error() -> None:
    error = status_error(RateLimited, 429, 2.0)
    with pytest.raises(RateLimited) as caught:
        run(Script(error), Recorder(), attempts=1, max_seconds=10)
    assert caught.value is error
    assert caught.value.retry_after == 2.0


def test_stops_after_max_seconds() -> None:
    def slow_failure() -> str:
        time.sleep(0.06)
        raise RecurTimeout("slow")

    recorder = Recorder()
    with pytest.raises(RecurTimeout):
        run(slow_failure, recorder, attempts=10, max_seconds=0.05)
    assert recorder.attempts == [1]
    assert recorder.waits == []


def test_before_attempt_can_stop_the_retries() -> None:
    class LeaseLost(Exception):
        pass

    fn = Script(status_error(ServerError, 500))
    attempts: list[int] = []

    def before_attempt(attempt: int) -> None:
        attempts.append(attempt)
        if attempt > 1:
            raise LeaseLost

    with pytest.raises(LeaseLost):
        call_with_quick_retries(
            fn, attempts=5, max_seconds=10, before_attempt=before_attempt, sleep=lambda _: None
        )
    assert attempts == [1, 2]
    assert fn.calls == 1


# handback_delay


class Extreme(random.Random):
    """A Random whose uniform() returns one end of the range."""

    def __init__(self, *, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def test_handback_delay_doubles_up_to_the_cap() -> None:
    highest = [handback_delay(n, base=5, cap=60, rng=Extreme(high=True)) for n in range(1, 7)]
    lowest = [handback_delay(n, base=5, cap=60, rng=Extreme(high=False)) for n in range(1, 7)]
    assert highest == [5, 10, 20, 40, 60, 60]
    assert lowest == [2.5, 5, 10, 20, 30, 30]
    assert handback_delay(0, base=5, cap=60, rng=Extreme(high=True)) == 5


def test_handback_delay_is_jittered() -> None:
    rng = random.Random(7)
    delays = {handback_delay(3, base=5, cap=3600, rng=rng) for _ in range(50)}
    assert len(delays) == 50
    assert all(10 <= delay <= 20 for delay in delays)


def test_handback_delay_never_before_retry_after() -> None:
    assert handback_delay(1, base=5, cap=60, retry_after=120, rng=Extreme(high=True)) == 120
    assert handback_delay(4, base=5, cap=60, retry_after=1, rng=Extreme(high=True)) == 40


def test_handback_delay_survives_huge_attempt_counts() -> None:
    assert handback_delay(5000, base=5, cap=3600, rng=Extreme(high=True)) == 3600


@given(
    attempts=st.integers(min_value=0, max_value=5000),
    base=st.floats(min_value=0.01, max_value=1000),
    cap=st.floats(min_value=0.01, max_value=100_000),
    retry_after=st.none() | st.floats(min_value=0, max_value=100_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_handback_delay_properties(
    attempts: int, base: float, cap: float, retry_after: float | None, seed: int
) -> None:
    ceiling = min(cap, base * 2.0 ** min(max(0, attempts - 1), 1000))
    delay = handback_delay(
        attempts, base=base, cap=cap, retry_after=retry_after, rng=random.Random(seed)
    )
    if retry_after is not None and retry_after > ceiling:
        assert delay == retry_after
    else:
        assert ceiling / 2 <= delay <= ceiling
    if retry_after is not None:
        assert delay >= retry_after
    assert delay <= max(cap, retry_after or 0)
