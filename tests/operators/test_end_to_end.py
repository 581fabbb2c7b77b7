"""The operator loop on the real processes: a 404 lands in the DLQ, the customer is created, a
replay from the CLI sends the PATCH, and the entry is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.stack import ADMIN_TOKEN, Stack, wait_for
from tests.operators.conftest import dead_letter_via_stack


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sync_worker", *args],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_not_found_then_replay_after_the_customer_exists(stack: Stack) -> None:
    entry = dead_letter_via_stack(stack, "user_new", "王大明")
    assert entry["reason"] == "not_found"
    assert entry["http_status"] == 404
    assert entry["request"] == {"name": "王大明"}

    status = cli(stack, "status", "--json")
    assert status.returncode == 0, status.stderr
    snapshot = json.loads(status.stdout)
    assert snapshot["workers_alive"] == 1
    assert snapshot["dead_letters"]["not_found"] == 1

    stack.sandbox.control.create_customer("new@x.tw", external_id="user_new")
    stack.sandbox.control.clear_requests()
    replay = cli(stack, "dlq", "replay", entry["id"])
    assert replay.returncode == 0, replay.stderr
    assert "1 replayed" in replay.stdout

    patches = wait_for(lambda: stack.sandbox.control.requests(method="PATCH"))
    assert [p["body"] for p in patches] == [{"name": "王大明"}]
    url = f"{stack.web_url}/admin/api/dead-letters/{entry['id']}"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    wait_for(lambda: httpx.get(url, headers=auth, timeout=5).status_code == 404)
    assert cli(stack, "dlq", "list", "--json").stdout.strip() == "[]"

    def metrics() -> dict[str, float]:
        text = httpx.get(stack.web_url + "/metrics", timeout=5).text
        return {
            s.name + json.dumps(s.labels, sort_keys=True): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    counted = wait_for(lambda: (m := metrics())["recur_sync_syncs_applied_total{}"] == 1 and m)
    assert counted['recur_sync_dead_letters_total{"reason": "not_found"}'] == 1
    assert counted['recur_sync_dead_letters{"reason": "not_found"}'] == 0
    assert counted["recur_sync_workers_alive{}"] == 1
