"""Connections to Redis from the settings: a plain URL, or Redis Sentinel.

`REDIS_URL` is either one server (`redis://`, `rediss://`) or a list of sentinels in
kombu's form, `sentinel://[:password@]host:26379[/db];sentinel://host2:26379`, with the master's
name in `REDIS_SENTINEL_MASTER`. Our own clients and Celery's broker then follow the master
through a failover.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from redis._parsers.base import BaseParser
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.connection import HiredisRespSerializer
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.sentinel import Sentinel, SentinelManagedConnection
from redis.utils import HIREDIS_AVAILABLE

from sync_worker.logging import get_logger
from sync_worker.settings import Settings

log = get_logger(__name__)

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


def _primary_options(url: str, plain: type[Any], tls: type[Any]) -> dict[str, Any]:
    """Our connection class for a one-server URL, `redis://` or `rediss://` (see
    `_DemotionIsDisconnection`)."""
    return {"connection_class": tls if urlsplit(url).scheme == "rediss" else plain}


def redis_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client of the Redis the settings name (the master, behind Sentinel)."""
    merged = {**CLIENT_OPTIONS, **options}
    target = sentinel_target(settings.redis_url)
    if target is None:
        merged.update(_primary_options(settings.redis_url, PrimaryConnection, PrimarySSLConnection))
        return redis.Redis.from_url(settings.redis_url, **merged)
    sentinel = Sentinel(target.hosts, socket_timeout=merged["socket_timeout"])  # type: ignore[no-untyped-call]
    master = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master,
        db=target.db,
        password=target.password,
        connection_class=PrimarySentinelConnection,
        **merged,
    )
    return cast(redis.Redis, master)


def async_redis_client(settings: Settings, **options: Any) -> aioredis.Redis:
    """An asyncio client of the same Redis, for the web's hot path."""
    merged = {**CLIENT_OPTIONS, **options}
    target = sentinel_target(settings.redis_url)
    if target is None:
        merged.update(
            _primary_options(settings.redis_url, AsyncPrimaryConnection, AsyncPrimarySSLConnection)
        )
        return aioredis.Redis.from_url(settings.redis_url, **merged)
    sentinel = AsyncSentinel(target.hosts, socket_timeout=merged["socket_timeout"])  # type: ignore[no-untyped-call]
    master = sentinel.master_for(
        settings.redis_sentinel_master,
        db=target.db,
        password=target.password,
        connection_class=AsyncPrimarySentinelConnection,
        **merged,
    )
    return cast(aioredis.Redis, master)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """What kombu's Redis transport needs beyond the URL (the master's name behind Sentinel)."""
    if sentinel_target(settings.redis_url) is None:
        return {}
    return {"master_name": settings.redis_sentinel_master}


class PrimaryDemoted(redis.ConnectionError):
    """The Redis server of a connection is a replica now (see `_DemotionIsDisconnection`)."""


# Redis answering but refusing writes: at `maxmemory` under `noeviction`, or a replica (whose
# `READONLY` our connections raise as PrimaryDemoted, see `_DemotionIsDisconnection`).
WRITES_REFUSED = (OutOfMemoryError, PrimaryDemoted)


