"""Redis answering every read and refusing every write (a replica, or at `maxmemory`): intake
answers 503 to every event, and every place an operator or a load balancer looks says why."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from typer.testing import CliRunner

from sync_worker.cli import app
from tests.fixtures.redis_server import free_port
from tests.fixtures.stack import ADMIN_TOKEN, Stack, user_event

REFUSALS: dict[str, tuple[Callable[[redis.Redis], Any], Callable[[redis.Redis], Any]]] = {
    "redis_full": (
        lambda client: client.config_set("maxmemory", "1"),
        lambda client: client.config_set("maxmemory", "0"),
    ),
    "redis_not_primary": (
        lambda client: client.replicaof("127.0.0.1", free_port()),
        lambda client: client.replicaof("NO", "ONE"),
    ),
}


@pytest.mark.parametrize("reason", list(REFUSALS))
def test_redis_refusing_writes_is_said_where_operators_look(
    web_stack: Stack, monkeypatch: pytest.MonkeyPatch, reason: str
) -> None:
    for name, value in web_stack.env.items():
        monkeypatch.setenv(name, value)
    refuse, allow = REFUSALS[reason]
    web = web_stack.http
    with httpx.Client(base_url=web_stack.web_url, timeout=10) as browser:
        assert browser.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 303
        assert web.get(web_stack.web_url + "/readyz").status_code == 200
        client = web_stack.redis
        refuse(client)
        try:
            assert web_stack.post(user_event("evt_1", "user_1", name="x")).status_code == 503
            ready = web.get(web_stack.web_url + "/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["reason"] == reason
            assert "intake answers 503 to every event" in ready.json()["message"]
            text = CliRunner().invoke(app, ["status"], env={"COLUMNS": "250"}).stdout
            assert "redis writes" in text
            assert "refused" in text
            as_json = json.loads(CliRunner().invoke(app, ["status", "--json"]).stdout)
            assert as_json["redis_refusal"] == reason
            metrics = web.get(web_stack.web_url + "/metrics").text
            assert "recur_sync_redis_writes_refused 1.0" in metrics
            assert "<strong>Redis refuses writes</strong>" in browser.get("/admin").text
        finally:
            allow(client)
        assert web.get(web_stack.web_url + "/readyz").status_code == 200
        assert "recur_sync_redis_writes_refused 0.0" in web.get(web_stack.web_url + "/metrics").text
        assert (
            json.loads(CliRunner().invoke(app, ["status", "--json"]).stdout)["redis_refusal"]
            is None
        )
        assert "Redis refuses writes" not in browser.get("/admin").text
    assert not web_stack.redis.exists("rs:write-probe")
