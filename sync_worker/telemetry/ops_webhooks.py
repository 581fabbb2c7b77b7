"""Operational webhooks: tell the operator's endpoint what happened, signed like our intake.

Events (`type`, then what `data` holds):

    dead_letter.created      id, user_id, reason, http_status, error_code, error_message,
                             attempts, replayed (a replayed entry that failed again)
    sync.paused              reason, status, message (Recur's answer to the 401/403)
    sync.resumed             (nothing)
    breaker.opened           window_calls, window_failures, cool_down_s
    breaker.closed           probe, outage_s
    reconciliation.finished  the report without its samples: run_id, status, counts, error

The envelope is `{"id", "type", "timestamp", "data"}`, POSTed with the Standard Webhooks headers
(`webhook-id` is the envelope's id, the same on every attempt, so receivers dedup on it:
delivery is at-least-once).

Emitting must never slow or break what it reports on, so `OpsEmitter.emit` is one round trip
(LPUSH and LTRIM, pipelined), does nothing at all when `OPS_WEBHOOK_URL` is unset, and logs a
Redis error instead of raising it. Delivery runs on its own thread in each worker
(`OpsDeliverer.run`), so a slow receiver delays no claim.

Layout (keys in redis_keys.py):
- `ops:outbox` list: envelopes as emitted, newest first. LTRIM keeps the newest
  `OPS_WEBHOOK_MAX_QUEUED`, so an unreachable receiver cannot fill Redis (the oldest are dropped
  and counted).
- `ops:due` zset: event id -> when to try it next. Claiming moves it a lease ahead, so an event
  whose deliverer died mid-POST comes due again by itself.
- `ops:event:{id}` hash: `body` (the envelope's JSON, the exact bytes signed and sent) and
  `attempts` (failed ones so far).

    emit ─LPUSH─▶ outbox ─claim (Lua: admit while fewer than MAX_QUEUED are tracked)─▶ due
    due ─POST 2xx─▶ deleted
        ─failure, attempts < max─▶ due again after a jittered exponential backoff
        ─failure, attempts = max─▶ deleted, logged `ops_webhook_gave_up`

Counts: `ops_webhooks_total{outcome}` with `delivered`, `retried`, `gave_up`, `dropped` (outbox
full) and `emit_failed` (Redis did not answer the emit). This module is the boundary of its own
httpx client: nothing else sees its exceptions.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import redis

from sync_worker import lua
from sync_worker import redis_keys as keys
from sync_worker.intake.signatures import sign
from sync_worker.logging import get_logger
from sync_worker.recur.retry import handback_delay
from sync_worker.settings import ConfigError, Settings
from sync_worker.telemetry.stats import Stats

log = get_logger(__name__)

COUNTER = "ops_webhooks_total"
CLAIM_BATCH = 10
"""Events claimed per round trip; each is POSTed in turn."""
ADMIT_PER_CLAIM = 1000
"""Most outbox entries one claim moves into delivery, so the script stays short."""
POLL_SECONDS = 1.0
"""How long the deliverer waits when nothing is due."""
ERROR_MESSAGE_CHARS = 300
DROP_LOG_SECONDS = 60.0

_CLAIM = lua.script("telemetry/ops_webhooks_claim.lua")

_RETRY = lua.script("telemetry/ops_webhooks_retry.lua")


def new_event_id(now: float) -> str:
    """A sortable, unguessable id: milliseconds in hex, then random bits."""
    return f"msg_{int(now * 1000):011x}{secrets.token_hex(6)}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class OpsEmitter:
    """Queues operational events for delivery; free when the feature is off, never raises."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        enabled: bool,
        max_queued: int,
        stats: Stats,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._enabled = enabled
        self._max_queued = max_queued
        self._stats = stats
        self._clock = clock
        self._dropped = 0
        self._next_drop_log = 0.0

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        """Queue one event; a Redis error is logged and counted, never raised to the caller."""
        if not self._enabled:
            return
        now = self._clock()
        envelope = {
            "id": new_event_id(now),
            "type": event_type,
            "timestamp": datetime.fromtimestamp(now, tz=UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "data": data,
        }
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(keys.OPS_OUTBOX, json.dumps(envelope, ensure_ascii=False, default=str))
        pipe.ltrim(keys.OPS_OUTBOX, 0, self._max_queued - 1)
        try:
            length = int(pipe.execute()[0])
        except redis.RedisError as error:
            # What it reports on already happened; losing its notice must not undo or stop it.
            log.warning("ops_webhook_emit_failed", type=event_type, error=str(error))
            self._stats.incr(COUNTER, outcome="emit_failed")
            return
        if length > self._max_queued:
            dropped = length - self._max_queued
            self._stats.incr(COUNTER, dropped, outcome="dropped")
            # One line a minute, not one per event: a flood of drops must not flood the logs.
            self._dropped += dropped
            if now >= self._next_drop_log:
                log.warning(
                    "ops_webhooks_dropped",
                    dropped=self._dropped,
                    kept=self._max_queued,
                    why="outbox full: the receiver is unreachable or not keeping up",
                )
                self._dropped, self._next_drop_log = 0, now + DROP_LOG_SECONDS


@dataclass(frozen=True)
class _Claimed:
    """One event leased for delivery."""

    event_id: str
    body: bytes
    attempts: int

    @property
    def event_type(self) -> str:
        return str(json.loads(self.body).get("type", ""))


class OpsDeliverer:
    """Takes due events and POSTs them, signed, to the operator's endpoint, with retries."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        url: str,
        secret: str,
        timeout_seconds: float,
        max_attempts: int,
        backoff_base_seconds: float,
        backoff_max_seconds: float,
        max_queued: int,
        stats: Stats,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._url = url
        self._secret = secret
        self._max_attempts = max_attempts
        self._base = backoff_base_seconds
        self._cap = backoff_max_seconds
        self._max_queued = max_queued
        self._stats = stats
        self._clock = clock
        # httpx applies the timeout to connect, write, read and pool each; a claim outlives all
        # four for every event of its batch, so a live deliverer never loses its lease.
        self._lease = CLAIM_BATCH * 4 * timeout_seconds + 5
        self._http = httpx.Client(timeout=timeout_seconds, transport=transport)
        self._claim = client.register_script(_CLAIM)
        self._retry = client.register_script(_RETRY)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, client: redis.Redis, stats: Stats
    ) -> OpsDeliverer:
        """A deliverer configured from OPS_WEBHOOK_*; `ConfigError` when the feature is off."""
        if settings.ops_webhook_url is None or settings.ops_webhook_secret is None:
            raise ConfigError("OPS_WEBHOOK_URL: not set; operational webhooks are off")
        return cls(
            client,
            url=str(settings.ops_webhook_url),
            secret=settings.ops_webhook_secret.get_secret_value(),
            timeout_seconds=settings.ops_webhook_timeout_seconds,
            max_attempts=settings.ops_webhook_max_attempts,
            backoff_base_seconds=settings.ops_webhook_backoff_base_seconds,
            backoff_max_seconds=settings.ops_webhook_backoff_max_seconds,
            max_queued=settings.ops_webhook_max_queued,
            stats=stats,
        )

    def deliver_due(self) -> int:
        """Claim up to a batch of due events and try each once; returns how many were tried."""
        now = self._clock()
        reply = cast(
            list[bytes | str],
            self._claim(
                keys=[keys.OPS_OUTBOX, keys.OPS_DUE],
                args=[
                    repr(now),
                    repr(now + self._lease),
                    CLAIM_BATCH,
                    self._max_queued,
                    keys.OPS_EVENT,
                    ADMIT_PER_CLAIM,
                ],
            ),
        )
        claimed = [
            _Claimed(_text(reply[i]), _text(reply[i + 1]).encode(), int(reply[i + 2]))
            for i in range(0, len(reply), 3)
        ]
        for event in claimed:
            self._deliver(event)
        self._stats.flush()
        return len(claimed)

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set; a Redis outage is logged and waited out, never fatal."""
        failures = 0
        while not stop.is_set():
            try:
                tried = self.deliver_due()
                failures = 0
            except redis.RedisError as error:
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    log.warning("ops_webhook_deliverer_error", error=str(error), failures=failures)
                stop.wait(min(30.0, POLL_SECONDS * 2**failures))
                continue
            if not tried:
                stop.wait(POLL_SECONDS)

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def _deliver(self, event: _Claimed) -> None:
        attempt = event.attempts + 1
        error = self._post(event)
        if error is None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(keys.ops_event(event.event_id))
            pipe.zrem(keys.OPS_DUE, event.event_id)
            pipe.execute()
            self._stats.incr(COUNTER, outcome="delivered")
            log.info(
                "ops_webhook_delivered",
                id=event.event_id,
                type=event.event_type,
                attempts=attempt,
            )
            return
        delay = handback_delay(attempt, base=self._base, cap=self._cap)
        counted = int(
            self._retry(
                keys=[keys.OPS_DUE, keys.ops_event(event.event_id)],
                args=[event.event_id, repr(self._clock() + delay), self._max_attempts],
            )
        )
        if counted >= self._max_attempts:
            self._stats.incr(COUNTER, outcome="gave_up")
            log.error(
                "ops_webhook_gave_up",
                id=event.event_id,
                type=event.event_type,
                attempts=counted,
                error=error,
                hint="check OPS_WEBHOOK_URL and the receiver; this event is not sent again",
            )
        elif counted:
            self._stats.incr(COUNTER, outcome="retried")
            log.warning(
                "ops_webhook_failed",
                id=event.event_id,
                type=event.event_type,
                attempts=counted,
                error=error,
                next_retry_in_s=round(delay, 2),
            )

    def _post(self, event: _Claimed) -> str | None:
        """POST one event, signed now; None on a 2xx, else what went wrong (for the log)."""
        timestamp = int(self._clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": event.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(
                self._secret, msg_id=event.event_id, timestamp=timestamp, body=event.body
            ),
        }
        try:
            response = self._http.post(self._url, content=event.body, headers=headers)
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"[:ERROR_MESSAGE_CHARS]
        if response.is_success:
            return None
        return f"HTTP {response.status_code}"
