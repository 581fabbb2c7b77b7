"""The sandbox as an ASGI app: the Recur Customers API under `/v1`, controls under `/_sandbox`.

`/v1` follows the Recur doc: `Authorization: Bearer <secret key>`, the customer routes
(`/v1/customers`, with `email` an exact filter; `/v1/customers/{id}`, by Recur id or, with
`?by_external_id=true`, by external id; `/v1/customers/external/{external_id}`), the error
envelope on every refusal (405s name the allowed methods in `Allow`), and answers without
`metadata`, which the doc never returns (`echo_metadata` adds it, for experiments).
Every `/v1` request, refused or not, lands in the request log, and its `X-Request-Id`
(`req_<seq>`) names its log entry. Order of checks: latency, outage, rate limit, authentication,
scripted and random faults, routing, body validation, lookup.

`/_sandbox` needs no key, injects no fault and is not logged:

| route | what |
|---|---|
| `GET /_sandbox/health` | `{"status": "ok", "customers": n, ...}` |
| `POST /_sandbox/reset` | forget customers, faults and the log (request seqs restart at 1) |
| `POST /_sandbox/customers` | create a list of `{email, name, external_id, metadata, status}` |
| `GET /_sandbox/customers/{id}`, `.../external/{external_id}` | read one with its metadata |
| `POST /_sandbox/seed` | `{"count": n, "prefix": "user_", "start": 1, "bound": true}` |
| `GET /_sandbox/requests` | the log; filters `since`, `method`, `external_id`, `status`, `limit` |
| `DELETE /_sandbox/requests` | empty the log (seqs keep increasing) |
| `GET`, `PUT`, `PATCH /_sandbox/faults` | read, replace (absent = off) or merge the faults |

`"bound": false` seeds customers whose external id is null, as Recur Checkout creates them.
Starlette is used bare, and request bodies are checked by hand, to keep the per-request cost low.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import random
import threading
import time
from collections import deque
from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sync_worker.sandbox.faults import FaultConfig, FaultInjector
from sync_worker.sandbox.store import (
    ApiError,
    CustomerStore,
    JsonObject,
    invalid,
    iso_ms,
    not_found,
    parse_list_params,
    parse_patch,
)

DEFAULT_SECRET_KEY = "sk_test_sandbox"  # noqa: S105 - the sandbox's well-known test key
DEFAULT_LOG_SIZE = 200_000
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_ALLOWED = {"list": "GET", "one": "GET, PATCH", "external": "GET, PATCH"}
# Marks a PATCH whose body did not parse, as distinct from a body that is JSON null.
_NOT_JSON = object()
_AUTH_MESSAGE = "需要 Secret Key 認證 (a secret key is required"


def _flag(query: Mapping[str, str], name: str) -> bool:
    # The doc's 400 `invalid_request` is for "invalid request parameters": a flag that is not a
    # boolean is one.
    value = query.get(name)
    if value is None or value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise invalid(f"{name} must be true or false")


class RequestLog:
    """The last `maxlen` `/v1` requests, oldest first, each numbered by `seq`."""

    def __init__(self, maxlen: int = DEFAULT_LOG_SIZE) -> None:
        """Keep at most `maxlen` entries; older ones fall off."""
        self._entries: deque[JsonObject] = deque(maxlen=maxlen)
        self._seq = 0
        self._lock = threading.Lock()

    def next_seq(self) -> int:
        """Number the next request."""
        with self._lock:
            self._seq += 1
            return self._seq

    def append(self, entry: JsonObject) -> None:
        """Record one request (`entry["seq"]` from `next_seq`)."""
        with self._lock:
            self._entries.append(entry)

    def clear(self, *, restart: bool = False) -> None:
        """Drop every entry; `restart` also numbers the next request 1."""
        with self._lock:
            self._entries.clear()
            if restart:
                self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def query(
        self,
        *,
        since: int = 0,
        method: str | None = None,
        external_id: str | None = None,
        status: int | None = None,
        limit: int | None = None,
    ) -> list[JsonObject]:
        """Entries after seq `since` matching every filter given, oldest first."""
        found: list[JsonObject] = []
        with self._lock:
            # Walk back from the newest entry so polling for recent requests costs what it finds.
            for entry in reversed(self._entries):
                if entry["seq"] <= since:
                    break
                if method is not None and entry["method"] != method:
                    continue
                if external_id is not None and entry["external_id"] != external_id:
                    continue
                if status is not None and entry["status"] != status:
                    continue
                found.append(entry)
        found.reverse()
        return found if limit is None else found[:limit]


def _json_response(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def _error_response(error: ApiError, request_id: str | None = None) -> Response:
    headers = dict(error.headers)
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return _json_response(error.status, error.body(), headers)


def _route(path: str) -> tuple[str, str]:
    """`(kind, key)` of a `/v1` path: list, one (by id), external, or unknown."""
    segments = path[4:].strip("/").split("/")
    if segments == ["customers"]:
        return "list", ""
    if len(segments) == 3 and segments[0] == "customers" and segments[1] == "external":
        return "external", segments[2]
    if len(segments) == 2 and segments[0] == "customers":
        return "one", segments[1]
    return "unknown", ""


async def _json_body(request: Request) -> object:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid("request body must be JSON") from None


class Sandbox:
    """The state of one sandbox and the endpoints that use it."""

    def __init__(
        self,
        *,
        secret_key: str,
        store: CustomerStore,
        faults: FaultInjector,
        log: RequestLog,
        echo_metadata: bool = False,
    ) -> None:
        """Serve the customers of `store` to requests bearing `secret_key`.

        `echo_metadata` puts each customer's stored metadata into the `/v1` answers, which the
        Recur doc never does: only for experiments with a client that reads it back.
        """
        self.secret_key = secret_key
        self.echo_metadata = echo_metadata
        self.livemode = secret_key.startswith("sk_live_")
        self.store = store
        self.faults = faults
        self.log = log

    def _authenticate(self, header: str | None) -> None:
        if not header:
            raise ApiError(401, "unauthorized", f"{_AUTH_MESSAGE}: missing Authorization)")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if token.startswith("pk_"):
            raise ApiError(
                401, "unauthorized", f"{_AUTH_MESSAGE}; a publishable key cannot access customers)"
            )
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.encode(), self.secret_key.encode()
        ):
            raise ApiError(401, "unauthorized", f"{_AUTH_MESSAGE}: invalid API key)")

    async def v1(self, request: Request) -> Response:
        """Every `/v1` request: faults, auth, routing, and one log entry."""
        latency = self.faults.latency_seconds
        if latency:
            await asyncio.sleep(latency)
        method = request.method
        path: str = request.scope["path"]
        query = request.query_params
        raw = await request.body() if method in _BODY_METHODS else b""
        apply_delay = self.faults.apply_delay_seconds if method == "PATCH" else 0
        if apply_delay:
            await asyncio.sleep(apply_delay)  # the body is in: it lands even if the client left
        payload: object = _NOT_JSON
        logged_body: object = None
        if raw:
            try:
                payload = logged_body = json.loads(raw)
            except ValueError:
                logged_body = raw.decode("utf-8", "replace")
        kind, key = _route(path)
        external_id = (
            key
            if kind == "external" or (kind == "one" and query.get("by_external_id") in _TRUE)
            else None
        )
        late = self.faults.answer_delay(external_id)
        seq = self.log.next_seq()
        request_id = f"req_{seq}"
        try:
            status, content = self._handle(request, kind, key, payload, external_id)
            response = _json_response(status, content, {"X-Request-Id": request_id})
        except ApiError as error:
            status = error.status
            response = _error_response(error, request_id)
        self.log.append(
            {
                "seq": seq,
                "method": method,
                "path": path,
                "query": dict(query),
                "external_id": external_id,
                "body": logged_body,
                "status": status,
                "at": iso_ms(int(time.time() * 1000)),
            }
        )
        if late:  # handled (and logged) now, answered after the client gave up: a lost answer
            await asyncio.sleep(late)
        return response

    def _handle(
        self, request: Request, kind: str, key: str, payload: object, external_id: str | None
    ) -> tuple[int, JsonObject]:
        refusal = self.faults.before_auth()
        if refusal is not None:
            raise refusal
        self._authenticate(request.headers.get("authorization"))
        refusal = self.faults.after_auth(external_id)
        if refusal is not None:
            raise refusal
        method = request.method
        live, echo = self.livemode, self.echo_metadata
        if kind == "unknown":
            raise not_found(f"no route {method} {request.scope['path']}")
        if kind == "list" and method == "GET":
            page = self.store.list(parse_list_params(request.query_params))
            return 200, {
                "object": "list",
                "data": [c.to_list_item_json(livemode=live, metadata=echo) for c in page.data],
                "has_more": page.has_more,
                "next_cursor": page.next_cursor,
                "livemode": live,
            }
        by_external = kind == "external" or _flag(request.query_params, "by_external_id")
        if kind != "list" and method == "GET":
            found = self.store.get_by_external_id(key) if by_external else self.store.get(key)
            return 200, found.to_detail_json(livemode=live, metadata=echo)
        if kind != "list" and method == "PATCH":
            if payload is _NOT_JSON:
                raise invalid("request body must be a JSON object")
            patch = parse_patch(payload)
            if by_external:
                updated = self.store.update(patch, external_id=key)
            else:
                updated = self.store.update(patch, customer_id=key)
            return 200, updated.to_json(livemode=live, metadata=echo)
        raise ApiError(
            405,
            "invalid_request",
            f"{method} is not allowed on {request.scope['path']}",
            headers={"Allow": _ALLOWED[kind]},
        )

    # Control endpoints.

    async def health(self, request: Request) -> Response:
        """Liveness plus a few counts."""
        return _json_response(
            200,
            {
                "status": "ok",
                "customers": len(self.store),
                "requests_logged": len(self.log),
                "livemode": self.livemode,
            },
        )

    async def reset(self, request: Request) -> Response:
        """Back to an empty sandbox with no faults."""
        self.store.clear()
        self.faults.configure(FaultConfig())
        self.log.clear(restart=True)
        return _json_response(200, {"status": "reset"})

    async def create_customers(self, request: Request) -> Response:
        """Create customers from a JSON list; all or none."""
        body = await _json_body(request)
        if not isinstance(body, list):
            raise invalid("body must be a JSON list of customers")
        created = self.store.create_many(body)
        data = [c.to_detail_json(livemode=self.livemode, metadata=True) for c in created]
        return _json_response(201, {"object": "list", "data": data})

    async def read_customer(self, request: Request) -> Response:
        """One customer by id or external id, with its metadata, without auth, faults or log."""
        params = request.path_params
        if "external_id" in params:
            found = self.store.get_by_external_id(params["external_id"])
        else:
            found = self.store.get(params["customer_id"])
        return _json_response(200, found.to_detail_json(livemode=self.livemode, metadata=True))

    async def seed(self, request: Request) -> Response:
        """Demo customers `{prefix}{start}` .. `{prefix}{start + count - 1}`."""
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise invalid('body must be {"count": n, "prefix": "user_", "start": 1, "bound": true}')
        count, prefix, start = body.get("count"), body.get("prefix", "user_"), body.get("start", 1)
        bound = body.get("bound", True)
        if not isinstance(count, int) or not isinstance(start, int) or not isinstance(prefix, str):
            raise invalid("count and start must be integers, prefix a string")
        if not isinstance(bound, bool):
            raise invalid("bound must be true or false")
        created = self.store.seed(count, prefix=prefix, start=start, bound=bound)
        return _json_response(
            201,
            {
                "created": len(created),
                "first_id": created[0].id if created else None,
                "last_id": created[-1].id if created else None,
                "total": len(self.store),
            },
        )

    async def requests(self, request: Request) -> Response:
        """The request log, filtered."""
        query = request.query_params
        try:
            since = int(query.get("since", "0"))
            status = int(query["status"]) if "status" in query else None
            limit = int(query["limit"]) if "limit" in query else None
        except ValueError:
            raise invalid("since, status and limit must be integers") from None
        entries = self.log.query(
            since=since,
            method=query.get("method"),
            external_id=query.get("external_id"),
            status=status,
            limit=limit,
        )
        return _json_response(200, {"object": "list", "data": entries})

    async def clear_requests(self, request: Request) -> Response:
        """Empty the request log."""
        self.log.clear()
        return _json_response(200, {"status": "cleared"})

    async def faults_endpoint(self, request: Request) -> Response:
        """GET reads the faults, PUT replaces them, PATCH merges into them."""
        if request.method != "GET":
            body = await _json_body(request)
            base = self.faults.snapshot() if request.method == "PATCH" else None
            self.faults.configure(FaultConfig.from_json(body, base=base))
        return _json_response(200, self.faults.snapshot().to_json())


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)  # noqa: S101 - Starlette only routes ApiError here
    return _error_response(exc)


class _AnyPath(Convertor[str]):
    """Like Starlette's `path`, but matching newlines too: a `/v1` path with control characters
    is still a `/v1` request (authenticated, logged, answered in the envelope)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anything", _AnyPath())


