"""Standard Webhooks signatures, checked against the independent `standardwebhooks` package."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook

from sync_worker.intake.signatures import SignatureError, secret_bytes, sign, verify

SECRET = "whsec_" + base64.b64encode(b"recur-sync test secret, 32 bytes").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another secret of thirty-two by.").decode()
NOW = 1_795_514_400
TOLERANCE = 300
BODY = '{"userId":"user_123","name":"王大明","email":"a@b.tw"}'
MSG_ID = "msg_2Xy0"


def their_signature(
    secret: str = SECRET, *, msg_id: str = MSG_ID, timestamp: int = NOW, body: str = BODY
) -> str:
    signature: str = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)
    return signature


def check(
    signature: str | None,
    *,
    body: bytes = BODY.encode(),
    msg_id: str | None = MSG_ID,
    timestamp: str | None = str(NOW),
    now: float = NOW,
    key: bytes | None = None,
) -> int:
    return verify(
        key if key is not None else secret_bytes(SECRET),
        msg_id=msg_id,
        timestamp=timestamp,
        signature=signature,
        body=body,
        now=now,
        tolerance_seconds=TOLERANCE,
    )


def test_a_valid_signature() -> None:
    assert check(their_signature()) == NOW


def test_rotation_one_of_several_signatures_is_enough() -> None:
    old, new = their_signature(OTHER_SECRET), their_signature(SECRET)
    assert check(f"{old} {new}") == NOW
    assert check(f"{new} {old}") == NOW
    assert check(f"v1a,{new.removeprefix('v1,')} {new}") == NOW


def test_a_wrong_secret() -> None:
    with pytest.raises(SignatureError, match="no v1 signature matches") as caught:
        check(their_signature(OTHER_SECRET))
    assert caught.value.code == "bad_signature"


def test_a_tampered_body() -> None:
    signature = their_signature()
    with pytest.raises(SignatureError):
        check(signature, body=BODY.replace("王大明", "王小明").encode())
    with pytest.raises(SignatureError):
        check(signature, body=BODY.encode() + b" ")


def test_the_id_and_timestamp_are_signed_too() -> None:
    with pytest.raises(SignatureError):
        check(their_signature(msg_id="msg_other"))
    with pytest.raises(SignatureError):
        check(their_signature(timestamp=NOW - 1))


@pytest.mark.parametrize(
    "missing",
    [
        {"msg_id": None},
        {"timestamp": None},
        {"signature": None},
        {"msg_id": ""},
        {"timestamp": ""},
        {"signature": ""},
    ],
    ids=str,
)
def test_missing_headers(missing: dict[str, None]) -> None:
    arguments: dict[str, str | None] = {
        "msg_id": MSG_ID,
        "timestamp": str(NOW),
        "signature": their_signature(),
        **missing,
    }
    with pytest.raises(SignatureError, match="missing header") as caught:
        verify(
            secret_bytes(SECRET),
            body=BODY.encode(),
            now=NOW,
            tolerance_seconds=TOLERANCE,
            **arguments,
        )
    assert caught.value.code == "missing_headers"
    header = {"msg_id": "webhook-id", "timestamp": "webhook-timestamp"}.get(
        next(iter(missing)), "webhook-signature"
    )
    assert str(caught.value) == f"missing header: {header}"


@pytest.mark.parametrize(
    ("sent_at", "error"),
    [
        (NOW - TOLERANCE, None),
        (NOW - TOLERANCE - 1, "behind"),
        (NOW - 86_400, "behind"),
        (NOW + TOLERANCE, None),
        (NOW + TOLERANCE + 1, "ahead"),
        (NOW + 86_400, "ahead"),
    ],
)
def test_the_tolerance_boundary(sent_at: int, error: str | None) -> None:
    signature = their_signature(timestamp=sent_at)
    if error is None:
        assert check(signature, timestamp=str(sent_at)) == sent_at
    else:
        with pytest.raises(SignatureError, match=error) as caught:
            check(signature, timestamp=str(sent_at))
        assert caught.value.code == "stale_timestamp"


@pytest.mark.parametrize(
    "timestamp", ["12.5", "abc", "1e9", "0x10", "9" * 5000, "-1", " 1", "١٢٣", "+5"]
)
def test_a_timestamp_that_is_not_whole_seconds(timestamp: str) -> None:
    with pytest.raises(SignatureError, match="whole seconds") as caught:
        check(their_signature(), timestamp=timestamp)
    assert caught.value.code == "invalid_timestamp"


@pytest.mark.parametrize(
    "header",
    [
        "v1a,{sig}",
        "v2,{sig}",
        "V1,{sig}",
        "{sig}",
        "v1,",
        "v1,!!!not base64!!!",
        "v1,{sig}x",
        "v1,é",
    ],
)
def test_other_versions_and_garbage_are_ignored(header: str) -> None:
    good = their_signature().removeprefix("v1,")
    with pytest.raises(SignatureError) as caught:
        check(header.format(sig=good))
    assert caught.value.code == "bad_signature"


def test_our_signature_is_theirs() -> None:
    ours = sign(SECRET, msg_id=MSG_ID, timestamp=NOW, body=BODY.encode())
    assert ours == their_signature()


def test_standardwebhooks_accepts_our_signature() -> None:
    now = int(time.time())
    headers = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(now),
        "webhook-signature": sign(SECRET, msg_id=MSG_ID, timestamp=now, body=BODY.encode()),
    }
    assert Webhook(SECRET).verify(BODY, headers) is not None


def test_secret_bytes_decodes_the_whsec_secret() -> None:
    assert secret_bytes(SECRET) == b"recur-sync test secret, 32 bytes"


ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=40)


@given(body=st.text(max_size=2000), msg_id=ids, skew=st.integers(-TOLERANCE, TOLERANCE))
def test_any_body_they_sign_verifies(body: str, msg_id: str, skew: int) -> None:
    signature = their_signature(msg_id=msg_id, timestamp=NOW + skew, body=body)
    sent_at = check(signature, body=body.encode(), msg_id=msg_id, timestamp=str(NOW + skew))
    assert sent_at == NOW + skew


@given(text=st.text(min_size=1, max_size=2000), data=st.data())
def test_any_single_byte_change_fails(text: str, data: st.DataObject) -> None:
    signature = their_signature(body=text)
    body = text.encode()
    assert check(signature, body=body) == NOW
    index = data.draw(st.integers(0, len(body) - 1))
    delta = data.draw(st.integers(1, 255))
    changed = bytearray(body)
    changed[index] = (changed[index] + delta) % 256
    with pytest.raises(SignatureError):
        check(signature, body=bytes(changed))
