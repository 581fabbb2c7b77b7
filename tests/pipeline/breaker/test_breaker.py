"""The circuit breaker's state machine on real Redis, with an injected clock."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from sync_worker import redis_keys as keys
from sync_worker.pipeline.breaker import Breaker
from sync_worker.settings import ConfigError, load_settings
from sync_worker.telemetry.stats import Stats
from tests.fixtures.clock import Clock

T0 = 1_800_000_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def make(redis_client: redis.Redis, clock: Clock) -> Callable[..., Breaker]:
    """A breaker (one per simulated worker) with small numbers: 10 calls, 50 %, 10 s window."""

    def build(**overrides: float) -> Breaker:
        options: dict[str, float] = {
            "window_seconds": 10,
            "min_calls": 10,
            "failure_ratio": 0.5,
            "cool_down_seconds": 5,
            "max_cool_down_seconds": 12,
            "probe_ttl_seconds": 60,
            **overrides,
        }
        return Breaker(
            redis_client,
            window_seconds=int(options["window_seconds"]),
            min_calls=int(options["min_calls"]),
            failure_ratio=options["failure_ratio"],
            cool_down_seconds=options["cool_down_seconds"],
            max_cool_down_seconds=options["max_cool_down_seconds"],
            probe_ttl_seconds=options["probe_ttl_seconds"],
            stats=Stats(redis_client),
            clock=clock,
        )

    return build


def transitions(client: redis.Redis) -> dict[str, str]:
    stats: dict[str, str] = client.hgetall(keys.STATS)  # type: ignore[assignment]
    return {k: v for k, v in stats.items() if k.startswith("breaker_transitions_total")}


def trip(breaker: Breaker) -> None:
    for _ in range(10):
        breaker.record(failures=1)
    assert breaker.view().state == "open"


def test_stays_closed_below_the_minimum_of_calls(make: Callable[..., Breaker]) -> None:
    breaker = make()
    for _ in range(9):
        assert breaker.record(failures=1).state == "closed"
    assert breaker.gate().action == "pass"
    assert breaker.snapshot()["window_failures"] == 9


def test_opens_at_the_ratio_with_enough_calls_for_every_worker(
    make: Callable[..., Breaker], redis_client: redis.Redis
) -> None:
    one, other = make(), make()
    one.record(successes=5)
    for _ in range(4):
        assert other.record(failures=1).state == "closed"  # 4 of 9
    view = one.record(failures=1)  # 5 of 10: the ratio is reached
    assert view.state == "open"
    assert view.open_until == T0 + 5
    assert other.view().state == "open"
    assert other.gate().action == "hold"
    snapshot = other.snapshot()
    assert snapshot["trips"] == 1
    assert snapshot["window_calls"] == 0  # the window starts afresh
    assert snapshot["open_seconds_left"] == 5
    assert transitions(redis_client) == {"breaker_transitions_total|to=open": "1"}


def test_a_healthy_mix_does_not_open(make: Callable[..., Breaker]) -> None:
    breaker = make()
    breaker.record(successes=60)
    for _ in range(50):
        assert breaker.record(failures=1).state == "closed"


def test_failures_slide_out_of_the_window(make: Callable[..., Breaker], clock: Clock) -> None:
    breaker = make()
    for _ in range(9):
        breaker.record(failures=1)
    clock.advance(10)  # those nine are now outside the 10 s window
    assert breaker.record(failures=1).state == "closed"
    assert breaker.snapshot()["window_failures"] == 1


def test_outcomes_while_open_are_not_counted(make: Callable[..., Breaker]) -> None:
    breaker = make()
    trip(breaker)
    assert breaker.record(successes=100).state == "open"  # calls in flight when it opened
    assert breaker.record(failures=5).state == "open"
    assert breaker.snapshot()["window_calls"] == 0


def test_one_probe_after_the_cool_down_and_its_success_closes(
    make: Callable[..., Breaker], clock: Clock, redis_client: redis.Redis
) -> None:
    one, other = make(), make()
    trip(one)
    clock.advance(4.9)
    assert one.gate().action == "hold"
    clock.advance(0.2)
    probe = one.gate()
    assert probe.action == "probe"
    assert one.view().state == "half_open"
    assert other.gate().action == "hold"  # exactly one probe across workers
    clock.advance(1)
    assert one.record(successes=1, probe=True).state == "closed"
    assert other.gate().action == "pass"
    assert not redis_client.exists(keys.BREAKER_PROBE)
    assert transitions(redis_client) == {
        "breaker_transitions_total|to=open": "1",
        "breaker_transitions_total|to=half_open": "1",
        "breaker_transitions_total|to=closed": "1",
    }


def test_a_failed_probe_reopens_with_a_doubled_capped_cool_down(
    make: Callable[..., Breaker], clock: Clock
) -> None:
    breaker = make()
    trip(breaker)
    expected = [10.0, 12.0, 12.0]  # 5 -> 10 -> capped at 12
    for cool_down in expected:
        clock.advance(breaker.snapshot()["open_seconds_left"])
        assert breaker.gate().action == "probe"
        view = breaker.record(failures=1, probe=True)
        assert view.state == "open"
        assert view.open_until == pytest.approx(clock.now + cool_down)
        assert breaker.snapshot()["cool_down_seconds"] == cool_down
    clock.advance(12)
    assert breaker.gate().action == "probe"
    breaker.record(successes=1, probe=True)
    assert breaker.snapshot()["cool_down_seconds"] == 5  # back to the base once it closed
    assert breaker.snapshot()["trips"] == 1  # re-opening is the same outage


def test_probe_without_an_answer_frees_the_lock(make: Callable[..., Breaker], clock: Clock) -> None:
    breaker = make()
    trip(breaker)
    clock.advance(5)
    first = breaker.gate()
    assert first.action == "probe"
    breaker.release_probe(first)  # nothing was due: nothing was sent
    assert breaker.view().state == "half_open"
    assert breaker.gate().action == "probe"


def test_a_crashed_probers_lock_expires(make: Callable[..., Breaker], clock: Clock) -> None:
    breaker = make(probe_ttl_seconds=0.05)
    trip(breaker)
    clock.advance(5)
    assert breaker.gate().action == "probe"
    assert breaker.gate().action == "hold"
    time.sleep(0.1)  # the lock's TTL is Redis time
    assert breaker.gate().action == "probe"


def test_outage_time_is_left_out_of_the_retry_budget(
    make: Callable[..., Breaker], clock: Clock
) -> None:
    breaker = make()
    clock.advance(100)
    trip(breaker)  # outage from T0+100
    clock.advance(50)
    assert breaker.open_seconds_since(T0) == 50  # the current outage counts too
    assert breaker.gate().action == "probe"
    breaker.record(successes=1, probe=True)  # closed at T0+150
    clock.advance(1000)
    assert breaker.open_seconds_since(T0) == 50
    assert breaker.open_seconds_since(T0 + 120) == 30  # only the overlap
    assert breaker.open_seconds_since(T0 + 200) == 0


def test_bad_breaker_settings_fail_at_start_up_with_one_line() -> None:
    with pytest.raises(
        ConfigError, match=r"^BREAKER_COOL_DOWN_SECONDS must not exceed BREAKER_MAX"
    ):
        load_settings(breaker_cool_down_seconds=700)
    with pytest.raises(ConfigError, match=r"^BREAKER_FAILURE_RATIO: .*greater than 0"):
        load_settings(breaker_failure_ratio=0)
    with pytest.raises(ConfigError, match=r"^BREAKER_MIN_CALLS: "):
        load_settings(breaker_min_calls=0)
