"""Fault injection: what can go wrong between a client and Recur, on demand.

Kinds, in the order a `/v1` request meets them (the app sleeps `latency_ms` first):

1. `outage`: every request is a 503 `service_unavailable`.
2. `rate_limit_rps`: a token bucket holding one second of requests; a request over it is a
   429 `rate_limited` with `Retry-After` (whole seconds until a token is back, at least 1).
3. Authentication (in the app): a request without the secret key is a 401 and consumes nothing
   below.
4. `scripts`: per external id, a queue of statuses consumed one per request naming that
   external id in its path (`/customers/external/{id}` or `/customers/{id}?by_external_id=true`).
   `200` or `"ok"` lets the request through; 429 carries `Retry-After: retry_after_seconds`.
5. `error_rate`: that fraction of requests is a 500 `internal_error`.

Apart from those, `lost_answers` maps an external id to how many of the next requests naming it
are handled at once (a PATCH is applied) but answered only `lost_answer_ms` later: past the
client's timeout, the answer is lost although the change took effect.

A refused request changes no customer. Latency applies to every `/v1` request, so a large
`latency_ms` makes requests hang long enough to test client timeouts.

`apply_delay_ms` is a PATCH that outlives its client: the body is read at once, then the sandbox
waits that long before it applies (and logs, and answers) it, whether or not the client is still
there. Past the client's timeout, that is a write which lands after the client gave up on it.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sync_worker.sandbox.store import ApiError, invalid

# The code of every status a script may inject; 200 means "no fault".
SCRIPT_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "resource_not_found",
    408: "request_timeout",
    409: "conflict",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}
OK = 200


@dataclass(frozen=True)
class FaultConfig:
    """Every fault knob; the default injects nothing."""

    error_rate: float = 0.0
    latency_ms: int = 0
    apply_delay_ms: int = 0
    rate_limit_rps: float = 0.0
    outage: bool = False
    retry_after_seconds: int = 1
    scripts: dict[str, list[int]] = field(default_factory=dict)
    lost_answers: dict[str, int] = field(default_factory=dict)
    lost_answer_ms: int = 5000

    def to_json(self) -> dict[str, Any]:
        """The config as JSON; scripts show what is left of each queue."""
        return asdict(self)

    @classmethod
    def from_json(cls, body: object, *, base: FaultConfig | None = None) -> FaultConfig:
        """Validate `body`; fields it leaves out come from `base` (or the defaults). 400 if bad."""
        if not isinstance(body, dict):
            raise invalid("faults must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise invalid(f"unknown fault(s): {', '.join(unknown)}")
        values = (base or cls()).to_json()
        values.update(body)
        return cls(
            error_rate=_number(values, "error_rate", upper=1.0),
            latency_ms=int(_number(values, "latency_ms")),
            apply_delay_ms=int(_number(values, "apply_delay_ms")),
            rate_limit_rps=_number(values, "rate_limit_rps"),
            outage=_boolean(values, "outage"),
            retry_after_seconds=int(_number(values, "retry_after_seconds")),
            scripts=_scripts(values["scripts"]),
            lost_answers=_counts(values["lost_answers"]),
            lost_answer_ms=int(_number(values, "lost_answer_ms")),
        )


def _number(values: Mapping[str, object], name: str, upper: float = math.inf) -> float:
    value = values[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= upper:
        bound = f"between 0 and {upper:g}" if upper < math.inf else "a number >= 0"
        raise invalid(f"{name} must be {bound}")
    return float(value)


def _boolean(values: Mapping[str, object], name: str) -> bool:
    value = values[name]
    if not isinstance(value, bool):
        raise invalid(f"{name} must be true or false")
    return value


def _scripts(value: object) -> dict[str, list[int]]:
    if not isinstance(value, dict):
        raise invalid("scripts must map an external id to a list of statuses")
    scripts: dict[str, list[int]] = {}
    for external_id, steps in value.items():
        if not isinstance(steps, list):
            raise invalid(f"scripts[{external_id}] must be a list of statuses")
        scripts[external_id] = [_step(external_id, step) for step in steps]
    return scripts


def _counts(value: object) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value.values()
    ):
        raise invalid("lost_answers must map an external id to a count >= 0")
    return {str(key): int(n) for key, n in value.items()}


def _step(external_id: str, step: object) -> int:
    if step == "ok":
        return OK
    if (
        isinstance(step, int)
        and not isinstance(step, bool)
        and (step == OK or step in SCRIPT_CODES)
    ):
        return step
    allowed = ", ".join(str(code) for code in [OK, *SCRIPT_CODES])
    raise invalid(f"scripts[{external_id}]: {step!r} is not one of ok, {allowed}")


def fault_error(status: int, *, retry_after_seconds: int) -> ApiError:
    """The error an injected status answers with."""
    headers = {"Retry-After": str(retry_after_seconds)} if status == 429 else None
    message = f"injected fault: {status} (sandbox)"
    return ApiError(status, SCRIPT_CODES[status], message, headers)


class TokenBucket:
    """A rate limiter holding up to one second of requests (at least one)."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        """`rate` requests per second, on the monotonic `clock`."""
        self.rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._clock = clock
        self._last = clock()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is free."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class FaultInjector:
    """The live fault state of one sandbox: config, script queues, limiter, random draws."""

    def __init__(
        self,
        config: FaultConfig | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`rng` decides which requests `error_rate` fails; seed it for a repeatable run."""
        self._lock = threading.Lock()
        self._rng = rng or random.Random()  # noqa: S311 - picks failures, not secrets
        self._clock = clock
        self._config = FaultConfig()
        self._scripts: dict[str, deque[int]] = {}
        self._lost: dict[str, int] = {}
        self._bucket: TokenBucket | None = None
        self.configure(config or FaultConfig())

    @property
    def latency_seconds(self) -> float:
        """Delay to add before answering a `/v1` request."""
        return self._config.latency_ms / 1000

    @property
    def apply_delay_seconds(self) -> float:
        """Delay between reading a PATCH's body and applying it, client or no client."""
        return self._config.apply_delay_ms / 1000

    def configure(self, config: FaultConfig) -> None:
        """Replace every fault; script queues restart from `config.scripts`."""
        with self._lock:
            self._config = config
            self._scripts = {key: deque(steps) for key, steps in config.scripts.items() if steps}
            self._lost = {key: n for key, n in config.lost_answers.items() if n}
            rate = config.rate_limit_rps
            if self._bucket is None or self._bucket.rate != rate:
                self._bucket = TokenBucket(rate, clock=self._clock) if rate > 0 else None

    def snapshot(self) -> FaultConfig:
        """The current config, with what is left of each script."""
        with self._lock:
            scripts = {key: list(steps) for key, steps in self._scripts.items()}
            lost = dict(self._lost)
            return FaultConfig(**{**asdict(self._config), "scripts": scripts, "lost_answers": lost})

    def answer_delay(self, external_id: str | None) -> float:
        """Seconds to hold this request's answer after handling it (0: answer at once)."""
        if external_id is None or not self._lost:
            return 0.0
        with self._lock:
            left = self._lost.get(external_id, 0)
            if not left:
                return 0.0
            if left == 1:
                del self._lost[external_id]
            else:
                self._lost[external_id] = left - 1
        return self._config.lost_answer_ms / 1000

    def before_auth(self) -> ApiError | None:
        """The outage or rate-limit refusal for this request, if any."""
        config = self._config
        if config.outage:
            return ApiError(
                503, "service_unavailable", "服務暫時無法使用 (service unavailable: outage)"
            )
        bucket = self._bucket
        if bucket is None:
            return None
        with self._lock:
            wait = bucket.take()
        if wait == 0:
            return None
        return ApiError(
            429,
            "rate_limited",
            f"too many requests: over {config.rate_limit_rps:g} per second",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )

    def after_auth(self, external_id: str | None) -> ApiError | None:
        """The scripted or random refusal for an authenticated request, if any."""
        config = self._config
        if external_id is not None and self._scripts:
            with self._lock:
                steps = self._scripts.get(external_id)
                status = steps.popleft() if steps else OK
                if steps is not None and not steps:
                    del self._scripts[external_id]
            if status != OK:
                return fault_error(status, retry_after_seconds=config.retry_after_seconds)
        if config.error_rate > 0 and self._rng.random() < config.error_rate:
            return ApiError(500, "internal_error", "伺服器錯誤 (injected internal error)")
        return None
