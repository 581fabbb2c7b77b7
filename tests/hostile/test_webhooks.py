"""Hostile deliveries against the real web process: each is refused with the contract's code,
leaves nothing in Redis and never reaches Recur, and none makes the server fail (no 5xx)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from sync_worker import redis_keys as keys
from sync_worker.pipeline.ledger import Ledger
from sync_worker.settings import MAX_BODY_BYTES
from tests.fixtures.stack import WEBHOOK_SECRET, Stack, user_event, wait_for
from tests.hostile.conftest import nothing_reached_recur

URL_PATH = "/webhooks/user-updated"
HEADER_TEXT = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
"""What a header value may hold (HTTP clients refuse to send the rest)."""
HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def post_raw(stack: Stack, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(stack.web_url + URL_PATH, content=body, headers=headers, timeout=15)


def sign_bytes(body: bytes, msg_id: str) -> dict[str, str]:
    """Standard Webhooks headers for any bytes (the package signs only text), computed here
    from the spec rather than by our own signer."""
    timestamp = str(int(time.time()))
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        "content-type": "application/json",
    }


def signed(stack: Stack, body: bytes, msg_id: str = "msg_hostile") -> httpx.Response:
    return post_raw(stack, body, sign_bytes(body, msg_id))


def envelope(**data: Any) -> dict[str, Any]:
    return user_event("evt_hostile", **data)


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


# -- signatures ------------------------------------------------------------------------------


def _without(name: str) -> Any:
    return lambda h: {k: v for k, v in h.items() if k != name}


def _forged(headers: dict[str, str]) -> dict[str, str]:
    other = "whsec_" + base64.b64encode(b"an attacker's own secret, 32 b!!").decode()
    ts = headers["webhook-timestamp"]
    body = json.dumps(envelope(user_id="user_1", name="x")).encode()
    signature = Webhook(other).sign(
        headers["webhook-id"], datetime.fromtimestamp(int(ts), tz=UTC), body.decode()
    )
    return {**headers, "webhook-signature": signature}


@pytest.mark.parametrize(
    ("mutate", "check"),
    [
        pytest.param(_without("webhook-signature"), "missing_headers", id="no-signature"),
        pytest.param(_without("webhook-id"), "missing_headers", id="no-id"),
        pytest.param(_without("webhook-timestamp"), "missing_headers", id="no-timestamp"),
        pytest.param(
            lambda h: {**h, "webhook-signature": ""}, "missing_headers", id="empty-signature"
        ),
        pytest.param(_forged, "bad_signature", id="signed-with-another-secret"),
        pytest.param(lambda h: {**h, "webhook-signature": "v1,"}, "bad_signature", id="v1-empty"),
        pytest.param(
            lambda h: {**h, "webhook-signature": h["webhook-signature"].replace("v1,", "v2,")},
            "bad_signature",
            id="unknown-version",
        ),
        pytest.param(
            lambda h: {**h, "webhook-signature": h["webhook-signature"][:-4] + "AAA="},
            "bad_signature",
            id="tampered",
        ),
        pytest.param(
            lambda h: {**h, "webhook-signature": "v1,%%%not base64"},
            "bad_signature",
            id="not-base64",
        ),
        pytest.param(
            lambda h: {**h, "webhook-timestamp": "1e9"}, "invalid_timestamp", id="timestamp-not-int"
        ),
        pytest.param(
            lambda h: {**h, "webhook-timestamp": "9" * 40}, "invalid_timestamp", id="timestamp-huge"
        ),
        pytest.param(
            lambda h: {**h, "webhook-timestamp": "-1"}, "invalid_timestamp", id="timestamp-negative"
        ),
        pytest.param(
            lambda h: {**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) - 3600)},
            "stale_timestamp",
            id="timestamp-an-hour-old",
        ),
    ],
)
def test_missing_or_forged_signature_is_401_naming_the_check(
    web: Stack, mutate: Any, check: str
) -> None:
    body = body_of(envelope(user_id="user_1", name="x"))
    headers = web.sign(body, msg_id="evt_hostile")
    response = post_raw(web, body, mutate(headers))
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == check
    assert error["message"]
    # Nothing the secret could be recovered from: no expected signature, no key material.
    assert WEBHOOK_SECRET.removeprefix("whsec_") not in response.text
    assert headers["webhook-signature"].removeprefix("v1,") not in response.text
    nothing_reached_recur(web)


@pytest.mark.parametrize("offset", [-301 - 60, 301 + 60], ids=["too-old", "too-far-ahead"])
def test_timestamp_outside_five_minutes_is_401(web: Stack, offset: int) -> None:
    body = body_of(envelope(user_id="user_1", name="x"))
    headers = web.sign(body, msg_id="evt_hostile", at=int(time.time()) + offset)
    response = post_raw(web, body, headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "stale_timestamp"
    nothing_reached_recur(web)


def test_replayed_delivery_is_a_duplicate_but_its_signature_fits_no_other_body(
    web: Stack,
) -> None:
    web.sandbox.control.create_customer("u1@x.tw", name="old", external_id="user_1")
    body = body_of(envelope(user_id="user_1", name="genuine"))
    headers = web.sign(body, msg_id="evt_hostile")
    assert post_raw(web, body, headers).status_code == 202
    replay = post_raw(web, body, headers)  # the very same bytes, replayed
    assert replay.status_code == 200
    assert replay.json()["status"] == "duplicate"
    tampered = body_of(envelope(user_id="user_1", name="attacker"))
    assert post_raw(web, tampered, headers).status_code == 401
    client = web.redis

    def settled() -> bool:
        # Applied (in the ledger) and nothing left to send: no further PATCH can go out.
        return (
            (applied := Ledger(client).get("user_1")) is not None
            and applied.fields["name"].value == "genuine"
            and not client.exists(keys.pending("user_1"))
            and client.zscore(keys.DUE, "user_1") is None
            and client.zscore(keys.INFLIGHT, "user_1") is None
        )

    wait_for(settled, timeout=30)
    patches = web.sandbox.control.requests(method="PATCH")
    assert [p["body"] for p in patches] == [{"name": "genuine"}]


def test_an_attacker_sized_webhook_id_is_truncated_in_the_log(web: Stack) -> None:
    body = body_of(envelope(user_id="user_1", name="x"))
    marker = "evt_huge_" + "Q" * 7000
    headers = {**web.sign(body, msg_id="evt_hostile"), "webhook-id": marker}
    assert post_raw(web, body, headers).status_code == 401
    web_log = next(proc for proc in web.processes if proc.name == "web")

    def refused_lines() -> list[str]:
        return [line for line in web_log.log().splitlines() if "evt_huge_" in line]

    lines = wait_for(refused_lines, timeout=10)
    assert all(len(line) < 1000 for line in lines), [len(line) for line in lines]
    assert "Q" * 200 not in web_log.log()


@pytest.mark.parametrize(
    ("timestamp", "says"),
    [
        ("2099-01-01T00:00:00Z", "ahead of the server's clock"),
        (lambda: datetime.fromtimestamp(time.time() + 400, tz=UTC).isoformat(), "ahead"),
        (lambda: datetime.now(tz=UTC).replace(tzinfo=None).isoformat(), "time zone"),
    ],
    ids=["year-2099", "400-s-ahead", "no-time-zone"],
)
def test_an_event_time_far_ahead_or_without_a_zone_is_422_naming_timestamp(
    web: Stack, timestamp: Any, says: str
) -> None:
    stamp = timestamp() if callable(timestamp) else timestamp
    response = web.post(user_event("evt_future", "user_1", at=stamp, name="x"))
    assert response.status_code == 422, response.text
    fields = response.json()["error"]["fields"]
    assert [f["field"] for f in fields] == ["timestamp"]
    assert says in fields[0]["message"]
    nothing_reached_recur(web)
    assert not web.redis.exists(keys.event_seen("evt_future"))


def test_an_event_time_within_the_tolerance_ahead_is_accepted(web: Stack) -> None:
    stamp = datetime.fromtimestamp(time.time() + 120, tz=UTC).isoformat()
    assert web.post(user_event("evt_soon", "user_1", at=stamp, name="x")).status_code == 202


@pytest.mark.parametrize(
    "number",
    ["1" * 5000, "-" + "9" * 10_000, "1e400", "-1e400"],
    ids=["5000", "-10000", "1e400", "-1e400"],
)
def test_a_huge_number_in_a_signed_event_is_4xx_never_5xx(web: Stack, number: str) -> None:
    template = body_of(envelope(user_id="user_1", name="x", metadata={"n": 0}))
    for body in (
        template.replace(b'"n": 0', b'"n": ' + number.encode()),
        b'{"userId": "user_1", "name": "x", "metadata": {"n": %s}}' % number.encode(),
    ):
        response = signed(web, body, msg_id="evt_hostile")
        assert response.status_code == 422, response.text
        assert response.json()["error"]["fields"] == [
            {"field": "body", "message": "holds a number too large to represent"}
        ]
    nothing_reached_recur(web)
    assert httpx.get(web.web_url + "/healthz", timeout=5).status_code == 200


@HYPOTHESIS
@given(signature=st.text(HEADER_TEXT, max_size=300), timestamp=st.text(HEADER_TEXT, max_size=40))
def test_any_signature_header_is_refused_without_a_5xx(
    web: Stack, signature: str, timestamp: str
) -> None:
    body = body_of(envelope(user_id="user_1", name="x"))
    headers = {
        "webhook-id": "evt_hostile",
        "webhook-timestamp": timestamp.strip() or "0",
        "webhook-signature": signature.strip() or "v1,x",
        "content-type": "application/json",
    }
    assert post_raw(web, body, headers).status_code == 401


# -- bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"\xff\xfe\x00{}",
        b'{"id": "evt_1", "type": "user.updated", NaN}',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"\x00" * 100,
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    ],
    ids=[
        "empty",
        "truncated",
        "not-utf8",
        "bad-syntax",
        "nan",
        "infinity",
        "nul-bytes",
        "10000-nested-arrays",
        "10000-nested-objects",
    ],
)
def test_body_that_is_not_json_is_400(web: Stack, body: bytes) -> None:
    response = signed(web, body)
    assert response.status_code == 400
    nothing_reached_recur(web)
    assert httpx.get(web.web_url + "/healthz", timeout=5).status_code == 200


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_metadata_too_deep_is_422(web: Stack) -> None:
    response = web.post(envelope(user_id="user_1", metadata=_nested(6)))
    assert response.status_code == 422
    assert "data.metadata" in [f["field"] for f in response.json()["error"]["fields"]]
    nothing_reached_recur(web)


@pytest.mark.parametrize("depth", [100, 500, 900])
def test_metadata_far_too_deep_is_refused_not_a_crash(web: Stack, depth: int) -> None:
    response = web.post(envelope(user_id="user_1", metadata=_nested(depth)))
    assert response.status_code in (400, 422)
    nothing_reached_recur(web)
    assert httpx.get(web.web_url + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"id": "evt_1", "type": "user.updated", "timestamp": "now", "data": {}}, "timestamp"),
        ({"id": 7, "type": "user.updated", "timestamp": "2026-11-24T10:00:00Z"}, "id"),
        ({"id": "evt_1", "type": "user.deleted", "timestamp": "2026-11-24T10:00:00Z"}, "type"),
        ({**envelope(user_id="u1", name="x"), "data": ["user_1"]}, "data"),
        (envelope(user_id=123, name="x"), "data.user_id"),
        (envelope(user_id=None, name="x"), "data.user_id"),
        (envelope(user_id="user_1", name=["x"]), "data.name"),
        (envelope(user_id="user_1", name=True), "data.name"),
        (envelope(user_id="user_1", metadata="plan=pro"), "data.metadata"),
        (envelope(user_id="user_1", metadata=[1, 2]), "data.metadata"),
        (envelope(user_id="user_1", name="x", email=["a@b.tw"]), "data.email"),
        ({"id": "evt 1", "type": "user.updated", "timestamp": "2026-11-24T10:00:00Z"}, "id"),
        ({"userId": 5, "name": "x"}, "userId"),
        ({"userId": "user_1"}, "body"),
    ],
)
def test_wrong_types_are_422_naming_the_field(
    web: Stack, payload: dict[str, Any], field: str
) -> None:
    response = signed(web, body_of(payload))
    assert response.status_code == 422
    assert field in [f["field"] for f in response.json()["error"]["fields"]]
    nothing_reached_recur(web)


@pytest.mark.parametrize("body", [b"null", b"[]", b'"user_1"', b"42", b"true"])
def test_json_that_is_not_an_object_is_422(web: Stack, body: bytes) -> None:
    assert signed(web, body).status_code == 422
    nothing_reached_recur(web)


def test_metadata_over_64_kib_is_413(web: Stack) -> None:
    metadata = {f"k{i}": "v" * 60 for i in range(2000)}
    assert web.post(envelope(user_id="user_1", metadata=metadata)).status_code == 413
    nothing_reached_recur(web)


def test_many_keys_under_the_limit_are_accepted(web: Stack) -> None:
    metadata = {f"k{i}": i for i in range(3000)}
    body = body_of(envelope(user_id="user_1", metadata=metadata))
    assert len(body) < MAX_BODY_BYTES
    assert signed(web, body, msg_id="evt_hostile").status_code == 202


def _raw_request(stack: Stack, head: str) -> socket.socket:
    parts = urlsplit(stack.web_url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)
    sock.sendall(head.encode())
    return sock


def _status_line(sock: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def test_declared_10_mb_is_413_before_the_body_is_sent(web: Stack) -> None:
    headers = web.sign(b"{}", msg_id="evt_big")
    head = (
        f"POST {URL_PATH} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k != "content-type")
        + f"Content-Length: {10 * 1024 * 1024}\r\n\r\n"
    )
    sock = _raw_request(web, head)
    try:
        sock.sendall(b'{"id": ')  # a trickle of the 10 MB it promised, then nothing
        started = time.monotonic()
        status = _status_line(sock)
        assert " 413 " in status + " ", status
        assert time.monotonic() - started < 5
    finally:
        sock.close()
    nothing_reached_recur(web)


def test_streamed_body_is_cut_off_past_64_kib(web: Stack) -> None:
    headers = web.sign(b"{}", msg_id="evt_stream")
    head = (
        f"POST {URL_PATH} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k != "content-type")
        + "Transfer-Encoding: chunked\r\n\r\n"
    )
    sock = _raw_request(web, head)
    chunk = b"x" * 8192
    sent = 0
    answer = ""
    try:
        sock.settimeout(0.05)
        while sent < 10 * 1024 * 1024:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
            try:
                answer = sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            if answer:
                break
        sock.settimeout(10)
        if not answer:
            answer = _status_line(sock)
    finally:
        sock.close()
    assert " 413 " in answer.split("\r\n", 1)[0] + " ", answer[:200]
    assert sent < 2 * 1024 * 1024, f"the server read {sent} bytes before refusing"
    nothing_reached_recur(web)


@HYPOTHESIS
@given(body=st.binary(max_size=2048))
def test_random_bytes_with_a_valid_signature_never_get_a_5xx(web: Stack, body: bytes) -> None:
    response = signed(web, body)
    assert response.status_code in (400, 422)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@HYPOTHESIS
@given(
    data=st.dictionaries(
        st.sampled_from(["user_id", "name", "email", "metadata", "new_user_id", "userId"]),
        JSON_VALUES,
    ),
    kind=st.sampled_from(["user.updated", "user.external_id_changed"]),
)
def test_random_event_data_never_gets_a_5xx(web: Stack, data: dict[str, Any], kind: str) -> None:
    payload = {"id": "evt_h", "type": kind, "timestamp": "2026-11-24T10:00:00Z", "data": data}
    response = signed(web, body_of(payload), msg_id="evt_h")
    assert response.status_code in (200, 202, 422), response.text


# -- names and user ids ----------------------------------------------------------------------


CJK_255 = "王" * 255
EMOJI_255_UNITS = "😀" * 127 + "a"  # an emoji is 2 UTF-16 units: 127 * 2 + 1 = 255


@pytest.mark.parametrize(
    "name",
    [
        "王" * 256,
        "😀" * 128,  # 128 characters, 256 UTF-16 units: over, as Recur counts
        "x" * 256,
        "",
        "tab\there",
        "new\nline",
        "nul\x00",
        "bell\x07",
        "del\x7f",
        "esc\x1b[31m",
    ],
    ids=[
        "256-cjk",
        "128-emoji",
        "256-ascii",
        "empty",
        "tab",
        "newline",
        "nul",
        "bell",
        "del",
        "ansi",
    ],
)
def test_bad_names_are_422(web: Stack, name: str) -> None:
    response = web.post(envelope(user_id="user_1", name=name))
    assert response.status_code == 422
    assert "data.name" in [f["field"] for f in response.json()["error"]["fields"]]
    nothing_reached_recur(web)


def test_lone_surrogate_is_422(web: Stack) -> None:
    body = b'{"id": "evt_s", "type": "user.updated", "timestamp": "2026-11-24T10:00:00Z",'
    body += b' "data": {"user_id": "user_1", "name": "\\ud800"}}'
    assert signed(web, body, msg_id="evt_s").status_code == 422
    nothing_reached_recur(web)


def test_names_at_255_utf16_units_reach_recur_intact(web: Stack) -> None:
    names = {"user_cjk": CJK_255, "user_emoji": EMOJI_255_UNITS, "user_mixed": "é" * 200 + "ŉ"}
    for user in names:
        web.sandbox.control.create_customer(f"{user}@x.tw", name="old", external_id=user)
    for n, (user, name) in enumerate(names.items()):
        assert web.post(user_event(f"evt_u{n}", user, name=name)).status_code == 202

    def synced() -> bool:
        control = web.sandbox.control
        return all(
            (control.customer_by_external_id(u) or {}).get("name") == v for u, v in names.items()
        )

    wait_for(synced, timeout=30)
    assert {p["status"] for p in web.sandbox.control.requests(method="PATCH")} == {200}


HOSTILE_IDS = [
    "../etc/passwd",
    "..",
    ".",
    "a/b",
    "a%2Fb",
    "%2e%2e%2f",
    "user_1?expand=all",
    "user_1#frag",
    "user_1&x=1",
    "user 1",
    "user_1\n",
    "\nuser_1",
    "user_1\x00",
    "ｕｓｅｒ＿１",  # fullwidth lookalikes
    "usеr_1",  # Cyrillic е
    "user_1\u200b",  # zero-width space
    "user\u2215 1",  # division slash
    "ユーザー",
    "",
    "a" * 256,
    "https://evil.example/x",
    "user_1;DROP",
]


@pytest.mark.parametrize("user_id", HOSTILE_IDS)
def test_user_ids_with_path_or_url_tricks_are_422(web: Stack, user_id: str) -> None:
    response = web.post(envelope(user_id=user_id, name="x"))
    assert response.status_code == 422
    assert "data.user_id" in [f["field"] for f in response.json()["error"]["fields"]]
    bare = json.dumps({"userId": user_id, "name": "x"}).encode()
    assert signed(web, bare, msg_id="msg_bare").status_code == 422
    rebind = {
        "id": "evt_rebind",
        "type": "user.external_id_changed",
        "timestamp": "2026-11-24T10:00:00Z",
        "data": {"user_id": "user_1", "new_user_id": user_id},
    }
    assert web.post(rebind).status_code == 422
    nothing_reached_recur(web)


@pytest.mark.parametrize("msg_id", ["evt 1", "evt\t1", "évt_1", "x" * 256])
def test_webhook_ids_outside_printable_ascii_are_refused(web: Stack, msg_id: str) -> None:
    body = json.dumps({"userId": "user_1", "name": "x"}).encode()
    now = datetime.now(tz=UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(WEBHOOK_SECRET).sign(msg_id, now, body.decode()),
        "content-type": "application/json",
    }
    try:
        response = post_raw(web, body, headers)
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return  # not even sendable as a header
    assert response.status_code in (401, 422)
    nothing_reached_recur(web)
