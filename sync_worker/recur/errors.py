"""The errors a call to Recur can end in, and the one place that maps responses onto them.

    SyncWorkerError
    └── RecurError
        ├── RecurTransportError          no response (connect, read, pool, protocol)   transient
        │   └── RecurTimeout
        └── RecurStatusError             .status .code .message .request_id .body (trimmed)
            ├── BadRequest 400 · Unauthorized 401 · Forbidden 403
            ├── NotFound 404 · Conflict 409 · ValidationFailed 422
            ├── BoundElsewhere 404 + the email's customer has another external id
            ├── UnboundUser 404 for a user an event unbound: not bound again by email
            ├── EndpointNotFound 404 without Recur's envelope (wrong base URL)    transient
            ├── RequestTimeout 408                                               transient
            ├── RateLimited 429 .retry_after                                     transient
            └── ServerError 5xx .retry_after                                      transient

`error_from_response()` is the only code that reads status codes; `is_transient()` is the only
code that decides what is retried.
"""

from __future__ import annotations

import json
import math
import time
from email.utils import parsedate_to_datetime

import httpx

NOT_FOUND_CODE = "resource_not_found"
"""The code of Recur's documented 404; any other 404 did not come from a customer lookup."""

BODY_KEPT = 500
"""How much of an error body an exception keeps: enough to debug, never a whole payload."""


class SyncWorkerError(Exception):
    """The root of every error recur-sync raises on purpose."""


class RecurError(SyncWorkerError):
    """A call to Recur did not succeed."""

    def __init__(self, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.path = path


class RecurTransportError(RecurError):
    """No response came back: connection refused or reset, protocol error, pool exhausted."""


class RecurTimeout(RecurTransportError):
    """Recur did not answer within the configured timeout."""


class RecurStatusError(RecurError):
    """Recur answered with an error status."""

    def __init__(
        self,
        *,
        method: str,
        path: str,
        status: int,
        code: str,
        message: str,
        request_id: str | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{method} {path} -> {status} {code}: {message}", method=method, path=path)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.body = body
        self.retry_after = retry_after


class BadRequest(RecurStatusError):
    """400 invalid_request: the request was malformed."""


class Unauthorized(RecurStatusError):
    """401 unauthorized: the key is missing, wrong or not a secret key."""


class Forbidden(RecurStatusError):
    """403: the key may not do this."""


class NotFound(RecurStatusError):
    """404 resource_not_found: no customer has that id or external id."""


class EndpointNotFound(RecurStatusError):
    """404 whose body is not Recur's `resource_not_found` envelope: no customer was looked up.

    An HTML page or a JSON without that code comes from something that is not the Customers API
    (a wrong `RECUR_API_URL`, a proxy or load balancer): a configuration or transport problem,
    never a verdict about a customer, so it must not become a `not_found` dead letter.
    """


class RequestTimeout(RecurStatusError):
    """408: the server (or a proxy) gave up waiting for our request; worth another try."""


class Conflict(RecurStatusError):
    """409 conflict: the external id is used by another customer."""


class BoundElsewhere(RecurStatusError):
    """404 by external id, and the one customer with the user's email is bound to another
    external id (`holder`): binding it would steal it, so this is a conflict to resolve by hand."""

    def __init__(self, missing: RecurStatusError, *, customer_id: str, holder: str) -> None:
        super().__init__(
            method=missing.method,
            path=missing.path,
            status=missing.status,
            code="conflict",
            message=(
                f"no customer has this external id, and the customer with the user's email "
                f"({customer_id}) is bound to external id {holder!r}: not rebound"
            ),
            request_id=missing.request_id,
            body=missing.body,
        )
        self.customer_id = customer_id
        self.holder = holder


class UnboundUser(RecurStatusError):
    """404 by external id for a user that an event unbound (`new_user_id: null`): the customer
    with its email was detached on purpose, so it is not bound again automatically."""

    def __init__(self, missing: RecurStatusError, *, unbound_at_ms: int) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unbound_at_ms / 1000))
        super().__init__(
            method=missing.method,
            path=missing.path,
            status=missing.status,
            code=missing.code,
            message=(
                f"no customer has this external id, and an event unbound this user ({when}): "
                "not bound again by email; replay to bind the customer with the user's email"
            ),
            request_id=missing.request_id,
            body=missing.body,
        )
        self.unbound_at_ms = unbound_at_ms


class ValidationFailed(RecurStatusError):
    """422 validation_error: the external id holds characters other than [A-Za-z0-9_-]."""


class RateLimited(RecurStatusError):
    """429: too many requests; `retry_after` says how long to wait when Recur said it."""


class ServerError(RecurStatusError):
    """5xx: Recur failed; worth another try."""


STATUS_ERRORS: dict[int, type[RecurStatusError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    422: ValidationFailed,
    429: RateLimited,
}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        # "nan", "inf" and "1e400" parse as floats but are no wait anyone can honour.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "http_error", response.reason_phrase or "error"
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            code = str(error.get("code") or "http_error")
            message = str(error.get("message") or response.reason_phrase or "error")
            return code, message
    return "http_error", response.reason_phrase or "error"


def error_from_response(response: httpx.Response, *, method: str, path: str) -> RecurStatusError:
    """The exception for an error response, with its documented code and message."""
    status = response.status_code
    code, message = _error_fields(response)
    cls = STATUS_ERRORS.get(status)
    if cls is NotFound and code != NOT_FOUND_CODE:
        cls = EndpointNotFound
    if cls is None:
        cls = ServerError if status >= 500 else RecurStatusError
    return cls(
        method=method,
        path=path,
        status=status,
        code=code,
        message=message,
        request_id=response.headers.get("x-request-id"),
        body=response.text[:BODY_KEPT],
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def may_have_applied(error: BaseException | None) -> bool:
    """True when the request may have reached Recur and taken effect although no answer said so:
    no response (timeout, reset), or a 5xx, which a proxy in front of Recur can send after
    forwarding the request."""
    return isinstance(error, RecurTransportError | ServerError)


def is_transient(error: BaseException) -> bool:
    """True for what another try may fix: no response, 408, 429, every 5xx, and a 404 that is
    not Recur's (a misrouted request says nothing about the customer)."""
    return isinstance(
        error,
        RecurTransportError | RequestTimeout | RateLimited | ServerError | EndpointNotFound,
    )
