"""The web's accept batcher, on a real Redis: calls of one event-loop turn share a pipeline and
one `WAIT`, each caller gets its own reply or error, and a flushed script cache is reloaded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.pending import ACCEPT_SCRIPT, AcceptResult, PendingStore
from sync_worker.web.accept_batch import SEND_QUEUED, AcceptBatcher


def calls(redis_url: str, count: int) -> list[tuple[list[str], list[Any]]]:
    store = PendingStore(
        redis.Redis.from_url(redis_url),
        window_seconds=2,
        max_wait_seconds=30,
        dedup_ttl_seconds=3600,
        lease_seconds=120,
    )
    return [
        store.accept_call(UserEvent(f"evt_{i}", "user.updated", f"user_{i}", 1, {"name": "n"}))
        for i in range(count)
    ]


async def run_together(
    redis_url: str, batch: list[tuple[list[str], list[Any]]], *, replicas: int
) -> list[Any]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        batcher = AcceptBatcher(
            client, client.register_script(ACCEPT_SCRIPT), replicas=replicas, timeout_ms=50
        )
        return await asyncio.gather(
            *(batcher.run(script_keys, args) for script_keys, args in batch),
            return_exceptions=True,
        )
    finally:
        await client.aclose()


def command_calls(client: redis.Redis, command: str) -> int:
    """The calls of `command` since the last CONFIG RESETSTAT; Redis 6.2 counts a subcommand
    (`script|load`) under its command (`script`)."""
    stats = client.info("commandstats")
    found = stats.get(f"cmdstat_{command}") or stats.get(f"cmdstat_{command.split('|')[0]}")
    return int(found["calls"]) if found else 0


def test_calls_of_one_turn_share_one_pipeline_and_one_wait(
    redis_url: str, redis_client: redis.Redis
) -> None:
    batch = calls(redis_url, 40)
    redis_client.script_load(ACCEPT_SCRIPT)
    redis_client.config_resetstat()
    # No replica is connected: WAIT answers 0 after its timeout, and nobody counts as replicated.
    results = asyncio.run(run_together(redis_url, batch, replicas=1))
    assert [AcceptResult.from_reply(reply).version for reply, _ in results] == [1] * 40
    assert {replicated for _, replicated in results} == {False}
    assert command_calls(redis_client, "wait") == 1
    assert command_calls(redis_client, "evalsha") == 40
    assert redis_client.zcard(keys.DUE) == 40


def test_without_replicas_nothing_waits(redis_url: str, redis_client: redis.Redis) -> None:
    batch = calls(redis_url, 5)
    redis_client.script_load(ACCEPT_SCRIPT)
    redis_client.config_resetstat()
    results = asyncio.run(run_together(redis_url, batch, replicas=0))
    assert {replicated for _, replicated in results} == {True}
    assert command_calls(redis_client, "wait") == 0


def test_a_failing_call_fails_alone(redis_url: str, redis_client: redis.Redis) -> None:
    batch = calls(redis_url, 3)
    redis_client.set(keys.pending("user_1"), "not a hash")  # the script's HGET fails on it
    results = asyncio.run(run_together(redis_url, batch, replicas=0))
    assert isinstance(results[1], ResponseError)
    assert [AcceptResult.from_reply(results[i][0]).version for i in (0, 2)] == [1, 1]


def test_a_flushed_script_cache_is_loaded_again(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.script_flush()
    redis_client.config_resetstat()
    results = asyncio.run(run_together(redis_url, calls(redis_url, 10), replicas=0))
    assert [AcceptResult.from_reply(reply).version for reply, _ in results] == [1] * 10
    assert command_calls(redis_client, "script|load") == 1


def test_calls_arriving_while_a_pipeline_is_out_go_together_in_the_next(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """One call every 5 ms while the first pipeline is out (its `WAIT`, 500 ms without a
    replica): the next SEND_QUEUED (8) go together as soon as they are queued, and the last
    two once both pipelines came back. 3 pipelines (3 `WAIT`s) for 11 calls, where each used
    to go alone."""
    assert SEND_QUEUED == 8
    batch = calls(redis_url, 11)
    redis_client.script_load(ACCEPT_SCRIPT)
    redis_client.config_resetstat()
    sent_at: list[float] = []

    async def one_every_5_ms() -> list[tuple[Any, bool]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            batcher = AcceptBatcher(
                client, client.register_script(ACCEPT_SCRIPT), replicas=1, timeout_ms=500
            )
            started = []
            for script_keys, args in batch:
                started.append(asyncio.ensure_future(batcher.run(script_keys, args)))
                await asyncio.sleep(0.005)
            start = time.monotonic()
            for call in started:
                await call
                sent_at.append(time.monotonic() - start)
            return [call.result() for call in started]
        finally:
            await client.aclose()

    results = asyncio.run(one_every_5_ms())
    assert [AcceptResult.from_reply(reply).version for reply, _ in results] == [1] * 11
    assert command_calls(redis_client, "evalsha") == 11
    assert command_calls(redis_client, "wait") == 3
    # the last two waited for a WAIT of their own after the second pipeline's
    assert sent_at[-1] - sent_at[-3] > 0.4