class WriteRefusalSafeQoS(kombu_redis.QoS):
    """kombu's book of the messages a worker holds, kept going while Redis refuses writes.

    kombu writes down in Redis each message it hands to the worker (to deliver it again if the
    worker dies) and crosses it out on ack. At `maxmemory` Redis refuses both, and the error,
    raised in the consumer's event loop, ended the worker ("Unrecoverable error"). Refused now,
    each is logged and the message goes on: one not written down runs all the same (its users'
    leases cover a crash, see pending.py); one not crossed out is delivered again after the
    visibility timeout and finds its users settled. The worker's own count of the messages it
    holds is kept right either way: a refused ack still frees its prefetch slot, where it used
    to hold it until the consumer restarted, so that after `worker_concurrency` refusals the
    consumer took no task at all.
    """

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except WRITES_REFUSED as error:
            _refused("record", delivery_tag, error)
            kombu_virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)
        except WRITES_REFUSED as error:
            _refused("ack", delivery_tag, error)
            kombu_virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except WRITES_REFUSED as error:
            _refused("reject", delivery_tag, error)
            kombu_virtual.QoS.ack(self, delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        # The periodic sweep that delivers again the messages held past the visibility
        # timeout: refused, it is tried at its next turn, without a traceback every 5 s.
        try:
            super().restore_visible(*args, **kwargs)
        except WRITES_REFUSED as error:
            _refused("restore", None, error)


def _refused(action: str, delivery_tag: str | None, error: Exception) -> None:
    log.warning(
        "broker_write_refused",
        action=action,
        delivery_tag=delivery_tag,
        error_type=type(error).__name__,
        error=str(error),
        why="Redis refuses writes; the message goes on, at least once",
    )


# Redis before 7.0 wraps the error a command met inside a Lua script in a generic one:
# "ERR Error running script (call to f_<sha>): @user_script:1: @user_script: 1: -OOM command not
# allowed ...". Redis 7 passes the command's own error on ("OOM command not allowed ... script:
# <sha>, on @user_script:1."), which redis-py raises as OutOfMemoryError or ReadOnlyError.
_SCRIPT_ERROR = re.compile(
    r"Error running script \(call to [^)]*\): .*?: -(?P<inner>[A-Z]+ .*)", re.S
)


def script_error_unwrapped(error: redis.ResponseError) -> redis.ResponseError:
    """The error a command inside a script met, as redis-py raises it from Redis 7 on (an
    OutOfMemoryError at `maxmemory`, a ReadOnlyError on a replica), from Redis 6.2's wrapping
    too; any other error as it is."""
    if type(error) is not redis.ResponseError:
        return error
    wrapped = _SCRIPT_ERROR.fullmatch(str(error).strip())
    if wrapped is None:
        return error
    # redis-py's own mapping of an error's code to its class, as for any reply
    inner: redis.ResponseError = BaseParser.parse_error(wrapped["inner"].strip())  # type: ignore[no-untyped-call]
    return error if type(inner) is redis.ResponseError else inner


def _demotion(error: redis.ResponseError) -> bool:
    return isinstance(error, ReadOnlyError) or str(error).startswith("UNBLOCKED")


def _demoted(error: Exception) -> PrimaryDemoted:
    return PrimaryDemoted(f"the Redis server is no longer the primary: {error}")


def _raised_instead(error: redis.ResponseError | redis.ConnectionError) -> Exception | None:
    """What a connection of ours raises for `error` (None: `error` itself); see
    `_DemotionIsDisconnection`."""
    if isinstance(error, redis.ConnectionError):
        # redis-py's Sentinel connection has already turned `READONLY` into a plain
        # ConnectionError (and disconnected): named a demotion still, a refused ack frees
        # its slot (see WriteRefusalSafeQoS) rather than hold it until the watchdog comes.
        if isinstance(error, PrimaryDemoted) or not isinstance(error.__context__, ReadOnlyError):
            return None
        return _demoted(error)
    refused = script_error_unwrapped(error)
    if _demotion(refused):
        return _demoted(refused)
    return None if refused is error else refused


class _DemotionIsDisconnection:
    """A connection that takes its server's demotion to a replica as a lost connection.

    A primary turned replica (a failover that keeps the old primary, a managed Redis whose
    address moves to the new one) answers a blocked `BRPOP` with `UNBLOCKED` and every write
    with `READONLY`, on the connections already open to it:
    - kombu raised them in the consumer's event loop, which ended the worker ("Unrecoverable
      error"); as a connection error, Celery reconnects with backoff, to the new primary
      wherever the URL or the sentinels now lead, and consumes again;
    - our own clients kept their pooled connections to it, so every write failed until the
      process was restarted; disconnected, the call is retried (redis-py's retry on connection
      errors) on a new connection, to wherever the URL now leads. Nothing ran on the replica,
      so running the call again is its first run.

    A script's refused write is raised as Redis 7 raises it on Redis 6.2 too (see
    `script_error_unwrapped`), so that what catches OutOfMemoryError or a demotion catches it
    there as well.
    """

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except (redis.ResponseError, redis.ConnectionError) as error:
            instead = _raised_instead(error)
            if instead is None:
                raise
            if isinstance(instead, PrimaryDemoted):
                self.disconnect()  # type: ignore[attr-defined]
            raise instead from error


class _AsyncDemotionIsDisconnection:
    """`_DemotionIsDisconnection` for the asyncio client (the web's)."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except (redis.ResponseError, redis.ConnectionError) as error:
            instead = _raised_instead(error)
            if instead is None:
                raise
            if isinstance(instead, PrimaryDemoted):
                await self.disconnect()  # type: ignore[attr-defined]
            raise instead from error


class PrimaryConnection(_DemotionIsDisconnection, redis.Connection):
    """A connection to the primary a `redis://` URL names (see `_DemotionIsDisconnection`)."""


class PrimarySSLConnection(_DemotionIsDisconnection, redis.SSLConnection):
    """A connection to the primary a `rediss://` URL names (see `_DemotionIsDisconnection`)."""


class PrimarySentinelConnection(_DemotionIsDisconnection, SentinelManagedConnection):
    """A connection to the master the sentinels name (see `_DemotionIsDisconnection`: redis-py's
    own takes `READONLY` as lost, but not as a demotion, and not `UNBLOCKED`)."""


_HIREDIS_PACKER = HiredisRespSerializer() if HIREDIS_AVAILABLE else None


class _PackedByHiredis:
    """An asyncio connection that packs its commands with hiredis's C packer.

    redis-py's synchronous connections do (`HiredisRespSerializer`, when hiredis is installed,
    as `redis[hiredis]` installs it); its asyncio ones pack in Python, argument by argument,
    which was a tenth of the web's CPU for each event it accepts (bench/intake.py). The bytes
    are the same: hiredis encodes strings as UTF-8 and numbers by their `repr`, as redis-py's
    encoder does."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if _HIREDIS_PACKER is None:
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]
        return _HIREDIS_PACKER.pack(*args)  # type: ignore[no-any-return]


