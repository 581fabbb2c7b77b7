"""The shared fixtures hand every test a clean Redis, whatever ran before it in the session, and
a module's shared stack hands each of its tests what a new one would."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from sync_worker import redis_keys as keys
from sync_worker.telemetry.stats import field_name
from tests.fixtures import redis_server as redis_module
from tests.fixtures import stack as stack_module
from tests.fixtures.redis_server import RedisServer, free_port
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import (
    SharedStack,
    Stack,
    base_env,
    running_shared,
    user_event,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]


def test_a_module_scoped_fixture_starts_on_what_no_earlier_test_left(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As tests/hostile's stack: module-scoped, on the session's Redis, set up before the first
    # per-test flush of its module; the module before it leaves a user pending.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest('pytest_plugins = ["tests.fixtures.redis_server"]')
    pytester.makepyfile(
        test_a_leaves="""
def test_accepts_and_stops(redis_client):
    redis_client.hset("rs:pending:user_1", "name", "x")
""",
        test_b_module="""
import pytest
import redis


@pytest.fixture(scope="module")
def keys_at_module_start(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client.keys("*")
    client.close()


def test_nothing_left_for_the_module(keys_at_module_start):
    assert keys_at_module_start == []
""",
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-p", "no:cacheprovider", "test_a_leaves.py", "test_b_module.py"
    )
    result.assert_outcomes(passed=2)


@pytest.fixture
def shared(
    redis_server: RedisServer, sandbox_server: SandboxHandle, tmp_path: Path
) -> Iterator[SharedStack]:
    """Web and a worker as a module shares them, for this test alone."""
    with running_shared(redis_server, sandbox_server, tmp_path, worker=True) as started:
        yield started


@pytest.fixture
def shared_web(
    redis_server: RedisServer, sandbox_server: SandboxHandle, tmp_path: Path
) -> Iterator[SharedStack]:
    """Web alone as a module shares it, for this test alone."""
    with running_shared(redis_server, sandbox_server, tmp_path, worker=False) as started:
        yield started


def left_behind(client: redis.Redis) -> list[str]:
    """The keys in Redis but those a live worker writes on its own rounds, as a new one would:
    its heartbeat, and at each sweep the sweep's lock and this minute's gauges (`g:` fields;
    a counter there would be left over)."""

    def a_live_workers_own(key: str) -> bool:
        if key.startswith(keys.WORKER_HEARTBEAT) or key == keys.SWEEP_LOCK:
            return True
        return key.startswith(keys.HISTORY) and all(
            field.startswith("g:") for field in client.hkeys(key)
        )

    return [key for key in client.keys("*") if not a_live_workers_own(key)]


def test_a_shared_stack_hands_each_test_what_a_new_one_would(shared: SharedStack) -> None:
    module_stack = shared
    first = module_stack.fresh()
    first.sandbox.control.create_customer("left@x.tw", external_id="user_left")
    first.sandbox.control.update_faults(latency_ms=1000)
    assert first.post(user_event("evt_left", "user_left", name="x")).status_code == 202
    wait_for(lambda: first.redis.zcard(keys.INFLIGHT) == 1, timeout=30)  # its PATCH is out

    second = module_stack.fresh()  # what the next test's fixture does
    assert left_behind(second.redis) == []
    assert second.sandbox.control.requests() == []
    worker = next(p for p in second.processes if p.name == "worker")
    assert "ready." not in worker.log(), "the log starts with the test"

    second.restart_worker(env={"BIND_BY_EMAIL": "false"}, name="reconfigured")
    third = module_stack.fresh()
    assert [(p.name, p.alive()) for p in third.processes] == [("web", True), ("worker", True)]
    assert not worker.alive(), "started again, not reused: the test replaced it"
    assert all(not p.alive() for p in second.processes if p.name == "reconfigured")
    assert third.env == module_stack.env


def test_a_shared_web_hands_over_no_counter_it_still_buffered(shared_web: SharedStack) -> None:
    first = shared_web.fresh()
    assert first.post(user_event("evt_1", "user_1", name="x")).status_code == 202
    # Counted in the web's buffer, which it sends to Redis once a second.
    second = shared_web.fresh()
    assert second.post(user_event("evt_2", "user_2", name="y")).status_code == 202
    refused = httpx.post(second.web_url + "/webhooks/user-updated", content=b"{}", timeout=10)
    assert refused.status_code == 401
    # Counted after the acceptance: once the refusal is in Redis, so is the acceptance.
    rejected = field_name("events_rejected_total", reason="signature")
    wait_for(lambda: second.redis.hget(keys.STATS, rejected), timeout=10)
    assert second.redis.hget(keys.STATS, "events_accepted_total") == "1"


def test_restart_worker_stops_every_worker_whatever_its_name(shared: SharedStack) -> None:
    """A worker named otherwise ("wrong", "fixed") is still a worker: one left running beside
    the replacement kept sending with its old settings (test_recur_fidelity.py)."""
    stack = shared.fresh()
    other = stack.start_worker(name="other")
    stack.restart_worker(name="replacement")
    assert not other.alive()
    running = [p.name for p in stack.processes if p.command == "worker" and p.alive()]
    assert running == ["replacement"]


def taken_first(port: int) -> Callable[[], int]:
    """A `free_port` that loses the race once: it hands out `port`, which a process holds."""
    ports = iter([port])
    return lambda: next(ports, None) or free_port()


def test_a_web_whose_port_was_taken_starts_again_on_another(
    redis_server: RedisServer,
    sandbox_server: SandboxHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """free_port's race: another process binds the port before our web does. Its /healthz
    must not pass for ours (CI once posted a test's events to another test's web)."""

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    squatter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    taken = squatter.server_address[1]
    monkeypatch.setattr(stack_module, "free_port", taken_first(taken))
    stack = Stack(
        redis_server=redis_server,
        sandbox=sandbox_server,
        directory=tmp_path,
        env=base_env(redis_server, sandbox_server),
    )
    try:
        stack.start(worker=False)
        webs = [p for p in stack.processes if p.command == "web"]
        assert [p.alive() for p in webs] == [True]
        assert stack.web_url != f"http://127.0.0.1:{taken}"
        assert stack.post(user_event("evt_port", "user_port", name="a")).status_code == 202
    finally:
        stack.close()
        squatter.shutdown()
        squatter.server_close()


def test_a_redis_whose_port_was_taken_starts_on_another(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race for Redis: the session's Redis of another xdist worker holds the port our
    redis-server was given. Its PING must not pass for ours, or two workers share one Redis and
    flush each other's data."""
    monkeypatch.setattr(redis_module, "free_port", taken_first(redis_server.port))
    ours = RedisServer.on_free_port(tmp_path)
    try:
        assert ours.port != redis_server.port
        assert ours.process is not None
        answering = redis.Redis(port=ours.port).info("server")["process_id"]
        assert answering == ours.process.pid
    finally:
        ours.stop(kill=True)
