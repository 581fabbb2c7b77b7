"""Emitting and delivering operational webhooks on real Redis, to a real local receiver.

The deliverer's clock is a fake one near real time (the receiver checks the signed timestamp),
moved by hand, so backoffs and leases pass without sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

import httpx
import pytest
import redis
from structlog.testing import capture_logs

from sync_worker import redis_keys as keys
from sync_worker.telemetry.ops_webhooks import OpsDeliverer, OpsEmitter
from sync_worker.telemetry.stats import Stats
from tests.fixtures.clock import Clock
from tests.fixtures.redis_server import free_port
from tests.telemetry.ops_webhooks.conftest import OPS_SECRET, Receiver

MAX_ATTEMPTS = 3
BACKOFF_MAX = 60.0
TIMEOUT = 2.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def emitter(
    client: redis.Redis, *, max_queued: int = 100, stats: Stats | None = None
) -> OpsEmitter:
    counters = stats if stats is not None else Stats(client)
    return OpsEmitter(client, enabled=True, max_queued=max_queued, stats=counters)


@pytest.fixture
def deliverers(client: redis.Redis, clock: Clock) -> Iterator[list[OpsDeliverer]]:
    """Deliverers made by `make_deliverer`, closed after the test."""
    made: list[OpsDeliverer] = []
    yield made
    for deliverer in made:
        deliverer.close()


def make_deliverer(
    made: list[OpsDeliverer],
    client: redis.Redis,
    clock: Clock,
    url: str,
    *,
    max_queued: int = 100,
    transport: httpx.BaseTransport | None = None,
) -> OpsDeliverer:
    deliverer = OpsDeliverer(
        client,
        url=url,
        secret=OPS_SECRET,
        timeout_seconds=TIMEOUT,
        max_attempts=MAX_ATTEMPTS,
        backoff_base_seconds=1.0,
        backoff_max_seconds=BACKOFF_MAX,
        max_queued=max_queued,
        stats=Stats(client),
        transport=transport,
        clock=clock,
    )
    made.append(deliverer)
    return deliverer


def counts(client: redis.Redis) -> dict[str, float]:
    prefix = "ops_webhooks_total|outcome="
    return {k.removeprefix(prefix): v for k, v in Stats(client).read().items() if prefix in k}


def ops_keys(client: redis.Redis) -> list[bytes]:
    return sorted(client.scan_iter(match=keys.PREFIX + "ops:*"))


def test_an_event_is_delivered_signed_with_its_envelope(
    client: redis.Redis, clock: Clock, receiver: Receiver, deliverers: list[OpsDeliverer]
) -> None:
    emitter(client).emit("breaker.opened", {"window_calls": 20, "cool_down_s": 30.0})
    deliverer = make_deliverer(deliverers, client, clock, receiver.url)

    assert deliverer.deliver_due() == 1

    [delivery] = receiver.deliveries  # the receiver verified its signature to record it
    event = delivery.event
    assert delivery.headers["webhook-id"] == event["id"]
    assert event["id"].startswith("msg_")
    assert event["type"] == "breaker.opened"
    assert event["data"] == {"window_calls": 20, "cool_down_s": 30.0}
    assert event["timestamp"].endswith("Z")
    assert abs(int(delivery.headers["webhook-timestamp"]) - clock.now) < 1
    assert receiver.forged == 0
    assert ops_keys(client) == [], "a delivered event leaves nothing behind"
    assert counts(client) == {"delivered": 1}


def test_a_500_is_retried_after_a_backoff_and_delivered_once(
    client: redis.Redis, clock: Clock, receiver: Receiver, deliverers: list[OpsDeliverer]
) -> None:
    receiver.answers = [500]
    emitter(client).emit("sync.paused", {"reason": "unauthorized", "status": 401})
    deliverer = make_deliverer(deliverers, client, clock, receiver.url)

    assert deliverer.deliver_due() == 1
    assert [d.answered for d in receiver.deliveries] == [500]
    assert deliverer.deliver_due() == 0, "not due again before its backoff"

    clock.advance(BACKOFF_MAX)
    assert deliverer.deliver_due() == 1
    first, second = receiver.deliveries
    assert second.answered == 200
    assert first.headers["webhook-id"] == second.headers["webhook-id"], "receivers dedup on it"
    assert len(receiver.accepted("sync.paused")) == 1
    clock.advance(BACKOFF_MAX)
    assert deliverer.deliver_due() == 0
    assert ops_keys(client) == []
    assert counts(client) == {"retried": 1, "delivered": 1}


def test_a_receiver_down_is_retried_then_given_up(
    client: redis.Redis, clock: Clock, deliverers: list[OpsDeliverer]
) -> None:
    emitter(client).emit("sync.resumed", {})
    deliverer = make_deliverer(deliverers, client, clock, f"http://127.0.0.1:{free_port()}/")

    for attempt in range(1, MAX_ATTEMPTS):
        assert deliverer.deliver_due() == 1
        [due] = client.zrange(keys.OPS_DUE, 0, -1, withscores=True)
        event_id = due[0].decode()
        assert due[1] > clock.now, "kept, due again after a backoff"
        assert client.hget(keys.ops_event(event_id), "attempts") == str(attempt).encode()
        clock.advance(BACKOFF_MAX)

    assert deliverer.deliver_due() == 1
    assert ops_keys(client) == [], "given up after the last attempt"
    assert counts(client) == {"retried": MAX_ATTEMPTS - 1, "gave_up": 1}


def test_an_unreachable_receiver_cannot_fill_redis(
    client: redis.Redis, clock: Clock, deliverers: list[OpsDeliverer]
) -> None:
    cap = 10
    stats = Stats(client)
    emit = emitter(client, max_queued=cap, stats=stats)
    with capture_logs() as logs:
        for n in range(25):
            emit.emit("dead_letter.created", {"n": n})
    stats.flush()
    deliverer = make_deliverer(
        deliverers, client, clock, f"http://127.0.0.1:{free_port()}/", max_queued=cap
    )

    outbox = client.lrange(keys.OPS_OUTBOX, 0, -1)
    assert len(outbox) == cap
    assert b'"n": 24' in outbox[0], "the newest are kept"
    assert counts(client) == {"dropped": 15}
    assert [e["dropped"] for e in logs if e["event"] == "ops_webhooks_dropped"] == [1]

    deliverer.deliver_due()  # admits the outbox into delivery, up to the cap
    for n in range(25, 40):
        emit.emit("dead_letter.created", {"n": n})
    clock.advance(BACKOFF_MAX)
    deliverer.deliver_due()

    assert client.zcard(keys.OPS_DUE) == cap
    assert client.llen(keys.OPS_OUTBOX) == cap
    assert len(ops_keys(client)) == 2 + cap, "outbox, due set and one hash per tracked event"


def test_a_deliverer_that_crashed_mid_delivery_leaves_the_event_to_another(
    client: redis.Redis, clock: Clock, receiver: Receiver, deliverers: list[OpsDeliverer]
) -> None:
    def crash(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("killed mid-POST")

    emitter(client).emit("breaker.closed", {"probe": "succeeded"})
    crashing = make_deliverer(
        deliverers, client, clock, receiver.url, transport=httpx.MockTransport(crash)
    )
    with pytest.raises(RuntimeError):
        crashing.deliver_due()

    other = make_deliverer(deliverers, client, clock, receiver.url)
    assert other.deliver_due() == 0, "claimed: not offered again while its lease runs"
    clock.advance(4 * 10 * TIMEOUT + 6)  # past the lease
    assert other.deliver_due() == 1
    assert [e["type"] for e in receiver.accepted()] == ["breaker.closed"]


class NoCalls(redis.Redis):
    """A client that fails the test on any command."""

    def execute_command(self, *args: object, **options: object) -> None:
        raise AssertionError(f"Redis was called: {args[:1]}")

    def pipeline(self, *args: object, **options: object) -> NoReturn:
        raise AssertionError("Redis was called: pipeline")


def test_off_means_no_redis_call_at_all() -> None:
    client = NoCalls()
    OpsEmitter(client, enabled=False, max_queued=10, stats=Stats(client)).emit(
        "sync.paused", {"reason": "unauthorized"}
    )


def test_emit_logs_a_redis_error_and_does_not_raise() -> None:
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    with capture_logs() as logs:
        OpsEmitter(unreachable, enabled=True, max_queued=10, stats=Stats(unreachable)).emit(
            "dead_letter.created", {"id": "dl_1"}
        )
    [line] = [entry for entry in logs if entry["event"] == "ops_webhook_emit_failed"]
    assert line["type"] == "dead_letter.created"
