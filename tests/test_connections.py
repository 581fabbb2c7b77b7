"""Redis connections from the settings, including through a real Redis Sentinel."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sync_worker.celery_app import create_celery_app
from sync_worker.connections import (
    FailoverSafeSentinelTransport,
    broker_transport_options,
    redis_client,
    sentinel_target,
)
from sync_worker.devstack.stack import find_redis_server
from sync_worker.settings import Settings
from tests.fixtures.redis_server import RedisServer, free_port


def test_plain_url_is_not_a_sentinel() -> None:
    assert sentinel_target("redis://localhost:6379/0") is None
    assert broker_transport_options(Settings(redis_url="redis://localhost:6379/0")) == {}


def test_sentinel_list_is_parsed() -> None:
    target = sentinel_target("sentinel://:pw@s1:26379/2;sentinel://s2:26380")
    assert target is not None
    assert target.hosts == [("s1", 26379), ("s2", 26380)]
    assert (target.db, target.password) == (2, "pw")


@pytest.fixture
def sentinel(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    """A real sentinel watching the test Redis as master `testmaster`."""
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor testmaster 127.0.0.1 {redis_server.port} 1\n"
    )
    found = find_redis_server()
    assert found is not None
    binary = found.path
    process = subprocess.Popen(
        [binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            if client.execute_command("SENTINEL", "get-master-addr-by-name", "testmaster"):
                break
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the sentinel did not start")
        time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(timeout=10)


def test_client_finds_the_master_through_sentinel(redis_url: str, sentinel: int) -> None:
    settings = Settings(
        redis_url=f"sentinel://127.0.0.1:{sentinel}/0", redis_sentinel_master="testmaster"
    )
    client = redis_client(settings)
    client.set("through-sentinel", "yes")
    assert redis.Redis.from_url(redis_url).get("through-sentinel") == b"yes"
    assert broker_transport_options(settings) == {"master_name": "testmaster"}


def test_the_broker_behind_sentinel_uses_the_failover_safe_transport() -> None:
    """kombu's own Sentinel channel crashed the worker when the master died (see
    FailoverSafeSentinelChannel); tests/ha/test_failover.py shows the worker surviving."""
    sentinel = create_celery_app(Settings(redis_url="sentinel://s1:26379;sentinel://s2:26379"))
    plain = create_celery_app(Settings(redis_url="redis://localhost:6379/0"))
    with sentinel.connection_for_write() as connection:
        assert connection.transport_cls == "sync_worker.connections:FailoverSafeSentinelTransport"
        assert isinstance(connection.transport, FailoverSafeSentinelTransport)
    with plain.connection_for_write() as connection:
        assert connection.transport_cls == "redis"
