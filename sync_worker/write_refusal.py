"""Whether the Redis we write to refuses writes now, and why: for `/readyz`, `status`, the
dashboard and `/metrics`.

Redis can answer every read and refuse every write: a replica (`REDIS_URL` leading to one, or a
primary demoted under us), or a primary at `maxmemory` under `noeviction`. Intake then answers
503 to every event while pings and reads go on succeeding, so checks made of reads said "ready".
The probe is `SETRANGE` of a key that does not exist with an empty value: a write to Redis, so
refused as any write is, that creates no key and appends nothing to the AOF.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

from sync_worker import redis_keys as keys

NOT_PRIMARY = "redis_not_primary"
FULL = "redis_full"

MESSAGES = {
    NOT_PRIMARY: "Redis here is a replica, which refuses writes: intake answers 503 to every "
    "event until REDIS_URL (or the sentinels) leads to the primary",
    FULL: "Redis is at maxmemory and refuses writes: intake answers 503 to every event until "
    "memory is freed or maxmemory raised (INFO memory)",
}
"""What each refusal means for intake, and what ends it."""


def _role_refusal(replication: Mapping[str, Any]) -> str | None:
    return None if replication.get("role", "master") == "master" else NOT_PRIMARY


def write_refusal(client: redis.Redis, replication: Mapping[str, Any]) -> str | None:
    """`NOT_PRIMARY`, `FULL` or None (writes accepted), from a parsed `INFO replication` of
    this client's server and a probe write."""
    refusal = _role_refusal(replication)
    if refusal is None:
        try:
            client.setrange(keys.WRITE_PROBE, 0, "")
        except redis.OutOfMemoryError:
            refusal = FULL
    return refusal


async def write_refusal_async(client: aioredis.Redis, replication: Mapping[str, Any]) -> str | None:
    """`write_refusal` for the asyncio client."""
    refusal = _role_refusal(replication)
    if refusal is None:
        try:
            await client.setrange(keys.WRITE_PROBE, 0, "")
        except redis.OutOfMemoryError:
            refusal = FULL
    return refusal
