"""Connections to Redis from the settings: a plain URL, or Redis Sentinel.

`REDIS_URL` is either one server (`redis://`, `rediss://`) or a list of sentinels in
kombu's form, `sentinel://[:password@]host:26379[/db];sentinel://host2:26379`, with the master's
name in `REDIS_SENTINEL_MASTER`. Our own clients and Celery's broker then follow the master
through a failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from kombu.transport import redis as kombu_redis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from sync_worker.settings import Settings

# Long-running processes need these: a half-open connection must not hang a call forever.
CLIENT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    "socket_keepalive": True,
    "health_check_interval": 25,
    "retry_on_timeout": True,
}


@dataclass(frozen=True)
class SentinelTarget:
    """The sentinels to ask, the database, and the password of the master."""

    hosts: list[tuple[str, int]]
    db: int
    password: str | None


def sentinel_target(url: str) -> SentinelTarget | None:
    """The sentinels of a `sentinel://` URL list, or None for a plain Redis URL."""
    if not url.startswith("sentinel://"):
        return None
    hosts: list[tuple[str, int]] = []
    db = 0
    password = None
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        hosts.append((parsed.hostname or "localhost", parsed.port or 26379))
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
        password = password or parsed.password
    return SentinelTarget(hosts=hosts, db=db, password=password)


def redis_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client of the Redis the settings name (the master, behind Sentinel)."""
    merged = {**CLIENT_OPTIONS, **options}
    target = sentinel_target(settings.redis_url)
    if target is None:
        return redis.Redis.from_url(settings.redis_url, **merged)
    sentinel = Sentinel(target.hosts, socket_timeout=merged["socket_timeout"])  # type: ignore[no-untyped-call]
    master = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master, db=target.db, password=target.password, **merged
    )
    return cast(redis.Redis, master)


def async_redis_client(settings: Settings, **options: Any) -> aioredis.Redis:
    """An asyncio client of the same Redis, for the web's hot path."""
    merged = {**CLIENT_OPTIONS, **options}
    target = sentinel_target(settings.redis_url)
    if target is None:
        return aioredis.Redis.from_url(settings.redis_url, **merged)
    sentinel = AsyncSentinel(target.hosts, socket_timeout=merged["socket_timeout"])  # type: ignore[no-untyped-call]
    master = sentinel.master_for(
        settings.redis_sentinel_master, db=target.db, password=target.password, **merged
    )
    return cast(aioredis.Redis, master)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """What kombu's Redis transport needs beyond the URL (the master's name behind Sentinel)."""
    if sentinel_target(settings.redis_url) is None:
        return {}
    return {"master_name": settings.redis_sentinel_master}


class FailoverSafeSentinelChannel(kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, safe to close after its connection was collected.

    When the master dies, Celery's consumer collects the broken connection (which detaches the
    transport from it) and then closes it; closing restores unacknowledged messages, which
    rebuilds the channel's pool from the detached transport and raised AttributeError, a
    crash of the whole worker ("Unrecoverable error"). It raises a connection error instead,
    which Celery ignores while closing: the worker reconnects through the sentinels to the new
    master. Those messages stay in kombu's unacked set until they are restored from there, and
    their users' leases lapse and are swept back in any case (see pending.py).
    """

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed")
        # kombu's stubs leave out this private method; its signature is kombu 5's.
        return cast(dict[str, Any], super()._connparams(asynchronous))  # type: ignore[misc]


class FailoverSafeSentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with the channel above."""

    Channel = FailoverSafeSentinelChannel


def broker_transport(settings: Settings) -> str | None:
    """The kombu transport for the broker: ours behind Sentinel, else the URL's own."""
    if sentinel_target(settings.redis_url) is None:
        return None
    return f"{__name__}:FailoverSafeSentinelTransport"
