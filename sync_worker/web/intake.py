"""`POST /webhooks/user-updated`: verify, validate, record durably, answer.

The signature is checked on the raw body before anything parses it (the request guard has
capped its size). The event is accepted only once the accept script has recorded it in Redis and,
with REDIS_MIN_REPLICAS, that many replicas hold it; nothing calls Recur inside the request.
"""

from __future__ import annotations

import json
import re
import time

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sync_worker.intake.events import EventValidationError, parse_event
from sync_worker.intake.signatures import SignatureError, verify
from sync_worker.logging import get_logger
from sync_worker.pipeline.pending import AcceptResult
from sync_worker.replication import acknowledged_async
from sync_worker.telemetry.trace import refused_event
from sync_worker.web.state import web_state

log = get_logger(__name__)
router = APIRouter()

_WEBHOOK_ID = re.compile(r"^[\x21-\x7e]{1,255}$")
LOGGED_HEADER_CHARS = 100
"""How much of a header an unauthenticated caller can put in one of our log lines."""


def _bounded(value: str | None) -> str | None:
    if value is None or len(value) <= LOGGED_HEADER_CHARS:
        return value
    return f"{value[:LOGGED_HEADER_CHARS]}...[{len(value)} chars]"


def _error(status: int, code: str, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


@router.post("/webhooks/user-updated")
async def user_updated(request: Request) -> JSONResponse:
    """Accept one signed user event (both body forms of the contract)."""
    state = web_state(request)
    stats = state.runtime.stats
    stats.incr("events_received_total")
    body = await request.body()  # at most MAX_BODY_BYTES: the request guard (guard.py) cut it
    headers = request.headers
    now = time.time()
    try:
        sent_at = verify(
            state.webhook_key,
            msg_id=headers.get("webhook-id"),
            timestamp=headers.get("webhook-timestamp"),
            signature=headers.get("webhook-signature"),
            body=body,
            now=now,
            tolerance_seconds=state.settings.webhook_tolerance_seconds,
        )
    except SignatureError as error:
        stats.incr("events_rejected_total", reason="signature")
        log.warning(
            "webhook_refused", check=error.code, webhook_id=_bounded(headers.get("webhook-id"))
        )
        return _error(401, error.code, str(error))
    webhook_id = headers.get("webhook-id", "")
    if not _WEBHOOK_ID.match(webhook_id):
        stats.incr("events_rejected_total", reason="validation")
        return _error(422, "validation_error", "webhook-id must be printable ASCII")
    try:
        event = parse_event(
            body,
            webhook_id=webhook_id,
            webhook_timestamp=sent_at,
            now=now,
            max_future_seconds=state.settings.webhook_tolerance_seconds,
        )
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        stats.incr("events_rejected_total", reason="not_json")
        return _error(400, "invalid_json", "body is not JSON")
    except EventValidationError as error:
        stats.incr("events_rejected_total", reason="validation")
        refused_event(stats.trace, body, event_id=webhook_id, errors=error.errors)
        return _error(422, "validation_error", str(error), fields=error.errors)
    script_keys, args = state.runtime.pending.accept_call(event)
    settings = state.settings
    replicas = settings.min_replicas
    try:
        reply, replicated = await state.accept.run(script_keys, args)
        result = AcceptResult.from_reply(reply)
        if result.duplicate and replicas > 0:
            # The script wrote nothing, so its WAIT proved nothing; and the first try may have
            # been answered 503 before a replica had it: "duplicate" only once they hold it.
            replicated = await acknowledged_async(
                state.redis, replicas=replicas, timeout_ms=settings.redis_wait_timeout_ms
            )
    except (redis.RedisError, OSError) as error:
        stats.incr("events_rejected_total", reason="redis_unavailable")
        log.error("intake_unavailable", error=str(error), event_id=event.event_id)
        return JSONResponse(
            {"status": "unavailable", "message": "storage unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    if not replicated:
        stats.incr("events_rejected_total", reason="not_replicated")
        log.warning("intake_not_replicated", event_id=event.event_id, replicas=replicas)
        return JSONResponse(
            {
                "status": "unavailable",
                "message": f"not yet held by {replicas} Redis replica(s); retry the same event id",
            },
            status_code=503,
            headers={"Retry-After": "1"},
        )
    if result.duplicate:
        stats.incr("events_duplicate_total")
        return JSONResponse({"status": "duplicate", "event_id": event.event_id}, status_code=200)
    stats.incr("events_accepted_total")
    if not result.changed:
        stats.incr("events_stale_total")
    return JSONResponse(
        {"status": "accepted", "event_id": event.event_id, "user_id": event.user_id},
        status_code=202,
    )
