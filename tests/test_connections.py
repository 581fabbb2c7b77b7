"""Redis connections from the settings, including through a real Redis Sentinel."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Exchange, Queue

from sync_worker.celery_app import create_celery_app
from sync_worker.connections import (
    FailoverSafeSentinelTransport,
    async_redis_client,
    broker_transport_options,
    redis_client,
    sentinel_target,
)
from sync_worker.devstack.stack import find_redis_server
from sync_worker.settings import Settings
from tests.fixtures.redis_server import RedisServer, free_port
from tests.ha.topology import StallingProxy


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
        assert connection.transport_cls == "sync_worker.connections:SafeRedisTransport"
        assert not connection.ssl


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks TLS only, with a certificate for 127.0.0.1 signed by a CA of
    the test's own (its port, and the CA's file)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make the test's certificates")

    def openssl(command: str) -> None:
        subprocess.run(["openssl", *command.split()], cwd=tmp_path, check=True, capture_output=True)

    openssl("req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ca -keyout ca.key -out ca.pem")
    openssl("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr")
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509 -req -days 1 -CAcreateserial -CA ca.pem -CAkey ca.key -in server.csr "
        "-out server.pem -extfile san.cnf"
    )
    found = find_redis_server()
    assert found is not None
    port = free_port()
    options = (
        f"--port 0 --bind 127.0.0.1 --tls-port {port} --tls-cert-file server.pem "
        "--tls-key-file server.key --tls-ca-cert-file ca.pem --tls-auth-clients no"
    )
    process = subprocess.Popen(
        [found.path, *options.split(), "--save", ""],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(
        host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(tmp_path / "ca.pem")
    )
    deadline = time.monotonic() + 10
    try:
        while True:
            if process.poll() is not None:
                pytest.skip("this redis-server was built without TLS")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield port, tmp_path / "ca.pem"
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_rediss_url_speaks_tls_and_checks_the_certificate(
    tls_redis: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu turns TLS on from the `rediss` scheme only under its own transport's name, and
    then checks no certificate; ours asks for TLS, and the broker checks the certificate as
    our own clients do: trusted, both talk to the server; not trusted, both are refused."""
    port, ca = tls_redis
    settings = Settings(redis_url=f"rediss://127.0.0.1:{port}/0")
    app = create_celery_app(settings)

    def broker_ping() -> bool:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=0)  # refused at once, not retried
            return bool(connection.default_channel.client.ping())

    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        redis_client(settings).ping()
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):  # kombu's own error type
        broker_ping()
    # OpenSSL reads the trusted certificates' file from here when a context loads its defaults.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    assert redis_client(settings).ping()
    assert broker_ping()


def outcome_within(seconds: float, call: Callable[[], Any]) -> BaseException | Any:
    """What `call` returned or raised, run in a thread; pytest.fail if it is still running
    after `seconds` (the thread is a daemon, left blocked)."""
    result: list[BaseException | Any] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as error:  # noqa: BLE001 - the test judges what was raised
            result.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still blocked after {seconds} s")
    return result[0]


def test_the_worker_fanout_read_fails_after_a_redis_restart_rather_than_wait_forever(
    tmp_path: Path,
) -> None:
    """Celery's consumer reads its fan-out queues (remote control, gossip) from kombu's pub/sub
    connection, inside the event loop that also receives the sync tasks. With redis-py's retry
    on that connection, a Redis restarted by the time the read came reconnected it unsubscribed
    and read from it forever: the worker stayed alive and connected and never received another
    task. The read must fail instead, so that Celery reconnects and subscribes again."""
    server = RedisServer.on_free_port(tmp_path)
    app = create_celery_app(Settings(redis_url=server.url))
    try:
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            Queue("probe", Exchange("probe", type="fanout"), channel=channel).declare()
            channel.basic_consume("probe", True, lambda message: None, "probe")
            # What the worker's event loop does with a fan-out queue: subscribe, then read
            # whenever the socket is readable (here: the subscription's confirmation).
            channel.connection.cycle._register_LISTEN(channel)
            assert outcome_within(10, channel._receive) is False

            server.restart(kill=True)

            raised = outcome_within(10, channel._receive)
            assert isinstance(raised, connection.connection_errors), raised
    finally:
        server.stop(kill=True)


@pytest.mark.parametrize("through", ["url", "sentinel"])
def test_an_ack_refused_by_a_demoted_broker_frees_its_slot(
    request: pytest.FixtureRequest, redis_server: RedisServer, through: str
) -> None:
    """A worker's ack answered `READONLY` (its Redis demoted to a replica, by a failover or by
    hand) is logged and frees the message's prefetch slot, whether the broker is reached by URL
    or through the sentinels. Behind Sentinel, redis-py's connection turned `READONLY` into a
    plain ConnectionError first, which kept the slot: with every slot so kept, the consumer
    took no task until the watchdog restarted it."""
    if through == "sentinel":
        port = request.getfixturevalue("sentinel")
        url = f"sentinel://127.0.0.1:{port}/0"
    else:
        url = redis_server.url
    app = create_celery_app(Settings(redis_url=url, redis_sentinel_master="testmaster"))
    queue = Queue("demoted", Exchange("demoted"), routing_key="demoted")
    admin = redis.Redis(port=redis_server.port)
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        channel.basic_qos(prefetch_count=1)
        connection.Producer(channel).publish(
            {"n": 1}, exchange=queue.exchange, routing_key="demoted", declare=[queue]
        )
        message = queue(channel).get(no_ack=False)
        assert message is not None
        assert not channel.qos.can_consume()
        admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        try:
            message.ack()
        finally:
            admin.execute_command("REPLICAOF", "NO", "ONE")
        assert channel.qos.can_consume(), "the refused ack freed its slot"


def test_our_clients_follow_a_plain_url_to_the_new_primary_after_a_failover(
    tmp_path: Path,
) -> None:
    """A managed Redis fails over by moving its address to the new primary and demoting the
    old one, under the connections already open to it. Our clients (the web's asyncio one, the
    worker's) kept their pooled connections to the old primary, and every write was refused
    `READONLY` until the process was restarted. Now the refused call is retried on a new
    connection, which the address leads to the new primary."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, new = (RedisServer.on_free_port(tmp_path / name) for name in ("old", "new"))
    address = StallingProxy(old.port)  # the managed Redis's one address
    settings = Settings(redis_url=f"redis://127.0.0.1:{address.port}/0")
    client = redis_client(settings)

    async def write_across_the_failover() -> None:
        web = async_redis_client(settings)
        try:
            await web.set("web", "before")
            client.set("worker", "before")
            address.upstream_port = new.port
            redis.Redis(port=old.port).replicaof("127.0.0.1", new.port)
            await web.set("web", "after")
            client.set("worker", "after")
        finally:
            await web.aclose()

    try:
        asyncio.run(write_across_the_failover())
        assert redis.Redis(port=new.port).mget("web", "worker") == [b"after", b"after"]
    finally:
        client.close()
        address.close()
        old.stop(kill=True)
        new.stop(kill=True)
