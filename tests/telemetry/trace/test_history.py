"""Per-minute history: counters written by the stats flush, gauges sampled at each sweep, served
at `GET /admin/api/history`, against real Redis, the sandbox and the real web app."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from sync_worker import redis_keys as keys
from sync_worker.pipeline.dispatch import Dispatcher
from sync_worker.runtime import Runtime
from sync_worker.telemetry import history, trace
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import ADMIN_TOKEN, WEBHOOK_SECRET, user_event, wait_for
from tests.operators.conftest import sync_due

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {1.0: 0, 2.0: 10, math.inf: 10}, 1.5),
        (0.5, {1.0: 10, 2.0: 10, math.inf: 10}, 0.5),
        (0.99, {0.5: 50, 1.0: 100, math.inf: 100}, 0.99),
        (0.99, {1.0: 1, math.inf: 10}, 1.0),  # past the last finite bound: that bound
        (0.5, {1.0: 0, math.inf: 0}, None),
    ],
)
def test_quantile_interpolates_inside_the_bucket(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    assert history.quantile(q, buckets) == pytest.approx(expected)


def post(web: httpx.Client, payload: dict[str, Any]) -> httpx.Response:
    """A delivery signed by the independent standardwebhooks package."""
    body = json.dumps(payload)
    signature = Webhook(WEBHOOK_SECRET).sign(payload["id"], datetime.now(tz=UTC), body)
    headers = {
        "webhook-id": payload["id"],
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return web.post("/webhooks/user-updated", content=body, headers=headers)


def series(web: httpx.Client, minutes: int = 3) -> dict[str, list[float | None]]:
    answer = web.get("/admin/api/history", params={"minutes": minutes}, headers=AUTH)
    assert answer.status_code == 200
    data = answer.json()
    assert data["step_seconds"] == 60
    assert data["points"] == minutes
    return dict(data["series"])


def total(values: list[float | None]) -> float:
    return sum(v or 0 for v in values)


def test_traffic_shows_in_the_last_minutes(
    runtime: Runtime, web: httpx.Client, sandbox: SandboxHandle
) -> None:
    sandbox.control.create_customer("h@x.tw", external_id="user_h")
    sandbox.control.set_faults(scripts={"user_h": [503, 200]})
    assert post(web, user_event("evt_h1", "user_h", name="one")).status_code == 202
    assert post(web, user_event("evt_gone", "user_gone", name="x")).status_code == 202
    assert post(web, {"id": "evt_bad", "type": "user.updated"}).status_code == 422
    wait_for(lambda: total(series(web)["events_accepted"]) == 2)
    assert total(series(web)["events_refused"]) == 1

    sync_due(runtime)
    wait_for(lambda: [o for o in sync_due(runtime) if o.result == "applied"])

    now = series(web)
    assert total(now["patches_5xx"]) == 1
    assert total(now["patches_2xx"]) == 1
    assert total(now["patches_4xx"]) == 1
    assert total(now["dead_letters_not_found"]) == 1
    p50 = [v for v in now["latency_p50_seconds"] if v is not None]
    assert p50
    assert 0 < p50[-1] <= 1  # the 503-then-200 change applied well within a second
    # The web's accept script (the asyncio client) wrote the user's trace too.
    received = [e for e in trace.read(runtime.redis, "user_h") if e.kind == "event"]
    assert [e.details["outcome"] for e in received] == ["merged"]
    ttl = runtime.redis.ttl(keys.history(history.minute_of(time.time())))
    assert 24 * 3600 < ttl <= history.HISTORY_TTL_SECONDS


def test_gauges_are_sampled_at_each_sweep(runtime: Runtime, web: httpx.Client) -> None:
    assert post(web, user_event("evt_g", "user_g", name="g")).status_code == 202
    full = 10**6
    dispatcher = Dispatcher(runtime, publish=lambda _: None, queue_depth=lambda: full, hostname="t")
    dispatcher.tick()  # the queue is "full": it sweeps and samples, and claims nothing

    now = series(web, minutes=1)
    assert now["pending"] == [1.0]
    assert now["due_now"] == [1.0]
    assert now["retrying"] == [0.0]
    assert now["breaker"] == [0.0]
    assert now["paused"] == [0.0]
    earlier = web.get("/admin/api/history", headers=AUTH).json()  # 24 h by default
    assert earlier["points"] == 1440
    assert earlier["series"]["pending"][0] is None  # nothing sampled a day ago


def test_history_needs_the_token_and_a_sane_range(web: httpx.Client) -> None:
    assert web.get("/admin/api/history").status_code == 401
    assert web.get("/admin/api/history?minutes=0", headers=AUTH).status_code == 422
    assert web.get("/admin/api/history?minutes=1441", headers=AUTH).status_code == 422
