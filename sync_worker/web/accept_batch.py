"""The accept scripts of requests that arrive together go to Redis in one pipeline.

Under load, several intake requests become ready in the same turn of the event loop. Sent one by
one, each accept script cost a write and a read on a connection of its own (and, with
REDIS_MIN_REPLICAS, a `WAIT` of its own); the write's system call was the largest single cost of
a request in the web process. Here a request queues its call, and everything queued goes out as
one pipeline on one connection, followed by one `WAIT` when replicas are required: `WAIT` counts
every earlier write of its connection, so one answer covers every script of the pipeline.

When a pipeline goes out: at the end of the turn a request arrived in, when none is out; else as
soon as those out come back, with every request that arrived meanwhile, or once `SEND_QUEUED`
calls wait behind them. A request arriving alone on an idle Redis waits for nothing. At a steady
rate, with Redis writing its AOF with `appendfsync always`, each request arriving alone used to
cost Redis a `fsync` of its own (~250 µs on the bench machine, in which Redis serves nothing
else), and the queue behind those made the intake's p99; requests that arrive while a pipeline is
out now share the next one's. Flat out, `SEND_QUEUED` keeps the next pipeline going while one is
out, so that Redis is not left idle while the web waits for an answer (bench/README.md, intake).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

MAX_BATCH = 128
"""Calls per pipeline at most; more queued in one turn go out as several pipelines at once."""

SEND_QUEUED = 8
"""Calls queued behind pipelines that are out that go at once, without waiting for them.
Measured at 32 connections flat out: holding every call until the pipelines out came back cost
16 % of the rate (3,288 against 3,930 events/s); holding up to 8 cost none (3,838)."""


@dataclass(frozen=True)
class _Call:
    keys: list[str]
    args: list[Any]
    future: asyncio.Future[tuple[Any, bool]]


class AcceptBatcher:
    """Runs one registered script for many callers, in pipelines: a call arriving while
    pipelines are out goes in the next ones (see the module)."""

    def __init__(
        self, client: aioredis.Redis, script: Any, *, replicas: int, timeout_ms: int
    ) -> None:
        self._client = client
        self._script = script
        self._replicas = replicas
        self._timeout_ms = timeout_ms
        self._queued: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, script_keys: list[str], args: list[Any]) -> tuple[Any, bool]:
        """The script's reply, and whether the required replicas acknowledged its writes
        (always True when none are required).

        Raises what Redis raised for this call or its pipeline. A script that wrote nothing
        (a duplicate event id) leaves `WAIT` nothing of its own: see `acknowledged_async`.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, bool]] = loop.create_future()
        self._queued.append(_Call(script_keys, args, future))
        queued = len(self._queued)
        if (queued == 1 and not self._sending) or (queued == SEND_QUEUED and self._sending):
            # After the callbacks already due this turn: the other requests that arrived with
            # this one queue their calls first. With pipelines out, `_sent` sends them.
            loop.call_soon(self._send_queued)
        return await future

    def _send_queued(self) -> None:
        calls, self._queued = self._queued, []
        for start in range(0, len(calls), MAX_BATCH):
            task = asyncio.ensure_future(self._send(calls[start : start + MAX_BATCH]))
            self._sending.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        """A pipeline came back (or failed): the last one out sends what queued meanwhile
        (fewer than SEND_QUEUED calls: as many went at once)."""
        self._sending.discard(task)
        if not self._sending and self._queued:
            self._send_queued()

    async def _send(self, calls: list[_Call]) -> None:
        try:
            await self._run(calls)
        except BaseException as error:
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise

    async def _run(self, calls: list[_Call]) -> None:
        pending = calls
        for attempt in range(2):
            async with self._client.pipeline(transaction=False) as pipe:
                for call in pending:
                    pipe.evalsha(self._script.sha, len(call.keys), *call.keys, *call.args)
                if self._replicas > 0:
                    pipe.wait(self._replicas, self._timeout_ms)
                replies = await pipe.execute(raise_on_error=False)
            replicated = True
            if self._replicas > 0:
                count = replies.pop()
                if isinstance(count, Exception):
                    raise count
                replicated = int(count) >= self._replicas
            unloaded = []
            for call, reply in zip(pending, replies, strict=True):
                if call.future.done():
                    continue  # its request went away
                if isinstance(reply, NoScriptError) and attempt == 0:
                    unloaded.append(call)
                elif isinstance(reply, Exception):
                    call.future.set_exception(reply)
                else:
                    call.future.set_result((reply, replicated))
            if not unloaded:
                return
            # A restarted or newly promoted primary has no scripts cached: those calls did not
            # run, so running them now is their first run.
            await self._client.script_load(self._script.script)
            pending = unloaded
