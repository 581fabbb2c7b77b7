"""`/healthz` (the process answers) and `/readyz` (Redis answers and the sync is not paused).

An open circuit breaker leaves `/readyz` at 200: intake still accepts and stores events, which is
what a load balancer asks about; the body says the breaker is open, for people and probes.
"""

from __future__ import annotations

import json

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sync_worker import redis_keys as keys
from sync_worker.web.state import web_state

router = APIRouter()


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """Alive: the process serves requests."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready: Redis reachable and the sync not paused; 503 with the reason otherwise."""
    state = web_state(request)
    try:
        await state.redis.ping()
        paused = await state.redis.get(keys.PAUSED)
        breaker = await state.redis.hget(keys.BREAKER, "state")
    except (redis.RedisError, OSError) as error:
        return JSONResponse(
            {"status": "unavailable", "reason": "redis_unreachable", "error": str(error)},
            status_code=503,
        )
    if paused is not None:
        return JSONResponse(
            {"status": "paused", "reason": "sync_paused", "paused": json.loads(paused)},
            status_code=503,
        )
    body = {"status": "ready", "mode": state.settings.mode_label, "breaker": "closed"}
    if breaker is not None and breaker not in (b"closed", "closed"):
        name = breaker.decode() if isinstance(breaker, bytes) else str(breaker)
        body.update(breaker=name, reason="breaker_open")
    return JSONResponse(body)
