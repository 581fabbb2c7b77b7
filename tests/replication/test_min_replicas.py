"""REDIS_MIN_REPLICAS with a real replica: a 202 (and an operator's replay or delete) is
confirmed only once the replica holds the write; with the replica frozen (SIGSTOP) intake
answers 503 with Retry-After, and a retry of the same event id once it is back is confirmed.
With fewer replicas than it asks for, `/readyz`, `status` and `/metrics` say so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from typer.testing import CliRunner

from sync_worker import redis_keys as keys
from sync_worker.cli import app as cli
from sync_worker.devstack.stack import find_redis_server
from sync_worker.replication import REPLICA_MAX_LAG_SECONDS, replicas_online
from sync_worker.runtime import Runtime
from sync_worker.settings import load_settings
from sync_worker.web import auth
from tests.fixtures.redis_server import RedisServer, free_port
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import (
    ADMIN_TOKEN,
    FAST_SETTINGS,
    WEBHOOK_SECRET,
    Stack,
    user_event,
    wait_for,
)
from tests.operators.conftest import make_dead_letter

WAIT_MS = 200
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Replica:
    """A redis-server replicating the primary, which a test can freeze and thaw."""

    def __init__(self, primary: RedisServer, directory: Path) -> None:
        found = find_redis_server()
        assert found is not None, "no redis-server"
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                str(found.path),
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(directory),
                "--save", "",
                "--replicaof", "127.0.0.1", str(primary.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = redis.Redis(port=self.port, decode_responses=True)
        wait_for(self.linked, timeout=20)

    def linked(self) -> bool:
        try:
            return "master_link_status:up" in self.client.execute_command("INFO replication")
        except redis.ConnectionError:
            return False

    def freeze(self) -> None:
        """SIGSTOP: connected, but acknowledging nothing, as a stalled replica."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "primary").mkdir()
    server = RedisServer.on_free_port(tmp_path / "primary")
    yield server
    server.stop()


@pytest.fixture
def replica(primary: RedisServer, tmp_path: Path) -> Iterator[Replica]:
    (tmp_path / "replica").mkdir()
    running = Replica(primary, tmp_path / "replica")
    yield running
    running.stop()


