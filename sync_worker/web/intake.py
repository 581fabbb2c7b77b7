"""`POST /webhooks/user-updated`: verify, validate, record durably, answer.

The signature is checked on the raw body before anything parses it (the request guard has
capped its size). The event is accepted only once the accept script has recorded it in Redis and,
with REDIS_MIN_REPLICAS, that many replicas hold it; nothing calls Recur inside the request.

The request guard (guard.py) answers this route itself through `serve`, a bare ASGI app, rather
than through FastAPI's routing, request object, dependency solving and response classes: they
cost about a fifth of the web process's CPU per event (bench/intake.py). The FastAPI route below
declares the operation for the app's route table and OpenAPI document, and answers the same way.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import Response

from sync_worker.intake.events import EventValidationError, parse_event
from sync_worker.intake.signatures import SignatureError, verify
from sync_worker.logging import get_logger
from sync_worker.pipeline.records import AcceptResult
from sync_worker.replication import acknowledged_async
from sync_worker.telemetry.trace import refused_event
from sync_worker.web.state import WebState, web_state

log = get_logger(__name__)
router = APIRouter()

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_WEBHOOK_ID = re.compile(r"^[\x21-\x7e]{1,255}$")
LOGGED_HEADER_CHARS = 100
"""How much of a header an unauthenticated caller can put in one of our log lines."""


def _bounded(value: str | None) -> str | None:
    if value is None or len(value) <= LOGGED_HEADER_CHARS:
        return value
    return f"{value[:LOGGED_HEADER_CHARS]}...[{len(value)} chars]"


_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True)
class Answer:
    """The status, JSON body and extra headers of one answer."""

    status: int
    content: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        """The body as JSONResponse would render it."""
        return json.dumps(
            self.content, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode()


def _error(status: int, code: str, message: str, **extra: object) -> Answer:
    return Answer(status, {"error": {"code": code, "message": message, **extra}})


@router.post("/webhooks/user-updated")
async def user_updated(request: Request) -> Response:
    """Accept one signed user event (both body forms of the contract)."""
    state = web_state(request)
    state.runtime.stats.incr("events_received_total")
    answer = await accept_delivery(state, request.headers, await request.body())
    return Response(answer.encoded(), answer.status, answer.headers, "application/json")


async def serve(state: WebState, scope: Scope, receive: Receive, send: Send) -> None:
    """`POST /webhooks/user-updated` as a bare ASGI app (the request guard calls it)."""
    # Counted before the body is read: the guard counts a body it cuts off as received already.
    state.runtime.stats.incr("events_received_total")
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away (or the guard cut the body off and answered 413)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    answer = await accept_delivery(state, headers, b"".join(chunks))
    body = answer.encoded()
    raw_headers = [_JSON, (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
    await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def accept_delivery(state: WebState, headers: Mapping[str, str], body: bytes) -> Answer:
    """Check, validate and record one delivery; `headers` by lower-case name, `body` at most
    MAX_BODY_BYTES (the request guard cut it), already counted as received."""
    stats = state.runtime.stats
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
        return Answer(
            503,
            {"status": "unavailable", "message": "storage unavailable; retry later"},
            {"Retry-After": "5"},
        )
    if not replicated:
        stats.incr("events_rejected_total", reason="not_replicated")
        log.warning("intake_not_replicated", event_id=event.event_id, replicas=replicas)
        return Answer(
            503,
            {
                "status": "unavailable",
                "message": f"not yet held by {replicas} Redis replica(s); retry the same event id",
            },
            {"Retry-After": "1"},
        )
    if result.duplicate:
        stats.incr("events_duplicate_total")
        return Answer(200, {"status": "duplicate", "event_id": event.event_id})
    stats.incr("events_accepted_total")
    if not result.changed:
        stats.incr("events_stale_total")
    return Answer(202, {"status": "accepted", "event_id": event.event_id, "user_id": event.user_id})
