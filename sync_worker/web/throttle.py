"""Failed admin logins, counted per client address in Redis, so every web process shares them.

A dashboard login with a wrong token and a wrong bearer token on the operator API both count.
After `limit` failures within a window (fixed, one minute by default) the address gets `429`
with `Retry-After` for the rest of the window, right or wrong token alike: an attacker learns
nothing from a throttled attempt. A Redis error never locks operators out: the check then lets
the request through to the token comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

from sync_worker import redis_keys as keys
from sync_worker.logging import get_logger

log = get_logger(__name__)


class LoginThrottle:
    """Counts failures per client address; says how long an address must wait."""

    def __init__(self, client: aioredis.Redis, *, limit: int, window_seconds: int = 60) -> None:
        self._redis = client
        self._limit = limit
        self._window = window_seconds

    async def retry_after(self, address: str) -> int:
        """Seconds this address must wait before trying again; 0 when it may try now."""
        key = keys.auth_failures(address)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.ttl(key)
                count, ttl = await pipe.execute()
        except (redis.RedisError, OSError) as error:
            log.warning("login_throttle_unavailable", error=str(error))
            return 0
        if count is None or int(count) < self._limit:
            return 0
        return max(int(ttl), 1)

    async def failed(self, address: str) -> None:
        """Count one failed attempt of this address."""
        key = keys.auth_failures(address)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                # SET NX EX starts the window on the first failure; INCR keeps its expiry.
                pipe.set(key, 0, ex=self._window, nx=True)
                pipe.incr(key)
                await pipe.execute()
        except (redis.RedisError, OSError) as error:
            log.warning("login_throttle_unavailable", error=str(error))


def client_address(scope: Mapping[str, Any]) -> str:
    """The caller's address (uvicorn has applied trusted X-Forwarded-For already)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
