"""Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.

Verification works on the raw body, before any parsing, compares in constant time, accepts a
space-separated list of signatures (secret rotation) and refuses timestamps outside the tolerance.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"  # noqa: S105 - the documented prefix, not a secret


class SignatureError(Exception):
    """The request is not signed by a holder of the webhook secret.

    `code` names the check that failed (one of `CODES`) and `str()` says it for a person; neither
    reveals anything about the secret or the expected signature.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


CODES = ("missing_headers", "invalid_timestamp", "stale_timestamp", "bad_signature")
"""What a refused delivery's 401 names, in the order the checks run."""


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for a message."""
    digest = hmac.new(
        secret_bytes(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256
    ).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    key: bytes,
    *,
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    tolerance_seconds: int,
) -> int:
    """Check one delivery; return its timestamp, or raise `SignatureError`."""
    if not msg_id or not timestamp or not signature:
        missing = [
            name
            for name, value in (
                ("webhook-id", msg_id),
                ("webhook-timestamp", timestamp),
                ("webhook-signature", signature),
            )
            if not value
        ]
        raise SignatureError("missing_headers", f"missing header: {', '.join(missing)}")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise SignatureError(
            "invalid_timestamp", "webhook-timestamp must be whole seconds since the epoch"
        )
    sent_at = int(timestamp)
    if abs(sent_at - now) > tolerance_seconds:
        raise SignatureError(
            "stale_timestamp",
            f"webhook-timestamp is more than {tolerance_seconds} s from the server's clock "
            f"({'behind' if sent_at < now else 'ahead'}): sign with the current time",
        )
    expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    for candidate in signature.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(given, expected):
            return sent_at
    raise SignatureError(
        "bad_signature",
        'no v1 signature matches HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}" '
        "under the webhook secret",
    )
