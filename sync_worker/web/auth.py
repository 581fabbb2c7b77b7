"""Who may use the operator routes.

- The admin API takes `Authorization: Bearer $ADMIN_TOKEN`, compared in constant time.
- The dashboard takes a session cookie set by its login form. The cookie is not the token: it
  is `issued.nonce.signature`, an HMAC under a key derived from ADMIN_TOKEN, so changing the
  token logs every session out, and a stolen cookie expires and never reveals the token.
- Dashboard forms carry a CSRF token, an HMAC of the session under the same key.

Without ADMIN_TOKEN the operator routes answer 503: they are off, not open. Authentication runs
before anything reads the dead-letter queue, so an unauthenticated caller learns nothing about
which ids exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

from fastapi import Request
from fastapi.responses import JSONResponse

from sync_worker.settings import Settings
from sync_worker.web.state import web_state

SESSION_COOKIE = "rs_admin_session"
SESSION_SECONDS = 12 * 3600


class AdminError(Exception):
    """An operator API error, rendered as `{"error": {"code", "message"}}`."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


async def admin_error_handler(_request: Request, error: Exception) -> JSONResponse:
    """Render an `AdminError` (registered on the app for that class only)."""
    if not isinstance(error, AdminError):
        raise error
    return admin_error_response(error)


def admin_token(settings: Settings) -> str | None:
    """The configured ADMIN_TOKEN, or None when the operator routes are disabled."""
    if settings.admin_token is None:
        return None
    return settings.admin_token.get_secret_value() or None


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response times do not reveal a prefix of the token."""
    return hmac.compare_digest(given.encode(), expected.encode())


def disabled_error() -> AdminError:
    """503: the operator routes are off without ADMIN_TOKEN."""
    return AdminError(
        503, "admin_disabled", "ADMIN_TOKEN is not set, so the operator API is disabled"
    )


def unauthorized_error() -> AdminError:
    """401: no or a wrong bearer token (the same answer for every route and id)."""
    return AdminError(
        401,
        "unauthorized",
        "send Authorization: Bearer <ADMIN_TOKEN>",
        headers={"WWW-Authenticate": "Bearer"},
    )


def admin_error_response(error: AdminError, *, close: bool = False) -> JSONResponse:
    """The JSON answer of an `AdminError`; `close` ends the connection (body left unread)."""
    headers = dict(error.headers or {})
    if close:
        headers["connection"] = "close"
    return JSONResponse(
        {"error": {"code": error.code, "message": error.message}},
        status_code=error.status,
        headers=headers,
    )


def bearer_matches(headers: Mapping[str, str], expected: str) -> bool:
    """True when `Authorization` is `Bearer <expected>`."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_matches(given.strip(), expected)


async def require_bearer(request: Request) -> None:
    """FastAPI dependency of the admin API: 503 when disabled, 401 without the right token.

    The request guard (guard.py) has already refused such requests before their body was read;
    this keeps the routes closed should they ever be served without it.
    """
    expected = admin_token(web_state(request).settings)
    if expected is None:
        raise disabled_error()
    if not bearer_matches(request.headers, expected):
        raise unauthorized_error()


def _key(token: str) -> bytes:
    return hashlib.sha256(b"recur-sync admin session\x00" + token.encode()).digest()


def _sign(token: str, purpose: str, payload: str) -> str:
    message = f"{purpose}\x00{payload}".encode()
    return hmac.new(_key(token), message, hashlib.sha256).hexdigest()


def new_session(token: str, *, now: float | None = None) -> str:
    """A fresh session cookie value."""
    payload = f"{int(time.time() if now is None else now)}.{secrets.token_urlsafe(16)}"
    return f"{payload}.{_sign(token, 'session', payload)}"


def session_valid(token: str, value: str, *, now: float | None = None) -> bool:
    """True for a cookie this token signed, less than SESSION_SECONDS ago."""
    payload, _, signature = value.rpartition(".")
    issued, _, _nonce = payload.partition(".")
    if not issued.isdigit() or not hmac.compare_digest(
        signature.encode(), _sign(token, "session", payload).encode()
    ):
        return False
    age = (time.time() if now is None else now) - int(issued)
    return 0 <= age < SESSION_SECONDS


def csrf_token(token: str, session: str) -> str:
    """The CSRF token of a session, put in every dashboard form."""
    return _sign(token, "csrf", session)


def csrf_valid(token: str, session: str, given: str) -> bool:
    """True when a form's CSRF token belongs to this session."""
    return hmac.compare_digest(given.encode(), csrf_token(token, session).encode())
