"""A runtime on the test Redis and the sandbox, and helpers to seed both sides."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sync_worker.pipeline.ledger import Ledger
from sync_worker.reconcile.reconciler import Reconciler
from sync_worker.runtime import Runtime
from sync_worker.sandbox import DEFAULT_SECRET_KEY, SandboxControl, create_app, start_in_thread
from sync_worker.settings import Settings, load_settings
from tests.fixtures.sandbox import SandboxHandle

LEDGER_TS = 1_700_000_000_000


def seeded_name(n: int) -> str:
    """The name the sandbox's `seed` gives customer n."""
    return f"測試用戶 {n}"


@pytest.fixture
def settings(redis_url: str, sandbox: SandboxHandle) -> Settings:
    """Settings on the test Redis and sandbox, with a rate limit that does not slow tests."""
    return load_settings(
        redis_url=redis_url,
        recur_api_url=sandbox.url,
        recur_secret_key=sandbox.secret_key,
        rate_limit_per_second=10_000,
        rate_limit_burst=10_000,
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """The collaborators of one process, closed after the test."""
    built = Runtime(settings)
    yield built
    built.close()


@pytest.fixture
def echo_runtime(redis_url: str) -> Iterator[tuple[Runtime, SandboxControl]]:
    """A runtime on a sandbox of its own that returns metadata (`--echo-metadata`)."""
    server = start_in_thread(create_app(echo_metadata=True))
    built = Runtime(
        load_settings(
            redis_url=redis_url,
            recur_api_url=server.url,
            recur_secret_key=DEFAULT_SECRET_KEY,
            rate_limit_per_second=10_000,
            rate_limit_burst=10_000,
        )
    )
    try:
        with SandboxControl(server.url) as control:
            yield built, control
    finally:
        built.close()
        server.stop()


def reconciler(runtime: Runtime, **overrides: Any) -> Reconciler:
    """A reconciler with quick failure for tests (fewer attempts per page)."""
    return Reconciler.from_runtime(runtime, **{"page_attempts": 3, **overrides})


def seed_ledger(
    ledger: Ledger, users: dict[str, dict[str, Any]], *, ts_ms: int = LEDGER_TS
) -> None:
    """Ledger entries as an import writes them."""
    for user_id, fields in users.items():
        ledger.seed(user_id, fields, ts_ms=ts_ms)


def seed_both(sandbox: SandboxHandle, ledger: Ledger, count: int) -> None:
    """`count` customers in the sandbox and matching ledger entries: all in sync."""
    if count:
        sandbox.control.seed(count)
    seed_ledger(ledger, {f"user_{n}": {"name": seeded_name(n)} for n in range(1, count + 1)})


def list_cursors(sandbox: SandboxHandle, *, since: int = 0) -> list[str | None]:
    """The `starting_after` of every list request after seq `since`, in order."""
    return [
        entry["query"].get("starting_after")
        for entry in sandbox.control.requests(method="GET", since=since)
        if entry["path"] == "/v1/customers"
    ]
