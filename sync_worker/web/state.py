"""What the web app's handlers share, built once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from fastapi import Request

from sync_worker.connections import async_redis_client
from sync_worker.intake.signatures import secret_bytes
from sync_worker.pipeline.pending import ACCEPT_SCRIPT
from sync_worker.runtime import Runtime
from sync_worker.settings import Settings
from sync_worker.web.accept_batch import AcceptBatcher
from sync_worker.web.throttle import LoginThrottle


@dataclass
class WebState:
    """Settings, the asyncio Redis client for the hot path, and the process runtime."""

    settings: Settings
    runtime: Runtime
    redis: aioredis.Redis
    webhook_key: bytes
    accept: AcceptBatcher
    throttle: LoginThrottle

    @classmethod
    def build(cls, settings: Settings, runtime: Runtime) -> WebState:
        """Connect (lazily) and register the scripts the handlers run."""
        client = async_redis_client(
            settings, socket_timeout=5, socket_connect_timeout=2, max_connections=256
        )
        return cls(
            settings=settings,
            runtime=runtime,
            redis=client,
            webhook_key=secret_bytes(settings.require_webhook_secret()),
            accept=AcceptBatcher(
                client,
                client.register_script(ACCEPT_SCRIPT),
                replicas=settings.min_replicas,
                timeout_ms=settings.redis_wait_timeout_ms,
            ),
            throttle=LoginThrottle(client, limit=settings.admin_login_failures_per_minute),
        )


def web_state(request: Request) -> WebState:
    """The shared state of the app serving this request."""
    return cast(WebState, request.app.state.web)
