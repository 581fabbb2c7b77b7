"""Floods and guessing against the real `sync-worker web`: every route refuses an oversized or
unauthenticated request before reading its body, so the process's memory stays flat whatever is
sent; failed admin logins are throttled per client address, across web processes."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from sync_worker.web import auth
from tests.fixtures.redis_server import free_port
from tests.fixtures.stack import ADMIN_TOKEN, Proc, Stack, wait_for
from tests.hostile.conftest import nothing_reached_recur

MIB = 1024 * 1024
FLOOD = 300 * MIB
RSS_GROWTH_LIMIT = 30 * MIB
"""Far below one flood: a buffered 300 MiB body grew the process by 1.8 GiB."""
CHUNK = b"x" * (256 * 1024)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def web_process(stack: Stack) -> Proc:
    return next(proc for proc in stack.processes if proc.name == "web")


def flood(base_url: str, method: str, path: str, headers: dict[str, str], framing: str) -> str:
    """Send up to FLOOD bytes of body; return the status line the server answered with.

    framing: `chunked`, `declared` (an honest Content-Length of FLOOD) or `lying` (a
    Content-Length of 1,000, then FLOOD bytes anyway).
    """
    parts = urlsplit(base_url)
    length = {"declared": str(FLOOD), "lying": "1000"}.get(framing)
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    head += "Transfer-Encoding: chunked\r\n" if length is None else f"Content-Length: {length}\r\n"
    frame = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if length is None else CHUNK
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall((head + "\r\n").encode())
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            while sent < FLOOD:
                sock.sendall(frame)
                sent += len(CHUNK)
            if length is None:
                sock.sendall(b"0\r\n\r\n")
        sock.settimeout(10)
        answer = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while b"\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
    return answer.split(b"\r\n", 1)[0].decode(errors="replace")


FLOODS = [
    # (method, path, headers, statuses that refuse it)
    ("POST", "/admin/api/dead-letters/replay", {"content-type": "application/json"}, {401, 413}),
    (
        "POST",
        "/admin/api/dead-letters/replay",
        {"content-type": "application/json", "authorization": "Bearer wrong-token-0123456789"},
        {401, 413},
    ),
    ("POST", "/webhooks/user-updated", {"content-type": "application/json"}, {401, 413}),
    ("POST", "/admin/login", {"content-type": "application/x-www-form-urlencoded"}, {401, 413}),
    (
        "POST",
        "/admin/actions/replay-all",
        {"content-type": "application/x-www-form-urlencoded"},
        {303, 413},
    ),
    ("POST", "/healthz", {"content-type": "application/json"}, {405, 413}),
]


def test_floods_are_refused_before_their_body_and_memory_stays_flat(web: Stack) -> None:
    pid = web_process(web).process.pid
    # Warm up every route once, so first-use allocations are not counted as growth.
    for method, path, headers, _ in FLOODS:
        httpx.request(method, web.web_url + path, headers=headers, content=b"{}", timeout=10)
    baseline = rss_bytes(pid)
    peak = baseline
    answers = []
    for method, path, headers, refusals in FLOODS:
        for framing in ("chunked", "declared", "lying"):
            status = flood(web.web_url, method, path, headers, framing)
            peak = max(peak, rss_bytes(pid))
            answers.append((path, framing, status))
            code = int(status.split()[1]) if status.startswith("HTTP/1.1 ") else None
            # A lying Content-Length of 1,000 is a small, complete body: refused as what it is.
            assert code in refusals | ({400, 422} if framing == "lying" else set()), answers
    assert peak - baseline < RSS_GROWTH_LIMIT, (peak - baseline) // MIB
    assert httpx.get(web.web_url + "/healthz", timeout=10).status_code == 200
    nothing_reached_recur(web)


def test_an_authorised_admin_body_over_its_cap_is_413_without_being_read(web: Stack) -> None:
    pid = web_process(web).process.pid
    headers = {"content-type": "application/json", "authorization": f"Bearer {ADMIN_TOKEN}"}
    baseline = rss_bytes(pid)
    for framing in ("chunked", "declared"):
        status = flood(web.web_url, "POST", "/admin/api/dead-letters/replay", headers, framing)
        assert status.startswith("HTTP/1.1 413 "), status
    assert rss_bytes(pid) - baseline < RSS_GROWTH_LIMIT
    # Within the cap the route works as before.
    ok = httpx.post(
        web.web_url + "/admin/api/dead-letters/replay",
        json={"all": True, "dry_run": True},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert ok.status_code == 200, ok.text


def test_an_intake_body_over_64_kib_is_413_with_the_contract_body(web: Stack) -> None:
    body = b'{"userId": "user_1", "name": "' + b"x" * (64 * 1024) + b'"}'
    headers = {**web.sign(body, msg_id="evt_big"), "content-type": "application/json"}
    response = httpx.post(web.web_url + "/webhooks/user-updated", content=body, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    nothing_reached_recur(web)


@contextlib.contextmanager
def more_webs(stack: Stack, names: list[str], env: dict[str, str]) -> Iterator[list[str]]:
    """More `sync-worker web` processes beside the module's, with extra settings; their URLs."""
    procs = []
    urls = []
    for name in names:
        port = free_port()
        procs.append(stack.spawn(name, "web", "--port", str(port), env=env))
        urls.append(f"http://127.0.0.1:{port}")

    def up(url: str) -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        for url in urls:
            wait_for(lambda url=url: up(url), timeout=30)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            stack.processes.remove(proc)


