"""RecurClient: transport errors translated, headers, paths; paging and errors over real HTTP."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

import httpx
import pytest

from sync_worker import __version__
from sync_worker.recur.client import RecurClient
from sync_worker.recur.errors import (
    Conflict,
    EndpointNotFound,
    NotFound,
    RateLimited,
    RecurError,
    RecurStatusError,
    RecurTimeout,
    RecurTransportError,
    Unauthorized,
    ValidationFailed,
)
from sync_worker.recur.models import CustomerPatch
from tests.fixtures.sandbox import SandboxHandle

KEY = "sk_test_unit"
CUSTOMER = {
    "object": "customer",
    "id": "cus_1",
    "email": "a@b.tw",
    "name": "王大明",
    "external_id": "u1",
    "status": "ACTIVE",
}

Handler = Callable[[httpx.Request], httpx.Response]


def mock_client(handler: Handler, **kwargs: object) -> RecurClient:
    return RecurClient(
        base_url="https://api.recur.test/",
        secret_key=KEY,
        transport=httpx.MockTransport(handler),
        **kwargs,  # type: ignore[arg-type]
    )


def raising(error: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return handler


# Unit: a mock transport.


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectError("refused"), RecurTransportError),
        (httpx.RemoteProtocolError("peer closed"), RecurTransportError),
        (httpx.ReadError("reset"), RecurTransportError),
        (httpx.ConnectTimeout("connect"), RecurTimeout),
        (httpx.ReadTimeout("read"), RecurTimeout),
        (httpx.PoolTimeout("pool"), RecurTimeout),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.__name__,
)
def test_transport_errors_are_translated(
    raised: Exception, expected: type[RecurTransportError]
) -> None:
    with (
        mock_client(raising(raised)) as client,
        pytest.raises(RecurTransportError) as caught,
    ):
        client.get_customer_by_external_id("u1")
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert caught.value.method == "GET"
    assert caught.value.path == "/v1/customers/external/u1"
    assert str(caught.value).startswith("GET /v1/customers/external/u1 ")


def test_a_body_that_cannot_be_decoded_is_a_recur_error() -> None:
    # A broken Content-Encoding fails while reading the body: httpx.DecodingError is not a
    # TransportError, and must not escape the client either.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    with mock_client(handler) as client, pytest.raises(RecurError):
        client.get_customer_by_external_id("u1")


def test_headers_path_body_and_result() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={**CUSTOMER, "name": "新名字"})

    with mock_client(handler) as client:
        customer = client.update_customer_by_external_id("u1", CustomerPatch(name="新名字"))
    assert customer.name == "新名字"
    assert customer.id == "cus_1"
    (request,) = seen
    assert request.method == "PATCH"
    assert request.url == "https://api.recur.test/v1/customers/external/u1"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["User-Agent"] == f"recur-sync/{__version__}"
    assert request.headers["Accept"] == "application/json"
    assert json.loads(request.content) == {"name": "新名字"}


def test_unbinding_sends_external_id_null() -> None:
    bodies: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={**CUSTOMER, "external_id": None})

    with mock_client(handler) as client:
        client.update_customer_by_external_id("u1", CustomerPatch(unbind_external_id=True))
    assert bodies == [{"external_id": None}]


@pytest.mark.parametrize(
    ("external_id", "raw_path"),
    [
        ("../x", b"/v1/customers/external/..%2Fx"),
        ("a/b", b"/v1/customers/external/a%2Fb"),
        ("a?b=c", b"/v1/customers/external/a%3Fb%3Dc"),
        ("a b#c", b"/v1/customers/external/a%20b%23c"),
        ("%2F", b"/v1/customers/external/%252F"),
        ("王", b"/v1/customers/external/%E7%8E%8B"),
    ],
)
def test_the_external_id_is_quoted_into_one_path_segment(external_id: str, raw_path: bytes) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=CUSTOMER)

    with mock_client(handler) as client:
        client.get_customer_by_external_id(external_id)
    assert seen[0].url.raw_path == raw_path
    assert seen[0].url.query == b""


def test_the_throttle_runs_before_each_request() -> None:
    events: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        events.append("request")
        return httpx.Response(200, json=CUSTOMER)

    with mock_client(handler, throttle=lambda: events.append("throttle")) as client:
        client.get_customer_by_external_id("u1")
        client.update_customer_by_external_id("u1", CustomerPatch(name="x"))
    assert events == ["throttle", "request", "throttle", "request"]


def test_a_throttle_that_raises_sends_nothing() -> None:
    sent: list[httpx.Request] = []

    class Throttled(Exception):
        pass

    def throttle() -> None:
        raise Throttled

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=CUSTOMER)

    with mock_client(handler, throttle=throttle) as client, pytest.raises(Throttled):
        client.get_customer_by_external_id("u1")
    assert sent == []


def test_a_2xx_that_is_not_json_is_a_recur_error() -> None:
    with (
        mock_client(lambda request: httpx.Response(200, content=b"<html>ok</html>")) as client,
        pytest.raises(RecurError) as caught,
    ):
        client.get_customer_by_external_id("u1")
    assert not isinstance(caught.value, RecurStatusError | RecurTransportError)
    assert "not JSON" in str(caught.value)


@pytest.mark.parametrize("body", [[], {"id": "cus_1"}, {"object": "list"}])
def test_a_2xx_of_the_wrong_shape_is_a_recur_error(body: object) -> None:
    # A pydantic ValidationError escaping the client would crash the sync task instead of
    # being handled as a failed call.
    with (
        mock_client(lambda request: httpx.Response(200, json=body)) as client,
        pytest.raises(RecurError),
    ):
        client.get_customer_by_external_id("u1")
    with (
        mock_client(lambda request: httpx.Response(200, json=body)) as client,
        pytest.raises(RecurError),
    ):
        client.list_customers()


def test_list_query_parameters() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": [], "has_more": False})

    with mock_client(handler) as client:
        client.list_customers()
        client.list_customers(limit=5, starting_after="cus_9", email="a@b.tw", status="BANNED")
    assert dict(seen[0].url.params) == {"limit": "100"}
    assert dict(seen[1].url.params) == {
        "limit": "5",
        "starting_after": "cus_9",
        "email": "a@b.tw",
        "status": "BANNED",
    }


def test_paging_stops_on_an_empty_page_that_claims_more() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"object": "list", "data": [], "has_more": True})

    with mock_client(handler) as client:
        assert list(client.iter_customers()) == []
    assert len(calls) == 1


def test_paging_falls_back_to_the_last_id_without_next_cursor() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "starting_after" not in request.url.params:
            page = [{**CUSTOMER, "id": "cus_1"}, {**CUSTOMER, "id": "cus_2"}]
            return httpx.Response(200, json={"object": "list", "data": page, "has_more": True})
        assert request.url.params["starting_after"] == "cus_2"
        page = [{**CUSTOMER, "id": "cus_3"}]
        return httpx.Response(200, json={"object": "list", "data": page, "has_more": False})

    with mock_client(handler) as client:
        assert [c.id for c in client.iter_customers()] == ["cus_1", "cus_2", "cus_3"]


@pytest.mark.parametrize(
    ("listing", "expected_next"),
    [
        ({"data": [{"id": "cus_1"}, {"id": "cus_2"}], "has_more": True, "next_cursor": "c"}, "c"),
        ({"data": [{"id": "cus_1"}, {"id": "cus_2"}], "has_more": True}, "cus_2"),
        ({"data": [{"id": "cus_1"}], "has_more": True, "next_cursor": None}, "cus_1"),
        ({"data": [{"id": "cus_1"}], "has_more": False, "next_cursor": "c"}, None),
        ({"data": [], "has_more": True, "next_cursor": "c"}, None),
    ],
)
def test_a_raw_page_keeps_the_body_and_finds_the_next_cursor(
    listing: dict[str, object], expected_next: str | None
) -> None:
    body = json.dumps({"object": "list", **listing}).encode()
    with mock_client(lambda request: httpx.Response(200, content=body)) as client:
        page = client.list_customers_raw(starting_after="cus_0")
    assert (page.body, page.next) == (body, expected_next)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"data": [{"id": "cus_1"}]}',
        b'{"data": [{"id": 7}], "has_more": false}',
        b'{"data": {}, "has_more": false}',
    ],
)
def test_a_raw_page_with_broken_paging_is_a_recur_error(body: bytes) -> None:
    with (
        mock_client(lambda request: httpx.Response(200, content=body)) as client,
        pytest.raises(RecurError, match="not a customer listing"),
    ):
        client.list_customers_raw()


def test_paging_is_lazy() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        data = [{**CUSTOMER, "id": f"cus_{len(calls)}"}]
        return httpx.Response(
            200,
            json={"object": "list", "data": data, "has_more": True, "next_cursor": data[0]["id"]},
        )

    with mock_client(handler) as client:
        customers = client.iter_customers()
        assert calls == []
        assert next(customers).id == "cus_1"
        assert next(customers).id == "cus_2"
    assert len(calls) == 2


def test_find_customers_by_email_keeps_only_exact_matches() -> None:
    seen: list[httpx.Request] = []
    loose = {**CUSTOMER, "id": "cus_2", "email": "A@b.tw", "external_id": None}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"object": "list", "data": [CUSTOMER, loose], "has_more": False}
        )

    with mock_client(handler) as client:
        found = client.find_customers_by_email("a@b.tw")
    assert [customer.id for customer in found] == ["cus_1"]
    assert seen[0].url.path == "/v1/customers"
    assert seen[0].url.params["email"] == "a@b.tw"


def test_update_customer_by_recur_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=CUSTOMER)

    with mock_client(handler) as client:
        updated = client.update_customer("cus_1", CustomerPatch(external_id="u1", name="x"))
    assert updated.id == "cus_1"
    assert (seen[0].method, seen[0].url.path) == ("PATCH", "/v1/customers/cus_1")
    assert json.loads(seen[0].content) == {"external_id": "u1", "name": "x"}


# Over real HTTP: the sandbox.


@pytest.fixture
def client(sandbox: SandboxHandle) -> Iterator[RecurClient]:
    with RecurClient(base_url=sandbox.url, secret_key=sandbox.secret_key) as recur:
        yield recur


@pytest.mark.parametrize("count", [0, 1, 100, 101, 250])
def test_paging_to_the_last_page(sandbox: SandboxHandle, client: RecurClient, count: int) -> None:
    if count:
        sandbox.control.seed(count)
    pages = list(client.iter_pages())
    ids = [customer.id for page in pages for customer in page.data]
    external_ids = [customer.external_id for page in pages for customer in page.data]

    assert len(ids) == count
    assert len(set(ids)) == count
    assert sorted(external_ids, key=lambda e: int(str(e).removeprefix("user_"))) == [
        f"user_{n}" for n in range(1, count + 1)
    ]
    expected_pages = max(1, -(-count // 100))
    assert len(pages) == expected_pages
    assert [page.has_more for page in pages] == [True] * (expected_pages - 1) + [False]
    assert all(len(page.data) == 100 for page in pages[:-1])

    logged = sandbox.control.requests(method="GET")
    assert len(logged) == expected_pages
    assert all(entry["path"] == "/v1/customers" for entry in logged)
    assert all(entry["query"]["limit"] == "100" for entry in logged)
    assert "starting_after" not in logged[0]["query"]
    cursors = [entry["query"]["starting_after"] for entry in logged[1:]]
    assert cursors == [page.data[-1].id for page in pages[:-1]]
    assert cursors == [page.next_cursor for page in pages[:-1]]
    assert all(entry["status"] == 200 for entry in logged)

    assert [c.id for c in client.iter_customers()] == ids


def test_paging_from_a_cursor(sandbox: SandboxHandle, client: RecurClient) -> None:
    sandbox.control.seed(150)
    everyone = [customer.id for customer in client.iter_customers()]
    rest = [customer.id for customer in client.iter_customers(starting_after=everyone[119])]
    assert rest == everyone[120:]


def test_get_and_update_by_external_id(sandbox: SandboxHandle, client: RecurClient) -> None:
    created = sandbox.control.create_customer(
        "wang@example.tw", name="王小明", external_id="user_123", metadata={"plan": "free"}
    )
    fetched = client.get_customer_by_external_id("user_123")
    assert (fetched.id, fetched.email, fetched.name) == (created["id"], "wang@example.tw", "王小明")

    updated = client.update_customer_by_external_id(
        "user_123", CustomerPatch(name="王大明", metadata={"plan": "pro"})
    )
    assert updated.id == created["id"]
    assert updated.name == "王大明"
    assert updated.metadata is None  # never answered (the doc); what Recur stored is below
    assert updated.email == "wang@example.tw"
    stored = sandbox.control.customer(created["id"])
    assert stored is not None
    assert (stored["name"], stored["metadata"]) == ("王大明", {"plan": "pro"})

    (patch,) = sandbox.control.requests(method="PATCH")
    assert patch["path"] == "/v1/customers/external/user_123"
    assert patch["body"] == {"name": "王大明", "metadata": {"plan": "pro"}}


def test_rebind_external_id(sandbox: SandboxHandle, client: RecurClient) -> None:
    created = sandbox.control.create_customer("a@example.tw", external_id="old_id")
    updated = client.update_customer_by_external_id("old_id", CustomerPatch(external_id="new_id"))
    assert updated.external_id == "new_id"
    assert client.get_customer_by_external_id("new_id").id == created["id"]
    with pytest.raises(NotFound):
        client.get_customer_by_external_id("old_id")


@pytest.mark.parametrize("key", ["sk_test_wrong", "pk_test_sandbox"])
def test_a_wrong_key_is_unauthorized(sandbox: SandboxHandle, key: str) -> None:
    sandbox.control.create_customer("a@example.tw", external_id="u1")
    with RecurClient(base_url=sandbox.url, secret_key=key) as wrong:
        with pytest.raises(Unauthorized) as caught:
            wrong.get_customer_by_external_id("u1")
        assert caught.value.status == 401
        assert caught.value.code == "unauthorized"
        with pytest.raises(Unauthorized):
            list(wrong.iter_customers())
        with pytest.raises(Unauthorized):
            wrong.update_customer_by_external_id("u1", CustomerPatch(name="x"))
    untouched = sandbox.control.customer_by_external_id("u1")
    assert untouched is not None
    assert untouched["name"] is None


def test_not_found(sandbox: SandboxHandle, client: RecurClient) -> None:
    with pytest.raises(NotFound) as caught:
        client.update_customer_by_external_id("nobody", CustomerPatch(name="x"))
    error = caught.value
    assert (error.status, error.code) == (404, "resource_not_found")
    assert error.message
    assert error.request_id is not None
    assert error.request_id.startswith("req_")
    assert json.loads(error.body)["error"]["code"] == "resource_not_found"
    assert str(error).startswith("PATCH /v1/customers/external/nobody -> 404 resource_not_found: ")


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "/"])
def test_a_base_url_with_v1_reaches_the_same_routes(sandbox: SandboxHandle, suffix: str) -> None:
    sandbox.control.create_customer("a@example.tw", external_id="u1")
    with RecurClient(base_url=sandbox.url + suffix, secret_key=sandbox.secret_key) as recur:
        assert recur.get_customer_by_external_id("u1").email == "a@example.tw"
    (call,) = sandbox.control.requests(method="GET")
    assert call["path"] == "/v1/customers/external/u1"


def test_a_wrong_base_url_is_not_a_missing_customer(sandbox: SandboxHandle) -> None:
    # The sandbox answers a path outside /v1 with a plain-text 404, as a wrong base URL would.
    sandbox.control.create_customer("a@example.tw", external_id="u1")
    recur = RecurClient(base_url=sandbox.url + "/api", secret_key=sandbox.secret_key)
    with recur, pytest.raises(EndpointNotFound) as caught:
        recur.update_customer_by_external_id("u1", CustomerPatch(name="x"))
    assert caught.value.status == 404
    assert not isinstance(caught.value, NotFound)


def test_conflict(sandbox: SandboxHandle, client: RecurClient) -> None:
    sandbox.control.create_customer("a@example.tw", external_id="a")
    sandbox.control.create_customer("b@example.tw", external_id="b")
    with pytest.raises(Conflict) as caught:
        client.update_customer_by_external_id("a", CustomerPatch(external_id="b"))
    assert (caught.value.status, caught.value.code) == (409, "conflict")
    assert sandbox.control.customer_by_external_id("a") is not None


def test_validation_failed(sandbox: SandboxHandle, client: RecurClient) -> None:
    sandbox.control.create_customer("a@example.tw", external_id="a")
    # The model refuses such an id; model_construct gets it past to see what Recur answers.
    patch = CustomerPatch.model_construct(external_id="not valid!")
    with pytest.raises(ValidationFailed) as caught:
        client.update_customer_by_external_id("a", patch)
    assert (caught.value.status, caught.value.code) == (422, "validation_error")


def test_rate_limited_with_retry_after(sandbox: SandboxHandle, client: RecurClient) -> None:
    sandbox.control.create_customer("a@example.tw", external_id="u1")
    sandbox.control.set_faults(scripts={"u1": [429]}, retry_after_seconds=7)
    with pytest.raises(RateLimited) as caught:
        client.update_customer_by_external_id("u1", CustomerPatch(name="x"))
    assert caught.value.retry_after == 7.0
    assert caught.value.code == "rate_limited"
    assert client.update_customer_by_external_id("u1", CustomerPatch(name="x")).name == "x"


def test_latency_above_the_read_timeout(sandbox: SandboxHandle) -> None:
    sandbox.control.create_customer("a@example.tw", external_id="u1")
    sandbox.control.update_faults(latency_ms=1000)
    with (
        RecurClient(base_url=sandbox.url, secret_key=sandbox.secret_key, read_timeout=0.1) as slow,
        pytest.raises(RecurTimeout),
    ):
        slow.get_customer_by_external_id("u1")


def test_nobody_listening(sandbox: SandboxHandle) -> None:
    from tests.fixtures.redis_server import free_port

    with (
        RecurClient(base_url=f"http://127.0.0.1:{free_port()}", secret_key=KEY) as nowhere,
        pytest.raises(RecurTransportError) as caught,
    ):
        nowhere.get_customer_by_external_id("u1")
    assert not isinstance(caught.value, RecurTimeout)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """A forward proxy that answers every request itself, noting the request line."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.requestline)
        body = json.dumps(CUSTOMER).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def test_a_proxy_named_by_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # Requests skip httpx.Client.send when no proxy is configured; with one, the client routes.
    with http.server.HTTPServer(("127.0.0.1", 0), _ProxyHandler) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            with RecurClient(base_url="http://recur.invalid", secret_key=KEY) as client:
                assert client.get_customer_by_external_id("u1").id == "cus_1"
        finally:
            proxy.shutdown()
    assert _ProxyHandler.seen == ["GET http://recur.invalid/v1/customers/external/u1 HTTP/1.1"]


class _TrickleHandler(http.server.BaseHTTPRequestHandler):
    """Answers a customer a byte at a time: each read is quick, the whole answer is not."""

    def do_GET(self) -> None:
        body = json.dumps(CUSTOMER).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            return  # the client gave up, as it should

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.mark.parametrize("deadline", [0.6, 1.5])
def test_a_trickling_answer_ends_at_the_attempt_deadline(deadline: float) -> None:
    # The read timeout (2 s) never trips between bytes 0.1 s apart; the answer alone would take
    # over 9 s. The attempt's deadline bounds the whole call.
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TrickleHandler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            client = RecurClient(
                base_url=f"http://127.0.0.1:{server.server_address[1]}",
                secret_key=KEY,
                read_timeout=2.0,
                attempt_deadline=deadline,
            )
            started = time.monotonic()
            with client, pytest.raises(RecurTimeout):
                client.get_customer_by_external_id("u1")
            elapsed = time.monotonic() - started
        finally:
            server.shutdown()
    assert deadline <= elapsed < deadline + 1.0