def create_app(
    *,
    secret_key: str = DEFAULT_SECRET_KEY,
    customers: int = 0,
    error_rate: float = 0.0,
    latency_ms: int = 0,
    rate_limit_rps: float = 0.0,
    retry_after_seconds: int = 1,
    request_log_size: int = DEFAULT_LOG_SIZE,
    random_seed: int | None = None,
    echo_metadata: bool = False,
) -> Starlette:
    """Build a sandbox app with `customers` demo customers and the given faults.

    The `Sandbox` behind it is `app.state.sandbox`, for in-process tests.
    """
    faults = FaultConfig.from_json(
        {
            "error_rate": error_rate,
            "latency_ms": latency_ms,
            "rate_limit_rps": rate_limit_rps,
            "retry_after_seconds": retry_after_seconds,
        }
    )
    rng = random.Random(random_seed)  # noqa: S311 - drives simulated faults only
    sandbox = Sandbox(
        secret_key=secret_key,
        store=CustomerStore(),
        faults=FaultInjector(faults, rng=rng),
        log=RequestLog(request_log_size),
        echo_metadata=echo_metadata,
    )
    if customers:
        sandbox.store.seed(customers)
    routes = [
        Route("/v1/{path:anything}", sandbox.v1, methods=_ALL_METHODS),
        Route("/_sandbox/health", sandbox.health, methods=["GET"]),
        Route("/_sandbox/reset", sandbox.reset, methods=["POST"]),
        Route("/_sandbox/customers", sandbox.create_customers, methods=["POST"]),
        Route("/_sandbox/customers/external/{external_id}", sandbox.read_customer),
        Route("/_sandbox/customers/{customer_id}", sandbox.read_customer),
        Route("/_sandbox/seed", sandbox.seed, methods=["POST"]),
        Route("/_sandbox/requests", sandbox.requests, methods=["GET"]),
        Route("/_sandbox/requests", sandbox.clear_requests, methods=["DELETE"]),
        Route("/_sandbox/faults", sandbox.faults_endpoint, methods=["GET", "PUT", "PATCH"]),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: _api_error})
    app.state.sandbox = sandbox
    return app
