"""The breaker's state where operators look: status (CLI and API), the dashboard, /metrics and
/readyz, from one runtime on real Redis."""

from __future__ import annotations

import json
import re

import httpx
from typer.testing import CliRunner

from sync_worker.cli import app
from sync_worker.ops.status import gather_status
from sync_worker.runtime import Runtime
from tests.fixtures.stack import ADMIN_TOKEN


def open_breaker(runtime: Runtime) -> None:
    for _ in range(runtime.settings.breaker_min_calls):
        runtime.breaker.record(failures=1)


def test_closed_everywhere_by_default(runtime: Runtime, web: httpx.Client) -> None:
    assert gather_status(runtime).breaker["state"] == "closed"
    assert web.get("/readyz").json()["breaker"] == "closed"
    assert "recur_sync_breaker_open 0.0" in web.get("/metrics").text


def test_open_everywhere(runtime: Runtime, web: httpx.Client) -> None:
    open_breaker(runtime)
    snapshot = gather_status(runtime).to_dict()
    assert snapshot["breaker"]["state"] == "open"
    assert snapshot["breaker"]["trips"] == 1
    assert snapshot["breaker"]["open_seconds_left"] > 0

    ready = web.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() | {"mode": None} == {
        "status": "ready",
        "mode": None,
        "breaker": "open",
        "reason": "breaker_open",
    }
    metrics = web.get("/metrics").text
    assert "recur_sync_breaker_open 1.0" in metrics
    assert 'recur_sync_breaker_state{state="open"} 1.0' in metrics
    assert 'recur_sync_breaker_transitions_total{to="open"} 1.0' in metrics

    cli = CliRunner().invoke(app, ["status"], env={"COLUMNS": "200"})
    assert cli.exit_code == 0
    assert "OPEN: sends held, intake still accepts" in cli.stdout
    as_json = json.loads(CliRunner().invoke(app, ["status", "--json"]).stdout)
    assert as_json["breaker"]["state"] == "open"

    assert web.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 303
    banner = re.search(r"<div class='banner bad' id='breaker'>(.*?)</div>", web.get("/admin").text)
    assert banner is not None
    assert "Circuit breaker open" in banner.group(1)
