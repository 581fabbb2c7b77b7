"""Fixtures of the operator tests: settings from the environment, a runtime on the test Redis
and the sandbox, dead letters made through the real sync path, and the web app in-process."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.outcomes import SyncOutcome
from sync_worker.runtime import Runtime
from sync_worker.settings import load_settings
from sync_worker.web.app import create_app
from tests.fixtures.redis_server import free_port
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import ADMIN_TOKEN, WEBHOOK_SECRET, Stack, user_event, wait_for

_event_numbers = itertools.count(1)


@pytest.fixture
def operator_env(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, sandbox: SandboxHandle
) -> dict[str, str]:
    """Settings for a CLI or app built in this process; changes are due at once (no window)."""
    env = {
        "REDIS_URL": redis_url,
        "RECUR_API_URL": sandbox.url,
        "RECUR_SECRET_KEY": sandbox.secret_key,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "DEBOUNCE_WINDOW_SECONDS": "0",
        "RETRY_FAST_ATTEMPTS": "1",  # a 5xx is handed back at once, no sleeping in tests
        "LOG_FORMAT": "json",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def runtime(operator_env: dict[str, str]) -> Iterator[Runtime]:
    """The collaborators a worker would have, on the test Redis and the sandbox."""
    process = Runtime(load_settings())
    yield process
    process.close()


@contextlib.contextmanager
def serve(runtime: Runtime) -> Iterator[httpx.Client]:
    """The real web app served by uvicorn in a thread of this process, sharing `runtime`.

    (Starlette's TestClient is avoided: it warns that its httpx support is deprecated.)
    """
    port = free_port()
    config = uvicorn.Config(
        create_app(runtime.settings, runtime=runtime),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the web app exited"
        assert time.monotonic() < deadline, "the web app did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def web(runtime: Runtime) -> Iterator[httpx.Client]:
    """An HTTP client on the real app (see `serve`)."""
    with serve(runtime) as client:
        yield client


def accept(runtime: Runtime, user_id: str, *, ts_ms: int | None = None, **fields: object) -> None:
    """Accept an event as intake would."""
    event = UserEvent(
        event_id=f"evt_{next(_event_numbers)}",
        type="user.updated",
        user_id=user_id,
        ts_ms=ts_ms if ts_ms is not None else int(time.time() * 1000),
        fields=dict(fields),
    )
    runtime.pending.accept(event)


def sync_due(runtime: Runtime) -> list[SyncOutcome]:
    """What a worker does on one dispatcher tick: claim every due user and sync it."""
    return runtime.syncer.sync_claims(runtime.pending.claim_due(1000))


def make_dead_letter(runtime: Runtime, user_id: str, **fields: object) -> str:
    """A dead letter made by the real path: the customer is missing in the sandbox -> 404."""
    accept(runtime, user_id, **(fields or {"name": f"name of {user_id}"}))
    [outcome] = [o for o in sync_due(runtime) if o.user_id == user_id]
    assert outcome.result == "dead_letter", outcome
    return outcome.dead_letter_id


def dead_letter_via_stack(stack: Stack, user_id: str, name: str) -> dict[str, Any]:
    """Post a signed event for a user Recur does not know; wait for its dead letter (admin API)."""
    response = stack.post(user_event(f"evt_{next(_event_numbers)}", user_id, name=name))
    assert response.status_code == 202

    def entries() -> list[dict[str, Any]]:
        answer = httpx.get(
            stack.web_url + "/admin/api/dead-letters",
            params={"user_id": user_id},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=5,
        )
        return list(answer.json()["data"])

    [entry] = wait_for(entries)
    return entry
