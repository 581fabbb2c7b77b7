"""One real web process and one worker for the whole module, on the session's Redis and
sandbox (both emptied before each test), and the secret scan of every stack log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sync_worker import redis_keys as keys
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import Stack, base_env, quiet
from tests.hostile.leaks import leaked_secrets


@pytest.fixture(scope="module")
def live_stack(
    redis_server: RedisServer,
    sandbox_server: SandboxHandle,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Web and worker, started once per module (hostile tests are many and short)."""
    env = {
        **base_env(redis_server, sandbox_server),
        # These tests send dozens of wrong tokens from one address to compare the answers;
        # the login throttle has its own test (test_guard.py), on its own web process.
        "ADMIN_LOGIN_FAILURES_PER_MINUTE": "100000",
    }
    # The worker starts syncing at once: not what an earlier test (any module, under xdist's
    # worksteal) may have left in Redis.
    redis_server.flush()
    system = Stack(
        redis_server=redis_server,
        sandbox=sandbox_server,
        directory=tmp_path_factory.mktemp("hostile"),
        env=env,
    )
    try:
        system.start(worker=True)
        yield system
    finally:
        system.close()
        redis_server.flush()


@pytest.fixture
def web(live_stack: Stack) -> Stack:
    """The module's stack, quiet (see `quiet`), with Redis flushed and the sandbox reset."""
    quiet(live_stack)
    return live_stack


def nothing_reached_recur(stack: Stack) -> None:
    """Assert a refused delivery left no trace: nothing pending in Redis, no call to Recur."""
    client = stack.redis
    assert list(client.scan_iter(keys.PREFIX + "pending*")) == []
    assert client.zcard(keys.DUE) == 0
    assert stack.sandbox.control.requests() == []


@pytest.fixture(autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """After each test, no process any stack started has logged a secret."""
    yield
    assert leaked_secrets() == []
