"""The intake's two entry points answer alike: the bare ASGI app the request guard calls
(`intake.serve`, what every request reaches) and the FastAPI route that declares the operation."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware

from sync_worker.intake.signatures import sign
from sync_worker.settings import load_settings
from sync_worker.web.app import create_app
from tests.fixtures.stack import WEBHOOK_SECRET, user_event

PATH = "/webhooks/user-updated"


def signed(payload: dict[str, Any] | bytes, msg_id: str) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    now = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(now),
        "webhook-signature": sign(WEBHOOK_SECRET, msg_id=msg_id, timestamp=now, body=body),
    }
    return body, headers


def deliveries(prefix: str) -> list[tuple[bytes, dict[str, str]]]:
    """An accepted event, its redelivery, a bad signature, not JSON, and an invalid event."""
    first = signed(user_event(f"{prefix}_1", f"{prefix}_user", name="a"), f"{prefix}_1")
    bad_signature = (first[0], {**first[1], "webhook-signature": "v1,AAAA"})
    not_json = signed(b"{nope", f"{prefix}_2")
    invalid = signed(user_event(f"{prefix}_3", f"{prefix}_user"), f"{prefix}_3")  # no field
    return [first, first, bad_signature, not_json, invalid]


async def answers(app: Any, prefix: str) -> list[tuple[int, str, dict[str, Any]]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
        found = []
        for body, headers in deliveries(prefix):
            response = await client.post(PATH, content=body, headers=headers)
            text = response.text.replace(prefix, "ID")
            found.append((response.status_code, response.headers["content-type"], json.loads(text)))
        return found


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> FastAPI:
    env = {
        "REDIS_URL": redis_url,
        "RECUR_API_URL": "http://127.0.0.1:9",
        "RECUR_SECRET_KEY": "sk_test_sandbox",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return create_app(load_settings())


def test_the_guard_and_the_route_answer_alike(app: FastAPI) -> None:
    # FastAPI's router without the middleware stack, where the guard would take over.
    router = AsyncExitStackMiddleware(app.router)

    async def route_only(scope: Any, receive: Any, send: Any) -> None:
        await router({**scope, "app": app}, receive, send)

    async def both() -> tuple[list[Any], list[Any]]:
        return await answers(app, "fast"), await answers(route_only, "routed")

    fast, routed = asyncio.run(both())
    assert [status for status, _, _ in fast] == [202, 200, 401, 400, 422]
    assert fast == routed