@pytest.fixture
def two_throttled_webs(web: Stack) -> Iterator[tuple[str, str]]:
    """Two more web processes on the same Redis with the default throttle (10 a minute)."""
    with more_webs(web, ["web-a", "web-b"], {"ADMIN_LOGIN_FAILURES_PER_MINUTE": "10"}) as urls:
        yield urls[0], urls[1]


def test_failed_logins_are_throttled_per_address_across_web_processes(
    two_throttled_webs: tuple[str, str],
) -> None:
    first, second = two_throttled_webs
    attacker = {"x-forwarded-for": "203.0.113.7", "authorization": "Bearer guess-0123456789abc"}
    statuses = []
    for attempt in range(10):  # five on each web: one count in Redis for both
        url = first if attempt % 2 else second
        statuses.append(httpx.get(url + "/admin/api/status", headers=attacker).status_code)
    assert statuses == [401] * 10
    throttled = httpx.get(first + "/admin/api/status", headers=attacker)
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert throttled.json()["error"]["code"] == "too_many_attempts"
    # Even the right token is refused from that address now: a guess learns nothing.
    right_from_attacker = {**attacker, "authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.get(second + "/admin/api/status", headers=right_from_attacker).status_code == 429
    # The dashboard login from that address is throttled too.
    login = httpx.post(
        first + "/admin/login", data={"token": "guess"}, headers={"x-forwarded-for": "203.0.113.7"}
    )
    assert login.status_code == 429
    # Another address is not affected.
    operator = {"x-forwarded-for": "198.51.100.2", "authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.get(first + "/admin/api/status", headers=operator).status_code == 200


def test_failed_dashboard_logins_count_as_well(two_throttled_webs: tuple[str, str]) -> None:
    first, second = two_throttled_webs
    address = {"x-forwarded-for": "203.0.113.9"}
    for attempt in range(10):
        url = first if attempt % 2 else second
        wrong = httpx.post(url + "/admin/login", data={"token": "guess"}, headers=address)
        assert wrong.status_code == 401
    right = httpx.post(first + "/admin/login", data={"token": ADMIN_TOKEN}, headers=address)
    assert right.status_code == 429
    assert auth.SESSION_COOKIE not in right.cookies


def test_oversized_intake_bodies_are_counted_once_each(web: Stack) -> None:
    # A web of its own on a Redis database of its own: no other process adds to its counters.
    alone = {"REDIS_URL": web.redis_server.url.rsplit("/", 1)[0] + "/1"}
    with more_webs(web, ["web-counted"], alone) as [url]:
        headers = {"content-type": "application/json"}
        for framing in ("declared", "chunked"):
            status = flood(url, "POST", "/webhooks/user-updated", headers, framing)
            assert status.startswith("HTTP/1.1 413 "), status
        wait_for(lambda: intake_counters(url)[1] >= 2, timeout=15)
        assert intake_counters(url) == (2.0, 2.0)


def intake_counters(url: str) -> tuple[float, float]:
    """(events received, events refused as too large) from a web's /metrics."""
    values = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return (
        values.get("recur_sync_events_received_total", 0.0),
        values.get('recur_sync_events_rejected_total{reason="too_large"}', 0.0),
    )
