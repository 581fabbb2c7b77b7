"""`/healthz` (the process answers) and `/readyz` (Redis answers and the sync is not paused)."""

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
    return JSONResponse({"status": "ready", "mode": state.settings.mode_label})
