"""Replica acknowledgements (`REDIS_MIN_REPLICAS`): a write is confirmed only once replicas hold it.

Redis replicates asynchronously, so a write acknowledged by the primary alone is lost when a
failover promotes a replica that had not received it. `WAIT n timeout` blocks until `n` replicas
have acknowledged every write *of the calling connection*, or the timeout passes, and returns how
many did. Hence:

- Intake pipelines the accept scripts of the requests that arrive together and one `WAIT` on one
  connection: one round trip (web/accept_batch.py).
- When the caller's writes went through other pooled connections (the operator actions), or
  wrote nothing (a duplicate event id, whose first write may itself be unreplicated), a barrier
  write on the `WAIT`'s own connection stands in for them: replication is one ordered stream,
  so replicas that acknowledged the barrier hold everything the primary had before it.

With `min_replicas` 0 nothing waits and no barrier is written.

`replicas_online` counts, from `INFO replication`, the replicas a `WAIT` can count on, so that
`/readyz`, `status` and `/metrics` can say why intake refuses everything when too few are there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

from sync_worker import redis_keys as keys

REPLICA_MAX_LAG_SECONDS = 10
"""A replica whose last acknowledgement is older is not counted: it is connected but not keeping
up (frozen, or its link stalled), so a `WAIT` would time out on it. Redis's own
`min-replicas-max-lag` uses the same default."""


def replicas_online(info: Mapping[str, Any]) -> int:
    """Replicas in a parsed `INFO replication` that are in sync (state `online`) and acknowledged
    within REPLICA_MAX_LAG_SECONDS: those that can confirm a write now."""
    return sum(
        1
        for name, replica in info.items()
        if name.startswith("slave")
        and name[5:].isdigit()
        and isinstance(replica, dict)
        and replica.get("state") == "online"
        and int(replica.get("lag", 0)) <= REPLICA_MAX_LAG_SECONDS
    )


def acknowledged(client: redis.Redis, *, replicas: int, timeout_ms: int) -> bool:
    """True once `replicas` replicas hold every write the primary has now (waits at most
    `timeout_ms`); always True for 0."""
    if replicas <= 0:
        return True
    with client.pipeline(transaction=False) as pipe:
        pipe.incr(keys.REPLICATION_BARRIER)
        pipe.wait(replicas, timeout_ms)
        _, count = pipe.execute()
    return int(count) >= replicas


async def acknowledged_async(client: aioredis.Redis, *, replicas: int, timeout_ms: int) -> bool:
    """`acknowledged` for an asyncio client."""
    if replicas <= 0:
        return True
    async with client.pipeline(transaction=False) as pipe:
        pipe.incr(keys.REPLICATION_BARRIER)
        pipe.wait(replicas, timeout_ms)
        _, count = await pipe.execute()
    return int(count) >= replicas
