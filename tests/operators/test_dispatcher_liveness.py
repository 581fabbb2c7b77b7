"""The dispatcher thread outlives any exception, and a stalled one is visible where operators
look: `status` (text and --json), `/readyz`, `/metrics`. The dispatcher runs its real loop on a
thread, on real Redis and the sandbox, with a publisher or an auth probe that raises."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from kombu.exceptions import OperationalError
from typer.testing import CliRunner

from sync_worker.cli import app
from sync_worker.pipeline.dispatch import Dispatcher
from sync_worker.pipeline.flow import Throttled
from sync_worker.pipeline.records import Claim
from sync_worker.runtime import Runtime
from sync_worker.settings import load_settings
from tests.fixtures.stack import wait_for
from tests.operators.conftest import accept

HOST = "worker-1@test"
STALL_SECONDS = "1.5"


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch, operator_env: dict[str, str]) -> Iterator[Runtime]:
    """A worker's collaborators; a stall is declared after 1.5 s, and a paused sync is probed
    every 0.1 s (the CLI reads the same environment)."""
    monkeypatch.setenv("DISPATCHER_STALL_SECONDS", STALL_SECONDS)
    monkeypatch.setenv("AUTH_PROBE_INTERVAL_SECONDS", "0.1")
    process = Runtime(load_settings())
    yield process
    process.close()


class Publisher:
    """Publishes into a list, after raising `failures` times (all the time with -1)."""

    def __init__(self, error: Exception, failures: int) -> None:
        self.error = error
        self.failures = failures
        self.calls = 0
        self.published: list[list[str]] = []

    def __call__(self, claims: list[Claim]) -> None:
        self.calls += 1
        if self.failures != 0:
            self.failures -= 1
            raise self.error
        self.published.append([claim.user_id for claim in claims])


class Running:
    """`Dispatcher.run` on its own thread, as the worker's bootstep runs it."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.stop = threading.Event()
        self.thread = threading.Thread(target=dispatcher.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def dispatcher(runtime: Runtime, publish: Callable[[list[Claim]], None]) -> Dispatcher:
    return Dispatcher(runtime, publish=publish, queue_depth=lambda: 0, hostname=HOST)


def errors_counted(runtime: Runtime) -> dict[str, float]:
    prefix = "dispatcher_errors_total|type="
    return {
        name.removeprefix(prefix): value
        for name, value in runtime.stats.read().items()
        if name.startswith(prefix)
    }


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("Error 111 connecting: publish retries exhausted"),
        Throttled(2.0),
        redis.ConnectionError("Connection refused"),
        KeyError("a bug"),
    ],
    ids=["kombu-OperationalError", "Throttled", "redis-ConnectionError", "KeyError"],
)
def test_no_exception_ends_the_dispatcher(runtime: Runtime, error: Exception) -> None:
    accept(runtime, "user_1", name="x")
    publish = Publisher(error, failures=3)
    with Running(dispatcher(runtime, publish)) as running:
        # Each failed publish hands the user back, so the next round claims it again at once
        # (not after its lease lapses), and the fourth publish goes through.
        wait_for(lambda: publish.published, timeout=20)
        assert running.thread.is_alive()
    assert publish.published == [["user_1"]]
    assert publish.calls == 4
    assert errors_counted(runtime) == {type(error).__name__: 3}
    assert running.dispatcher.failures == 0


def test_a_throttled_auth_probe_does_not_end_the_dispatcher(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.flow.pause(reason="unauthorized", status=401, message="bad key")
    acquire = runtime.flow.acquire
    throttled = [Throttled(1.0), Throttled(1.0)]

    def acquire_or_throttled(*, max_wait: float) -> None:
        if throttled:
            raise throttled.pop()
        acquire(max_wait=max_wait)

    monkeypatch.setattr(runtime.flow, "acquire", acquire_or_throttled)
    with Running(dispatcher(runtime, Publisher(RuntimeError("unused"), failures=0))):
        # The third probe gets through to the sandbox, which takes the key: the sync resumes.
        wait_for(lambda: runtime.flow.paused() is None, timeout=20)
    assert errors_counted(runtime) == {"Throttled": 2}


def test_a_stalled_dispatcher_is_visible_and_recovers(runtime: Runtime, web: httpx.Client) -> None:
    accept(runtime, "user_1", name="x")
    publish = Publisher(OperationalError("publish retries exhausted"), failures=-1)
    with Running(dispatcher(runtime, publish)):
        ready = wait_for(lambda: (r := web.get("/readyz")).status_code == 503 and r, timeout=20)
        body = ready.json()
        assert body["reason"] == "dispatcher_stalled"
        [worker] = body["workers"]
        assert worker["hostname"] == HOST
        assert worker["last_error"] == "OperationalError"
        assert worker["failures"] >= 1
        assert worker["dispatcher_seconds_ago"] >= float(STALL_SECONDS)  # rounded to 0.1 s

        as_json = json.loads(CliRunner().invoke(app, ["status", "--json"]).stdout)
        assert as_json["workers_alive"] == 1
        assert as_json["workers_stalled"] == [HOST]
        text = CliRunner().invoke(app, ["status"], env={"COLUMNS": "250"}).stdout
        assert "1 STALLED" in text
        assert "dispatcher stalled" in text
        assert "OperationalError" in text

        metrics = web.get("/metrics").text
        assert "recur_sync_dispatcher_stalled_workers 1.0" in metrics
        assert f'recur_sync_dispatcher_last_loop_age_seconds{{worker="{HOST}"}}' in metrics
        assert 'recur_sync_dispatcher_errors_total{type="OperationalError"}' in metrics

        publish.failures = 0  # the broker is back
        wait_for(lambda: web.get("/readyz").status_code == 200, timeout=20)
        assert publish.published == [["user_1"]]
        assert "recur_sync_dispatcher_stalled_workers 0.0" in web.get("/metrics").text
        as_json = json.loads(CliRunner().invoke(app, ["status", "--json"]).stdout)
        assert as_json["workers_stalled"] == []