class _AsyncPrimary(_PackedByHiredis, _AsyncDemotionIsDisconnection):
    """What each asyncio connection of ours adds to redis-py's: hiredis packing, and a demotion
    taken as a lost connection."""


class AsyncPrimaryConnection(_AsyncPrimary, aioredis.Connection):
    """`PrimaryConnection` for the asyncio client."""


class AsyncPrimarySSLConnection(_AsyncPrimary, aioredis.SSLConnection):
    """`PrimarySSLConnection` for the asyncio client."""


class AsyncPrimarySentinelConnection(_AsyncPrimary, AsyncSentinelManagedConnection):
    """`PrimarySentinelConnection` for the asyncio client."""


class SafeRedisChannel(kombu_redis.Channel):
    """kombu's Redis channel with the QoS and connections above."""

    QoS = WriteRefusalSafeQoS
    connection_class = PrimaryConnection
    connection_class_ssl = PrimarySSLConnection


class SafeRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = SafeRedisChannel


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

    QoS = WriteRefusalSafeQoS
    connection_class = PrimarySentinelConnection

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed")
        # kombu's stubs leave out this private method; its signature is kombu 5's.
        return cast(dict[str, Any], super()._connparams(asynchronous))  # type: ignore[misc]


class FailoverSafeSentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with the channel above."""

    Channel = FailoverSafeSentinelChannel


def broker_transport(settings: Settings) -> str:
    """The kombu transport for the broker: kombu's own, kept going while Redis refuses writes
    (and, behind Sentinel, through a failover)."""
    if sentinel_target(settings.redis_url) is None:
        return f"{__name__}:SafeRedisTransport"
    return f"{__name__}:FailoverSafeSentinelTransport"


def broker_ssl(settings: Settings) -> dict[str, Any] | None:
    """TLS for the broker of a `rediss://` URL, verified as our own clients verify it.

    kombu turns TLS on from the URL's scheme only with its own transport's name, and then
    without checking the certificate; with ours it must be asked for."""
    if not settings.redis_url.startswith("rediss://"):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}
