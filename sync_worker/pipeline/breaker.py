"""The circuit breaker in front of Recur, shared by every worker through Redis.

    closed ──(transient failures / calls >= ratio over the window, with >= min calls)──▶ open
    open ──(cool-down over: one dispatcher takes the probe lock)──▶ half_open
    half_open ──(the probe's PATCH got an answer)──▶ closed
    half_open ──(the probe failed too)──▶ open, with the cool-down doubled (capped)

While it is not closed the dispatchers claim nothing, but intake keeps accepting and the pending
store keeps merging, so an outage leaves one pending write per user, not one per event. The probe
is a real pending user's PATCH, sent by the dispatcher that holds the lock; once it succeeds the
backlog drains at the shared rate limit.

What counts, per call: a 5xx, a timeout or a connection error is a failure; a 2xx, and a 4xx
other than 429 (Recur answered and refused the data: it is up), is a success. A 429 is neither:
it has its own shared cool-down, set from Recur's `Retry-After`, which says exactly how long to
wait; counting it as a failure would turn rate limiting into an "outage" held for our longer
cool-down, and counting it as a success would hide a 5xx storm behind the 429s of the same
overload. A probe answered with a 429 closes the breaker: Recur is up, and the cool-down holds.

Layout (keys in redis_keys.py):
- `breaker` hash: `state`, `cool_down` (seconds, current), `open_until`, `outage_since` (when
  the current outage began; a failed probe does not reset it), `changed_at`, `trips`,
  `trip_calls` and `trip_failures` (the window when it opened).
- `breaker-window` hash: `{second}:c` calls and `{second}:f` failures; seconds older than the
  window are dropped on each write.
- `breaker-probe`: held by the dispatcher sending the probe; expires so a crashed one frees it.
- `breaker-probed` hash: user id -> probes sent with that user's change in this outage, so that
  successive probes rotate over users (a failed probe is held, not counted as an attempt);
  deleted when the breaker closes.
- `breaker-outages` zset: `start:end` -> end of each finished outage, the newest kept, so the
  retry budget can leave outage time out (see `open_seconds_since`).

Every transition is one Lua script, so several workers never both open or both probe. Times are
the caller's clock (injectable for tests), as in the pending store.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from sync_worker import lua
from sync_worker import redis_keys as keys
from sync_worker.logging import get_logger
from sync_worker.telemetry.stats import Stats

log = get_logger(__name__)

State = Literal["closed", "open", "half_open"]
Action = Literal["pass", "hold", "probe"]
OUTAGES_KEPT = 1000
PROBED_TTL_SECONDS = 86400

_RECORD = lua.script("pipeline/breaker_record.lua")

_GATE = lua.script("pipeline/breaker_gate.lua")

_RELEASE = lua.script("pipeline/breaker_release.lua")


@dataclass(frozen=True)
class BreakerView:
    """The breaker as one call left it."""

    state: State
    open_until: float = 0.0

    @property
    def is_open(self) -> bool:
        """True unless closed: no PATCH may be sent but the probe."""
        return self.state != "closed"


@dataclass(frozen=True)
class Gate:
    """What the dispatcher may do now: `pass` (claim as usual), `hold`, or `probe` with `token`."""

    action: Action
    token: str = ""


class BreakerOpen(Exception):
    """The breaker opened while a call was being retried: stop and hand the work back."""

    def __init__(self, error: BaseException, view: BreakerView) -> None:
        super().__init__(f"circuit breaker {view.state}: {error}")
        self.error = error
        self.view = view


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Breaker:
    """Records call outcomes, opens and closes the circuit, and lets one probe through."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        window_seconds: int,
        min_calls: int,
        failure_ratio: float,
        cool_down_seconds: float,
        max_cool_down_seconds: float,
        probe_ttl_seconds: float,
        stats: Stats,
        on_transition: Callable[[str, dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._window = window_seconds
        self._min_calls = min_calls
        self._ratio = failure_ratio
        self._cool = cool_down_seconds
        self._max_cool = max_cool_down_seconds
        self._probe_ttl_ms = max(1, int(probe_ttl_seconds * 1000))
        self._stats = stats
        self._on_transition = on_transition
        self._clock = clock
        self._record = client.register_script(_RECORD)
        self._gate = client.register_script(_GATE)
        self._release = client.register_script(_RELEASE)

    def record(self, *, successes: int = 0, failures: int = 0, probe: bool = False) -> BreakerView:
        """Count call outcomes (closed), or give the probe's verdict (half-open).

        Outcomes of calls that were already in flight when it opened are not counted.
        """
        reply = cast(
            list[Any],
            self._record(
                keys=[
                    keys.BREAKER,
                    keys.BREAKER_WINDOW,
                    keys.BREAKER_PROBE,
                    keys.BREAKER_OUTAGES,
                    keys.BREAKER_PROBED,
                ],
                args=[
                    repr(self._clock()),
                    successes,
                    failures,
                    self._window,
                    self._min_calls,
                    self._ratio,
                    self._cool,
                    self._max_cool,
                    "1" if probe else "0",
                    OUTAGES_KEPT,
                ],
            ),
        )
        state, transition, calls, failed, until = (_text(part) for part in reply)
        if transition == "closed":
            self._transition(transition, outage_seconds=self._clock() - float(until))
            return BreakerView("closed")
        view = BreakerView(cast(State, state), float(until))
        if transition:
            self._transition(
                transition, open_until=view.open_until, calls=int(calls), failures=int(failed)
            )
        return view

    def gate(self) -> Gate:
        """For the dispatcher: claim as usual, hold, or send the one probe (lock taken)."""
        token = secrets.token_hex(8)
        action, transition = (
            _text(part)
            for part in cast(
                list[Any],
                self._gate(
                    keys=[keys.BREAKER, keys.BREAKER_PROBE],
                    args=[repr(self._clock()), token, self._probe_ttl_ms],
                ),
            )
        )
        if transition:
            self._transition(transition)
        return Gate(cast(Action, action), token if action == "probe" else "")

    def release_probe(self, gate: Gate) -> None:
        """Free the probe lock when nothing was sent (no user due): the next tick probes again."""
        self._release(keys=[keys.BREAKER_PROBE], args=[gate.token])

    def probes_of(self, user_ids: list[str]) -> list[int]:
        """How many probes of this outage each user's change has been, in order."""
        counts = cast(list[Any], self._redis.hmget(keys.BREAKER_PROBED, user_ids))
        return [int(count) if count is not None else 0 for count in counts]

    def count_probe(self, user_id: str) -> None:
        """Note that `user_id`'s change is sent as a probe (until the breaker closes; a day at
        most, since a dispatcher that dies mid-outage never closes it)."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(keys.BREAKER_PROBED, user_id, 1)
            pipe.expire(keys.BREAKER_PROBED, PROBED_TTL_SECONDS)
            pipe.execute()

    def view(self) -> BreakerView:
        """The state now (one read)."""
        state, until = cast(list[Any], self._redis.hmget(keys.BREAKER, ["state", "open_until"]))
        if state is None:
            return BreakerView("closed")
        return BreakerView(cast(State, _text(state)), float(until) if until else 0.0)

    def snapshot(self) -> dict[str, Any]:
        """State, the window's counts and the cool-down, for status and metrics."""
        raw = {
            _text(k): _text(v)
            for k, v in cast(dict[Any, Any], self._redis.hgetall(keys.BREAKER)).items()
        }
        now = self._clock()
        oldest = int(now) - self._window + 1
        calls = failures = 0
        for name, value in cast(dict[Any, Any], self._redis.hgetall(keys.BREAKER_WINDOW)).items():
            at, _, kind = _text(name).partition(":")
            if int(at) >= oldest:
                calls += int(value) if kind == "c" else 0
                failures += int(value) if kind == "f" else 0
        state = raw.get("state", "closed")
        open_until = float(raw.get("open_until", "0"))
        return {
            "state": state,
            "window_calls": calls,
            "window_failures": failures,
            "cool_down_seconds": float(raw.get("cool_down", self._cool)),
            "open_seconds_left": round(max(0.0, open_until - now), 3) if state == "open" else 0.0,
            "outage_since": float(raw["outage_since"]) if "outage_since" in raw else None,
            "trips": int(raw.get("trips", "0")),
        }

    def open_seconds_since(self, since: float) -> float:
        """How long the breaker was open (outage time) between `since` and now.

        The retry budget leaves this time out: while the breaker holds everything, no change
        gets a chance to be sent, so an outage of hours must not use up a 24 h budget.
        """
        now = self._clock()
        total = 0.0
        members = self._redis.zrangebyscore(keys.BREAKER_OUTAGES, repr(since), "+inf")
        for member in cast(list[bytes | str], members):
            start, _, end = _text(member).partition(":")
            total += max(0.0, min(float(end), now) - max(float(start), since))
        current = self._redis.hget(keys.BREAKER, "outage_since")
        if current is not None:
            total += max(0.0, now - max(float(_text(cast(bytes, current))), since))
        return total

    def _transition(
        self,
        transition: str,
        *,
        open_until: float = 0.0,
        calls: int = 0,
        failures: int = 0,
        outage_seconds: float = 0.0,
    ) -> None:
        to = {"opened": "open", "reopened": "open", "half_open": "half_open", "closed": "closed"}
        self._stats.incr("breaker_transitions_total", to=to[transition])
        self._stats.flush()
        details: dict[str, Any] = {}
        if transition == "opened":
            details = {
                "window_calls": calls,
                "window_failures": failures,
                "cool_down_s": self._cool,
            }
            log.error("breaker_opened", **details, hint="Recur is failing; sends are held")
        elif transition == "reopened":
            details = {"probe": "failed", "open_for_s": round(open_until - self._clock(), 1)}
            log.error("breaker_opened", **details)
        elif transition == "half_open":
            log.warning("breaker_half_open", probe="one pending user's PATCH")
        else:
            details = {"probe": "succeeded", "outage_s": round(outage_seconds, 1)}
            log.info("breaker_closed", **details, hint="the backlog drains at the rate limit")
        if self._on_transition is not None and transition in ("opened", "closed"):
            self._on_transition("breaker." + transition, details)