@pytest.fixture
def env(
    primary: RedisServer, sandbox: SandboxHandle, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    values = {
        **FAST_SETTINGS,
        "REDIS_URL": primary.url,
        "RECUR_API_URL": sandbox.url,
        "RECUR_SECRET_KEY": sandbox.secret_key,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "REDIS_MIN_REPLICAS": "1",
        "REDIS_WAIT_TIMEOUT_MS": str(WAIT_MS),
        "DEBOUNCE_WINDOW_SECONDS": "0",
        "RETRY_FAST_ATTEMPTS": "1",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def web(
    primary: RedisServer,
    replica: Replica,
    sandbox: SandboxHandle,
    env: dict[str, str],
    tmp_path: Path,
) -> Iterator[Stack]:
    stack = Stack(redis_server=primary, sandbox=sandbox, directory=tmp_path, env=env)
    try:
        stack.start_web()
        yield stack
    finally:
        stack.close()


@pytest.fixture
def lone_web(
    primary: RedisServer, sandbox: SandboxHandle, env: dict[str, str], tmp_path: Path
) -> Iterator[Stack]:
    """The web process on a primary that has no replica yet."""
    stack = Stack(redis_server=primary, sandbox=sandbox, directory=tmp_path, env=env)
    try:
        stack.start_web()
        yield stack
    finally:
        stack.close()


def test_too_few_replicas_is_said_where_operators_look(
    lone_web: Stack, primary: RedisServer, tmp_path: Path
) -> None:
    ready = httpx.get(lone_web.web_url + "/readyz", timeout=10)
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["reason"] == "replicas_missing"
    assert (body["replicas_online"], body["min_replicas"]) == (0, 1)
    assert "REDIS_MIN_REPLICAS" in body["message"]
    text = CliRunner().invoke(cli, ["status"], env={"COLUMNS": "250"}).stdout
    assert "0 in sync, REDIS_MIN_REPLICAS 1" in text
    assert "intake answers 503 to every event" in text
    as_json = json.loads(CliRunner().invoke(cli, ["status", "--json"]).stdout)
    assert as_json["replicas_missing"] is True
    metrics = httpx.get(lone_web.web_url + "/metrics", timeout=10).text
    assert "recur_sync_redis_replicas_connected 0.0" in metrics
    assert "recur_sync_redis_min_replicas 1.0" in metrics
    with httpx.Client(base_url=lone_web.web_url, timeout=10) as browser:
        assert browser.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 303
        assert "<strong>Too few Redis replicas</strong>: 0 in sync" in browser.get("/admin").text

    (tmp_path / "replica").mkdir()
    replica = Replica(primary, tmp_path / "replica")
    try:
        wait_for(lambda: httpx.get(lone_web.web_url + "/readyz", timeout=10).status_code == 200)
        metrics = httpx.get(lone_web.web_url + "/metrics", timeout=10).text
        assert "recur_sync_redis_replicas_connected 1.0" in metrics
        text = CliRunner().invoke(cli, ["status"], env={"COLUMNS": "250"}).stdout
        assert "1 in sync (REDIS_MIN_REPLICAS 1)" in text
        with httpx.Client(base_url=lone_web.web_url, timeout=10) as browser:
            assert browser.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 303
            assert "Too few Redis replicas" not in browser.get("/admin").text
    finally:
        replica.stop()


def test_a_replica_that_stopped_acknowledging_is_not_counted() -> None:
    """INFO replication lists a frozen replica as online until `repl-timeout` (60 s); its lag
    says it stopped acknowledging, and a WAIT would time out on it."""
    info = {
        "role": "master",
        "connected_slaves": 3,
        "slave0": {"ip": "10.0.0.2", "port": 6379, "state": "online", "lag": 0},
        "slave1": {"ip": "10.0.0.3", "port": 6379, "state": "online", "lag": 11},
        "slave2": {"ip": "10.0.0.4", "port": 6379, "state": "wait_bgsave", "lag": 0},
        "slave_expiry_keys": 0,
    }
    assert REPLICA_MAX_LAG_SECONDS == 10
    assert replicas_online(info) == 1


def test_intake_answers_202_only_once_a_replica_holds_the_event(
    web: Stack, replica: Replica
) -> None:
    accepted = web.post(user_event("evt_1", "user_1", name="one"))
    assert accepted.status_code == 202, accepted.text
    # Acknowledged by the replica before the answer: it is there now, without waiting.
    assert replica.client.exists(keys.event_seen("evt_1"))
    assert replica.client.hget(keys.pending("user_1"), "v:name") == '"one"'

    replica.freeze()
    try:
        started = time.monotonic()
        refused = web.post(user_event("evt_2", "user_2", name="two"))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "same event id" in refused.json()["message"]
        assert time.monotonic() - started < 5
        # A retry while the replica is still frozen must not pass as a confirmed duplicate.
        again = web.post(user_event("evt_2", "user_2", name="two"))
        assert again.status_code == 503, again.text
    finally:
        replica.thaw()
    retried = web.post(user_event("evt_2", "user_2", name="two"))
    assert retried.status_code == 200, retried.text
    assert retried.json() == {"status": "duplicate", "event_id": "evt_2"}
    assert replica.client.exists(keys.event_seen("evt_2"))
    assert replica.client.hget(keys.pending("user_2"), "v:name") == '"two"'


def test_operator_actions_report_failure_until_a_replica_holds_them(
    web: Stack, replica: Replica, env: dict[str, str]
) -> None:
    runtime = Runtime(load_settings())
    try:
        first = make_dead_letter(runtime, "user_a")
        second = make_dead_letter(runtime, "user_b")
        third = make_dead_letter(runtime, "user_c")
        fourth = make_dead_letter(runtime, "user_d")
        fifth = make_dead_letter(runtime, "user_e")
    finally:
        runtime.close()
    replica.freeze()
    try:
        replay = httpx.post(
            f"{web.web_url}/admin/api/dead-letters/{first}/replay", headers=AUTH, timeout=10
        )
        assert replay.status_code == 503, replay.text
        assert replay.json()["error"]["code"] == "not_replicated"
        assert replay.headers["retry-after"] == "1"
        delete = httpx.delete(f"{web.web_url}/admin/api/dead-letters/{second}", headers=AUTH)
        assert delete.status_code == 503, delete.text
        result = CliRunner().invoke(cli, ["dlq", "delete", third])
        assert result.exit_code == 1, result.output
        assert "REDIS_MIN_REPLICAS" in result.stderr
        result = CliRunner().invoke(cli, ["dlq", "replay", fourth])
        assert result.exit_code == 1, result.output
        assert "REDIS_MIN_REPLICAS" in result.stderr
        with httpx.Client(base_url=web.web_url, timeout=10) as browser:
            login = browser.post("/admin/login", data={"token": ADMIN_TOKEN})
            assert login.status_code == 303
            session = browser.cookies[auth.SESSION_COOKIE]
            csrf = auth.csrf_token(ADMIN_TOKEN, session)
            action = browser.post(f"/admin/actions/delete/{fifth}", data={"csrf": csrf})
            assert action.status_code == 303
            assert "notice=not_replicated" in action.headers["location"]
    finally:
        replica.thaw()
    # What was done stays done, and reaches the replica once it is back.
    wait_for(lambda: not replica.client.exists(keys.dead_letter(second), keys.dead_letter(third)))
    result = CliRunner().invoke(cli, ["dlq", "delete", first])
    assert result.exit_code == 0, result.output
