"""Per-thread httpx clients are bounded: threads that come and go (a reconciliation's page
thread, the web's thread pool) leave no client and no open socket behind. Over real HTTP to
the sandbox."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sync_worker.recur.client import RecurClient
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import wait_for

ROUNDS = 5
THREADS = 20


def open_sockets() -> int:
    """Sockets this process holds open now."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in os.listdir(fds):
        try:
            count += os.readlink(fds / fd).startswith("socket:")
        except OSError:
            continue  # closed between the listing and the read
    return count


def test_clients_of_ended_threads_are_closed(sandbox: SandboxHandle) -> None:
    client = RecurClient(base_url=sandbox.url, secret_key=sandbox.secret_key)
    before = open_sockets()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.list_customers(limit=1)
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            errors.append(error)

    try:
        for _ in range(ROUNDS):
            threads = [threading.Thread(target=call) for _ in range(THREADS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
        # Each ended thread's client was closed with its slot: not one kept-alive socket per
        # thread that made a call (ROUNDS * THREADS of them), and no client piles up.
        wait_for(lambda: open_sockets() - before <= 2, timeout=10)
        assert client.live_clients == 0

        call()  # a thread that lives on keeps its one client
        assert client.live_clients == 1
    finally:
        client.close()
    assert client.live_clients == 0


def test_a_threads_first_call_takes_its_token_once_its_client_is_built(
    sandbox: SandboxHandle,
) -> None:
    """Building a thread's client is the slow part of its first call (a cold start has many at
    once): the rate-limit token is taken after it, as the request leaves, so that tokens
    granted apart are not spent together later."""
    clients_when_throttled: list[int] = []
    client = RecurClient(
        base_url=sandbox.url,
        secret_key=sandbox.secret_key,
        throttle=lambda: clients_when_throttled.append(client.live_clients),
    )
    try:
        client.list_customers(limit=1)
        client.list_customers(limit=1)
    finally:
        client.close()
    assert clients_when_throttled == [1, 1]
