"""The error tree: every status mapped in one place, bodies parsed, Retry-After read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from sync_worker.recur.errors import (
    BODY_KEPT,
    BadRequest,
    Conflict,
    EndpointNotFound,
    Forbidden,
    NotFound,
    RateLimited,
    RecurError,
    RecurStatusError,
    RecurTimeout,
    RecurTransportError,
    RequestTimeout,
    ServerError,
    SyncWorkerError,
    Unauthorized,
    ValidationFailed,
    error_from_response,
    is_transient,
    parse_retry_after,
)

PATH = "/v1/customers/external/u1"

STATUS_CLASSES: dict[int, type[RecurStatusError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    422: ValidationFailed,
    429: RateLimited,
    500: ServerError,
    502: ServerError,
    503: ServerError,
    504: ServerError,
    418: RecurStatusError,
    451: RecurStatusError,
}


def response(
    status: int,
    body: object = None,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    request = httpx.Request("PATCH", "https://api.recur.test" + PATH)
    if content is None:
        content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, content=content, headers=headers, request=request)


def documented(
    status: int, code: str | None = None, message: str = "some message"
) -> httpx.Response:
    if code is None:  # a 404 is Recur's only with its documented code
        code = "resource_not_found" if status == 404 else "some_code"
    return response(status, {"error": {"code": code, "message": message}})


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES.items())
def test_every_status_maps_to_its_class(status: int, cls: type[RecurStatusError]) -> None:
    error = error_from_response(documented(status), method="PATCH", path=PATH)
    assert type(error) is cls
    assert error.status == status
    assert error.code == ("resource_not_found" if status == 404 else "some_code")
    assert error.message == "some message"
    assert error.method == "PATCH"
    assert error.path == PATH


def test_the_tree() -> None:
    for cls in set(STATUS_CLASSES.values()):
        assert issubclass(cls, RecurStatusError)
    assert issubclass(RecurStatusError, RecurError)
    assert issubclass(RecurTimeout, RecurTransportError)
    assert issubclass(RecurTransportError, RecurError)
    assert issubclass(RecurError, SyncWorkerError)
    assert not issubclass(RecurStatusError, RecurTransportError)


def test_str_names_call_status_code_and_message() -> None:
    error = error_from_response(
        documented(409, "conflict", "external_id already used"), method="PATCH", path=PATH
    )
    assert str(error) == "PATCH /v1/customers/external/u1 -> 409 conflict: external_id already used"


def test_a_body_that_is_not_json_keeps_the_status_class() -> None:
    error = error_from_response(
        response(502, content=b"<html>Bad Gateway</html>"), method="GET", path=PATH
    )
    assert type(error) is ServerError
    assert error.code == "http_error"
    assert error.message == "Bad Gateway"
    assert error.body == "<html>Bad Gateway</html>"


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        {"error": "flat string"},
        {"message": "no error key"},
        {"error": {}},
        "just a string",
    ],
    ids=["list", "flat error", "no error key", "empty error", "string"],
)
def test_json_not_in_the_documented_shape(body: object) -> None:
    error = error_from_response(response(400, body), method="GET", path=PATH)
    assert type(error) is BadRequest
    assert error.code == "http_error"
    assert error.message == "Bad Request"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"<html><body>404 Not Found</body></html>", "text/html"),
        (b"Not Found", "text/plain"),
        (b'{"error": {"code": "not_found", "message": "no such route"}}', "application/json"),
        (b'{"detail": "Not Found"}', "application/json"),
        (b"", "text/plain"),
    ],
    ids=["html", "plain", "other code", "no envelope", "empty"],
)
def test_a_404_that_is_not_recurs_is_a_transient_endpoint_problem(
    content: bytes, content_type: str
) -> None:
    # A wrong base URL or a proxy answers 404 for a route, not for a customer: never not_found.
    error = error_from_response(
        response(404, content=content, headers={"content-type": content_type}),
        method="PATCH",
        path=PATH,
    )
    assert type(error) is EndpointNotFound
    assert not isinstance(error, NotFound)
    assert is_transient(error)


def test_recurs_own_404_is_not_found_and_final() -> None:
    error = error_from_response(documented(404), method="GET", path=PATH)
    assert type(error) is NotFound
    assert not is_transient(error)


def test_an_empty_body() -> None:
    error = error_from_response(response(500, content=b""), method="GET", path=PATH)
    assert type(error) is ServerError
    assert (error.code, error.message, error.body) == ("http_error", "Internal Server Error", "")


def test_body_that_is_not_utf8() -> None:
    error = error_from_response(response(400, content=b"\xff\xfe\x00bad"), method="GET", path=PATH)
    assert type(error) is BadRequest
    assert error.code == "http_error"


def test_the_body_is_trimmed() -> None:
    message = "x" * 10_000
    error = error_from_response(
        documented(400, "invalid_request", message), method="GET", path=PATH
    )
    assert len(error.body) == BODY_KEPT
    assert error.body.startswith('{"error"')
    assert error.message == message


def test_request_id_is_kept() -> None:
    error = error_from_response(
        response(404, {"error": {"code": "resource_not_found", "message": "m"}},
                 headers={"X-Request-Id": "req_42"}),
        method="GET",
        path=PATH,
    )  # fmt: skip
    assert error.request_id == "req_42"
    assert error_from_response(documented(404), method="GET", path=PATH).request_id is None


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_parsed_onto_the_error(status: int) -> None:
    error = error_from_response(
        response(status, {"error": {"code": "c", "message": "m"}}, headers={"Retry-After": "7"}),
        method="PATCH",
        path=PATH,
    )
    assert error.retry_after == 7.0


def test_no_retry_after_header() -> None:
    assert error_from_response(documented(429), method="GET", path=PATH).retry_after is None


NOW = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("Tue, 24 Nov 2026 10:00:30 GMT", 30.0),
        ("Tue, 24 Nov 2026 09:59:00 GMT", 0.0),
        ("soon", None),
        ("Tue, 99 Foo 2026", None),
        ("", None),
        ("   ", None),
        (None, None),
        ("nan", None),
        ("inf", None),
        ("1e400", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date_defaults_to_the_wall_clock() -> None:
    later = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 100, tz=UTC)
    parsed = parse_retry_after(format_datetime(later, usegmt=True))
    assert parsed is not None
    assert 95 <= parsed <= 100


def _status_error(cls: type[RecurStatusError], status: int) -> RecurStatusError:
    return cls(method="GET", path=PATH, status=status, code="c", message="m")


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES.items())
def test_is_transient_per_status_class(status: int, cls: type[RecurStatusError]) -> None:
    assert is_transient(_status_error(cls, status)) is (status in (408, 429) or status >= 500)


def test_is_transient_for_what_has_no_response() -> None:
    assert is_transient(RecurTransportError("connection refused"))
    assert is_transient(RecurTimeout("read timeout"))
    assert not is_transient(RecurError("a 2xx that is not JSON"))
    assert not is_transient(ValueError("not ours"))
    assert not is_transient(httpx.ConnectError("foreign exceptions are translated first"))
