"""RecurClient: one pooled httpx client per process, one typed method per endpoint we use.

Nothing outside this package sees an httpx exception: transport failures are translated into
the RecurError tree here, most specific first, and error statuses by `error_from_response`.
"""

from __future__ import annotations

import threading
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from json import dumps as json_dumps
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from sync_worker import __version__
from sync_worker.recur.deadline import attempt_deadline
from sync_worker.recur.errors import (
    RecurError,
    RecurTimeout,
    RecurTransportError,
    error_from_response,
)
from sync_worker.recur.models import (
    Customer,
    CustomerPage,
    CustomerPatch,
    ListingPaging,
    RawCustomerPage,
)
from sync_worker.recur.transport import LeanTransport
from sync_worker.settings import RECONCILE_PAGE_SIZE, Settings, api_root

_Shape = TypeVar("_Shape")

_LIST = "/v1/customers"
EMAIL_MATCHES = 10
"""How many customers an email lookup reads: one means bind, more means ambiguous."""
_PAGING = TypeAdapter(ListingPaging)

Throttle = Callable[[], None]
"""Called before every request; blocks until the shared rate limit allows one more."""


class RecurClient:
    """A client of the Recur Customers API authenticated with a secret key."""

    def __init__(
        self,
        *,
        base_url: str,
        secret_key: str,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_connections: int = 100,
        transport: httpx.BaseTransport | None = None,
        throttle: Throttle | None = None,
        attempt_deadline: float | None = None,
    ) -> None:
        """`attempt_deadline` bounds each call as a whole (connect, write and the whole read;
        default: connect plus read timeout), where httpx bounds each socket operation."""
        self._throttle = throttle
        self._deadline = (
            attempt_deadline if attempt_deadline is not None else connect_timeout + read_timeout
        )
        self._options: dict[str, Any] = {
            "base_url": api_root(base_url),
            "headers": {
                "Authorization": f"Bearer {secret_key}",
                "User-Agent": f"recur-sync/{__version__}",
                "Accept": "application/json",
            },
            "timeout": httpx.Timeout(read_timeout, connect=connect_timeout),
        }
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        # One verifying SSL context for every thread's pool (an SSLContext may be shared):
        # building one reads the whole CA bundle, tens of milliseconds of CPU, which many
        # threads starting at once would otherwise each pay on their first call.
        self._ssl_context = httpx.create_ssl_context()
        self._options["verify"] = self._ssl_context
        self._wire = _Wire(
            self._options["base_url"],
            self._options["headers"],
            self._options["timeout"],
            self._deadline,
        )
        self._shared_transport = transport
        # Requests skip httpx.Client.send (cookies, auth and redirect machinery we do not use:
        # a fifth of a request's CPU, measured with bench/reconcile.py) and go straight to the
        # transport, unless the environment names a proxy, which only the client routes.
        self._direct = not urllib.request.getproxies()
        # One httpx client per thread: a worker runs many threads, and a single shared pool
        # serialises them on its lock (measured: a third of the sync rate lost to it). A thread's
        # client lives in its thread-local slot; when the thread ends, the slot goes and a
        # finalizer closes the client (its sockets too), so the threads that come and go (each
        # reconciliation's page thread, the web's thread pool) leave nothing behind.
        self._local = threading.local()
        self._live: weakref.WeakSet[_ThreadHttp] = weakref.WeakSet()
        self._live_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        throttle: Throttle | None = None,
    ) -> RecurClient:
        """A client configured from the settings (the secret key is required)."""
        return cls(
            base_url=str(settings.recur_api_url),
            secret_key=settings.require_secret_key(),
            connect_timeout=settings.recur_connect_timeout_seconds,
            read_timeout=settings.recur_read_timeout_seconds,
            max_connections=max(settings.worker_concurrency * 2, 10),
            transport=transport,
            throttle=throttle,
            attempt_deadline=settings.attempt_deadline_seconds,
        )

    def __enter__(self) -> RecurClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _thread_http(self) -> tuple[httpx.Client, httpx.BaseTransport | None]:
        """This thread's client, and the transport to send through directly (None: no proxy)."""
        http: _ThreadHttp | None = getattr(self._local, "http", None)
        if http is None or http.client.is_closed:
            transport = self._shared_transport
            if self._direct and transport is None:
                transport = LeanTransport(ssl_context=self._ssl_context)
            # Given a transport, httpx ignores proxies from the environment: only without one.
            client = httpx.Client(**self._options, limits=self._limits, transport=transport)
            http = _ThreadHttp(client, transport if self._direct else None)
            if self._shared_transport is None:
                # The pool is this thread's alone: close it when the thread's slot is dropped.
                # (A shared transport is the caller's to close.)
                weakref.finalize(http, client.close)
            self._local.http = http
            with self._live_lock:
                self._live.add(http)
        return http.client, http.transport

    @property
    def live_clients(self) -> int:
        """httpx clients held now: one per thread that made a call and has not ended."""
        with self._live_lock:
            return len(self._live)

    def close(self) -> None:
        """Close the connection pools of every live thread."""
        with self._live_lock:
            live, self._live = list(self._live), weakref.WeakSet()
        for http in live:
            http.client.close()

    def update_customer_by_external_id(self, external_id: str, patch: CustomerPatch) -> Customer:
        """`PATCH /v1/customers/external/{external_id}`: the customer as Recur now has it."""
        path = _external_path(external_id)
        body = self._request("PATCH", path, json=patch.body())
        return _parse(Customer.model_validate_json, body, "a Customer", "PATCH", path)

    def get_customer_by_external_id(self, external_id: str) -> Customer:
        """`GET /v1/customers/external/{external_id}`."""
        path = _external_path(external_id)
        body = self._request("GET", path)
        return _parse(Customer.model_validate_json, body, "a Customer", "GET", path)

    def update_customer(self, customer_id: str, patch: CustomerPatch) -> Customer:
        """`PATCH /v1/customers/{id}` by Recur's own customer id (`cus_...`)."""
        path = f"{_LIST}/{quote(customer_id, safe='')}"
        body = self._request("PATCH", path, json=patch.body())
        return _parse(Customer.model_validate_json, body, "a Customer", "PATCH", path)

    def find_customers_by_email(self, email: str, *, limit: int = EMAIL_MATCHES) -> list[Customer]:
        """`GET /v1/customers?email=`: the customers whose email is exactly `email`.

        The filter is documented as exact; the answer is checked again here, so a looser match
        upstream can never bind a stranger's customer.
        """
        page = self.list_customers(limit=limit, email=email)
        return [customer for customer in page.data if customer.email == email]

    def list_customers(
        self,
        *,
        limit: int = RECONCILE_PAGE_SIZE,
        starting_after: str | None = None,
        email: str | None = None,
        status: str | None = None,
    ) -> CustomerPage:
        """One page of `GET /v1/customers`."""
        params: dict[str, str | int] = {"limit": limit}
        if starting_after is not None:
            params["starting_after"] = starting_after
        if email is not None:
            params["email"] = email
        if status is not None:
            params["status"] = status
        payload = self._request("GET", _LIST, params=params)
        return _parse(CustomerPage.model_validate_json, payload, "a CustomerPage", "GET", _LIST)

    def list_customers_raw(
        self, *, limit: int = RECONCILE_PAGE_SIZE, starting_after: str | None = None
    ) -> RawCustomerPage:
        """One page of `GET /v1/customers` as sent, its paging fields validated (for the Lua)."""
        params: dict[str, str | int] = {"limit": limit}
        if starting_after is not None:
            params["starting_after"] = starting_after
        payload = self._request("GET", _LIST, params=params)
        paging = _parse(_PAGING.validate_json, payload, "a customer listing", "GET", _LIST)
        return RawCustomerPage.of(payload, paging)

    def iter_pages(
        self, *, starting_after: str | None = None, limit: int = RECONCILE_PAGE_SIZE
    ) -> Iterator[CustomerPage]:
        """Every page from `starting_after` on, fetched lazily: memory stays one page."""
        cursor = starting_after
        while True:
            page = self.list_customers(limit=limit, starting_after=cursor)
            yield page
            if not page.has_more or not page.data:
                return
            cursor = page.next_cursor or page.data[-1].id

    def iter_customers(
        self, *, starting_after: str | None = None, limit: int = RECONCILE_PAGE_SIZE
    ) -> Iterator[Customer]:
        """Every customer from `starting_after` on, lazily."""
        for page in self.iter_pages(starting_after=starting_after, limit=limit):
            yield from page.data

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str | int] | None = None,
    ) -> bytes:
        client, transport = self._thread_http()
        if isinstance(transport, LeanTransport):
            return self._request_lean(transport, method, path, json=json, params=params)
        request = client.build_request(method, path, json=json, params=params)
        # Waiting for a pooled connection counts against the call's deadline too.
        timeouts = request.extensions["timeout"]
        pool = timeouts.get("pool")
        wait = self._deadline if pool is None else min(pool, self._deadline)
        request.extensions["timeout"] = {**timeouts, "pool": wait}
        self._throttle_now()
        with _translated(method, path), attempt_deadline(self._deadline):
            response = _send(transport, request) if transport else client.send(request)
        if response.is_success:
            return response.content
        raise error_from_response(response, method=method, path=path)

    def _request_lean(
        self,
        transport: LeanTransport,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None,
        params: dict[str, str | int] | None,
    ) -> bytes:
        """`_request` with the request built as bytes (the same bytes httpx would send, less
        `Accept-Encoding`): httpx's request building parsed the URL twice, a third of a call's
        CPU in the worker. An error answer is still read through an httpx response."""
        wire = self._wire
        target = wire.root + path.encode()
        if params:
            target += b"?" + str(httpx.QueryParams(params)).encode()
        head, body = wire.head, b""
        if json is not None:
            text = json_dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            body = text.encode()
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        self._throttle_now()
        with _translated(method, path), attempt_deadline(self._deadline):
            answer = transport.send(method, wire.origin, target, head, body, wire.timeouts)
            if 200 <= answer.status < 300 and answer.plain:
                return answer.body
            response = answer.response(httpx.Request(method, wire.site + target.decode()))
        if response.is_success:
            return response.content
        raise error_from_response(response, method=method, path=path)

    def _throttle_now(self) -> None:
        if self._throttle is not None:
            # Last, just before the request leaves: a token taken before slow work (a thread's
            # first call builds its client) is spent late, and tokens granted a second apart
            # then reach Recur together.
            self._throttle()


