"""The collaborators one process needs, built once from the settings and shared by its threads."""

from __future__ import annotations

from functools import cached_property

import httpx
import redis

from sync_worker import redis_keys as keys
from sync_worker.connections import redis_client
from sync_worker.deadletters.dlq import DeadLetterQueue
from sync_worker.logging import get_logger
from sync_worker.mode import claim_mode
from sync_worker.ops.timeline import UserTrace, gather
from sync_worker.pipeline.breaker import Breaker
from sync_worker.pipeline.flow import FlowControl
from sync_worker.pipeline.ledger import Ledger
from sync_worker.pipeline.pending import PendingStore
from sync_worker.pipeline.sync import Syncer
from sync_worker.recur.client import RecurClient
from sync_worker.recur.errors import RecurError
from sync_worker.settings import ConfigError, Settings
from sync_worker.telemetry.ops_webhooks import OpsEmitter
from sync_worker.telemetry.stats import Stats
from sync_worker.telemetry.trace import TraceLog

log = get_logger(__name__)

DAY = 24 * 3600


class Runtime:
    """Redis-backed stores, flow control and the Recur client of one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client if client is not None else redis_client(settings)
        self._transport = transport
        self.pending = PendingStore(
            self.redis,
            window_seconds=settings.debounce_window_seconds,
            max_wait_seconds=settings.debounce_max_wait_seconds,
            dedup_ttl_seconds=settings.event_dedup_ttl_seconds,
            lease_seconds=settings.lease_seconds,
            trace_retention_seconds=settings.trace_retention_days * DAY,
            verify_delay_seconds=settings.fence_verify_delay_seconds,
            rebound_ttl_seconds=settings.dlq_retention_days * DAY,
        )
        self.trace = TraceLog(retention_seconds=settings.trace_retention_days * DAY)
        self.stats = Stats(self.redis, trace=self.trace)
        self.ops = OpsEmitter(
            self.redis,
            enabled=settings.ops_webhook_url is not None,
            max_queued=settings.ops_webhook_max_queued,
            stats=self.stats,
        )
        self.flow = FlowControl(
            self.redis,
            rate_per_second=settings.rate_limit_per_second,
            burst=settings.rate_limit_burst,
            notify=self.ops.emit,
        )
        self.ledger = Ledger(self.redis)
        self.dlq = DeadLetterQueue(
            self.redis,
            pending=self.pending,
            trace_retention_seconds=settings.trace_retention_days * DAY,
        )
        self.breaker = Breaker(
            self.redis,
            window_seconds=settings.breaker_window_seconds,
            min_calls=settings.breaker_min_calls,
            failure_ratio=settings.breaker_failure_ratio,
            cool_down_seconds=settings.breaker_cool_down_seconds,
            max_cool_down_seconds=settings.breaker_max_cool_down_seconds,
            # The probe is one call; the lock outlives it so a crashed prober frees it in time.
            probe_ttl_seconds=settings.lease_seconds,
            stats=self.stats,
            on_transition=self.ops.emit,
        )

    @cached_property
    def recur(self) -> RecurClient:
        """The Recur client; every call waits its turn in the shared rate limit.

        `ConfigError` when the key's mode differs from the one this Redis state was written in.
        """
        claim_mode(self.redis, self.settings)
        return RecurClient.from_settings(
            self.settings,
            transport=self._transport,
            throttle=lambda: self.flow.acquire(max_wait=self.settings.retry_fast_max_seconds),
        )

    def user_trace(self, user_id: str, *, with_recur: bool) -> UserTrace:
        """What is known about one user (`sync-worker trace`, the admin API and page); with
        `with_recur`, the customer as Recur has it too, or why it could not be fetched."""
        recur, unavailable = None, ""
        if with_recur:
            try:
                recur = self.recur
            except ConfigError as error:
                unavailable = f"not fetched from Recur: {error}"
        return gather(
            self.redis,
            user_id,
            ledger=self.ledger,
            dlq=self.dlq,
            recur=recur,
            recur_unavailable=unavailable,
            fetch_recur=with_recur,
        )

    @cached_property
    def syncer(self) -> Syncer:
        """The per-user sync logic."""
        return Syncer(
            settings=self.settings,
            pending=self.pending,
            flow=self.flow,
            breaker=self.breaker,
            client=self.recur,
            stats=self.stats,
            ops=self.ops,
            ledger=self.ledger,
            trace=self.trace,
        )

    def sweep(self) -> dict[str, int]:
        """Offer again users whose claim lapsed, and trim dead letters past their retention.

        Several processes may sweep; a short lock keeps them from doing it at the same moment.
        """
        if not self.redis.set(keys.SWEEP_LOCK, "1", nx=True, ex=10):
            return {"requeued": 0, "trimmed": 0}
        requeued = self.pending.requeue_expired()
        trimmed = self.dlq.trim(older_than_seconds=self.settings.dlq_retention_days * DAY)
        if requeued:
            log.warning("claims_requeued", users=requeued, why="lease lapsed")
            self.stats.incr("claims_requeued_total", requeued)
        if trimmed:
            log.info(
                "dead_letters_trimmed",
                count=trimmed,
                retention_days=self.settings.dlq_retention_days,
            )
            self.stats.incr("dead_letters_trimmed_total", trimmed)
        self.stats.flush()
        return {"requeued": requeued, "trimmed": trimmed}

    def probe_auth(self) -> bool:
        """While paused for auth, try one cheap call; resume the sync if it succeeds."""
        try:
            self.recur.list_customers(limit=1)
        except RecurError as error:
            log.warning("auth_probe_failed", error=str(error))
            return False
        if self.flow.resume():
            log.info("sync_resumed", why="a call to Recur succeeded")
        return True

    def close(self) -> None:
        """Close the senders, the Recur client and the Redis pool."""
        if "syncer" in self.__dict__:
            self.syncer.close()
        if "recur" in self.__dict__:
            self.recur.close()
        self.redis.close()
