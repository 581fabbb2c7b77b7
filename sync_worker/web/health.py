"""`/healthz` (the process answers) and `/readyz` (Redis answers, the sync is not paused, and
some worker's dispatcher makes progress).

An open circuit breaker leaves `/readyz` at 200: intake still accepts and stores events, which is
what a load balancer asks about; the body says the breaker is open, for people and probes.

When workers are alive but every one's dispatcher is stalled (no successful round for
DISPATCHER_STALL_SECONDS), `/readyz` answers 503 `dispatcher_stalled`: events would be accepted
and then wait with nobody to send them. No worker at all stays 200 (web itself is fine; the
`workers alive` gauge and its alert say so), as before.

With fewer Redis replicas in sync than REDIS_MIN_REPLICAS, `/readyz` answers 503
`replicas_missing`: intake would refuse every event with 503, and this says why. So it does when
Redis answers but refuses writes (`redis_not_primary`, `redis_full`: see write_refusal.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sync_worker import redis_keys as keys
from sync_worker.ops.status import worker_view
from sync_worker.replication import replicas_online
from sync_worker.web.state import web_state
from sync_worker.write_refusal import MESSAGES, write_refusal_async

router = APIRouter()


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """Alive: the process serves requests."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready: Redis reachable, taking writes, with enough replicas, and the sync not paused;
    503 with the reason otherwise."""
    state = web_state(request)
    wanted = state.settings.min_replicas
    try:
        replication = await state.redis.info("replication")  # unreachable: raises, as PING did
        refusal = await write_refusal_async(state.redis, replication)
        online = replicas_online(replication) if wanted else 0
        paused = await state.redis.get(keys.PAUSED)
        breaker = await state.redis.hget(keys.BREAKER, "state")
        workers = await _workers(state.redis, state.settings.dispatcher_stall_seconds)
    except (redis.RedisError, OSError) as error:
        return JSONResponse(
            {"status": "unavailable", "reason": "redis_unreachable", "error": str(error)},
            status_code=503,
        )
    if refusal is not None:
        return JSONResponse(
            {"status": "unavailable", "reason": refusal, "message": MESSAGES[refusal]},
            status_code=503,
        )
    if online < wanted:
        return JSONResponse(
            {
                "status": "unavailable",
                "reason": "replicas_missing",
                "replicas_online": online,
                "min_replicas": wanted,
                "message": f"{online} Redis replica(s) in sync, REDIS_MIN_REPLICAS is {wanted}: "
                "intake answers 503 to every event until enough replicas are back",
            },
            status_code=503,
        )
    if paused is not None:
        return JSONResponse(
            {"status": "paused", "reason": "sync_paused", "paused": json.loads(paused)},
            status_code=503,
        )
    if workers and all(worker["stalled"] for worker in workers):
        return JSONResponse(
            {
                "status": "stalled",
                "reason": "dispatcher_stalled",
                "workers": [{key: worker.get(key) for key in _STALL_FIELDS} for worker in workers],
            },
            status_code=503,
        )
    body = {"status": "ready", "mode": state.settings.mode_label, "breaker": "closed"}
    if breaker is not None and breaker not in (b"closed", "closed"):
        name = breaker.decode() if isinstance(breaker, bytes) else str(breaker)
        body.update(breaker=name, reason="breaker_open")
    return JSONResponse(body)


_STALL_FIELDS = ("hostname", "dispatcher_seconds_ago", "failures", "last_error")


async def _workers(client: aioredis.Redis, stall_seconds: float) -> list[dict[str, Any]]:
    """The live workers' heartbeats, as status.live_workers reads them."""
    names = [name async for name in client.scan_iter(match=keys.WORKER_HEARTBEAT + "*")]
    if not names:
        return []
    now = time.time()
    return [
        worker_view(json.loads(raw), now, stall_seconds)
        for raw in await client.mget(names)
        if raw is not None
    ]