@contextmanager
def _translated(method: str, path: str) -> Iterator[None]:
    """httpx's exceptions as RecurError's: nothing outside this package sees one."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise RecurTimeout(
            f"{method} {path} timed out: {type(error).__name__}", method=method, path=path
        ) from error
    except httpx.RequestError as error:
        # TransportError, and also DecodingError (a body that cannot be decompressed).
        raise RecurTransportError(
            f"{method} {path} failed: {type(error).__name__}: {error}", method=method, path=path
        ) from error


class _Wire:
    """What every request of the lean path shares, worked out once: where it goes, its header
    lines, its timeouts (the pool's wait, for the httpx path, within the deadline)."""

    __slots__ = ("head", "origin", "root", "site", "timeouts")

    def __init__(
        self, base_url: str, headers: dict[str, str], timeout: httpx.Timeout, deadline: float
    ) -> None:
        url = httpx.URL(base_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        self.origin = (url.scheme, url.host, port)
        self.site = f"{url.scheme}://{url.netloc.decode('ascii')}"
        self.root = url.raw_path.rstrip(b"/")
        lines = {"Host": url.netloc.decode("ascii"), "Connection": "keep-alive", **headers}
        for name, value in lines.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"the {name} header would hold a line break")
        self.head = "".join(f"{name}: {value}\r\n" for name, value in lines.items()).encode()
        pool = deadline if timeout.pool is None else min(timeout.pool, deadline)
        self.timeouts: dict[str, float | None] = {**timeout.as_dict(), "pool": pool}


class _ThreadHttp:
    """One thread's client and the transport its requests go through directly (None: through
    the client, for proxies). Only the thread-local slot holds it strongly."""

    __slots__ = ("__weakref__", "client", "transport")

    def __init__(self, client: httpx.Client, transport: httpx.BaseTransport | None) -> None:
        self.client = client
        self.transport = transport


def _send(transport: httpx.BaseTransport, request: httpx.Request) -> httpx.Response:
    """`client.send(request)` for a request with no auth, cookies or redirects to follow."""
    response = transport.handle_request(request)
    response.request = request
    try:
        response.read()
    finally:
        response.close()
    return response


def _parse(
    validate: Callable[[bytes], _Shape], content: bytes, shape: str, method: str, path: str
) -> _Shape:
    # A 2xx that is not JSON, or not the documented shape, is a failed call, not a crash of the
    # caller. Validating straight from the bytes skips building Python dicts first.
    try:
        return validate(content)
    except ValidationError as error:
        raise RecurError(
            f"{method} {path} -> 2xx with a body that is not {shape} (or not JSON): "
            f"{error.error_count()} error(s), first: {error.errors()[0]['msg']}",
            method=method,
            path=path,
        ) from error


def _external_path(external_id: str) -> str:
    return f"/v1/customers/external/{quote(external_id, safe='')}"
