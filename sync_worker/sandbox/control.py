"""`SandboxControl`: a typed client of the sandbox's `/_sandbox` endpoints, for tests and benches.

It never touches `/v1`, so it consumes no scripted fault and adds nothing to the request log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, TypedDict, cast

import httpx

Customer = dict[str, Any]


class LoggedRequest(TypedDict):
    """One `/v1` request as the sandbox saw it."""

    seq: int
    method: str
    path: str
    query: dict[str, str]
    external_id: str | None
    body: Any
    status: int
    at: str


class Faults(TypedDict):
    """The fault settings; `scripts` shows the statuses still queued per external id."""

    error_rate: float
    latency_ms: int
    apply_delay_ms: int
    rate_limit_rps: float
    outage: bool
    retry_after_seconds: int
    scripts: dict[str, list[int]]
    lost_answers: dict[str, int]
    lost_answer_ms: int


class SeedResult(TypedDict):
    """What `seed` created: how many, the first and last new ids, and the store's size."""

    created: int
    first_id: str | None
    last_id: str | None
    total: int


class SandboxControl:
    """Drives one sandbox: reset, create and read customers, faults, the request log."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        """`base_url` is the sandbox root, e.g. `http://127.0.0.1:8100`."""
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url + "/_sandbox", timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any]:
        """`{"status": "ok", "customers": n, "requests_logged": n, "livemode": bool}`."""
        return cast(dict[str, Any], self._call("GET", "/health"))

    def reset(self) -> None:
        """Forget every customer, fault and logged request."""
        self._call("POST", "/reset")

    def create_customers(self, customers: Iterable[Mapping[str, Any]]) -> list[Customer]:
        """Create customers from `{email, name, external_id, metadata, status}`; all or none."""
        body = self._call("POST", "/customers", json=list(customers))
        return cast(list[Customer], body["data"])

    def create_customer(
        self,
        email: str,
        *,
        name: str | None = None,
        external_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        status: str = "ACTIVE",
    ) -> Customer:
        """Create one customer and return it as GET would, with its stored metadata."""
        spec = {
            "email": email,
            "name": name,
            "external_id": external_id,
            "metadata": dict(metadata or {}),
            "status": status,
        }
        return self.create_customers([spec])[0]

    def seed(
        self, count: int, *, prefix: str = "user_", start: int = 1, bound: bool = True
    ) -> SeedResult:
        """Create demo customers `{prefix}{start}` .. with emails `{prefix}{n}@example.com`.

        `bound=False` leaves their external id null, as Recur Checkout creates customers.
        """
        body = {"count": count, "prefix": prefix, "start": start, "bound": bound}
        return cast(SeedResult, self._call("POST", "/seed", json=body))

    def customer(self, customer_id: str) -> Customer | None:
        """The customer with this id and its stored metadata, or None; no auth, fault or log."""
        return self._read(f"/customers/{customer_id}")

    def customer_by_external_id(self, external_id: str) -> Customer | None:
        """The customer bound to this external id, with its metadata, or None (no log entry)."""
        return self._read(f"/customers/external/{external_id}")

    def _read(self, path: str) -> Customer | None:
        response = self._http.get(path)
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        response.raise_for_status()
        return cast(Customer, response.json())

    def requests(
        self,
        *,
        since: int | None = None,
        method: str | None = None,
        external_id: str | None = None,
        status: int | None = None,
        limit: int | None = None,
    ) -> list[LoggedRequest]:
        """Logged `/v1` requests after seq `since`, oldest first, matching every filter given."""
        filters = {
            "since": since,
            "method": method,
            "external_id": external_id,
            "status": status,
            "limit": limit,
        }
        params = {key: value for key, value in filters.items() if value is not None}
        return cast(list[LoggedRequest], self._call("GET", "/requests", params=params)["data"])

    def clear_requests(self) -> None:
        """Empty the request log."""
        self._call("DELETE", "/requests")

    def faults(self) -> Faults:
        """The current faults, with what is left of each script."""
        return cast(Faults, self._call("GET", "/faults"))

    def set_faults(
        self,
        *,
        error_rate: float = 0.0,
        latency_ms: int = 0,
        apply_delay_ms: int = 0,
        rate_limit_rps: float = 0.0,
        outage: bool = False,
        retry_after_seconds: int = 1,
        scripts: Mapping[str, list[int | str]] | None = None,
    ) -> Faults:
        """Replace every fault: what is not given is turned off."""
        body = {
            "error_rate": error_rate,
            "latency_ms": latency_ms,
            "apply_delay_ms": apply_delay_ms,
            "rate_limit_rps": rate_limit_rps,
            "outage": outage,
            "retry_after_seconds": retry_after_seconds,
            "scripts": dict(scripts or {}),
        }
        return cast(Faults, self._call("PUT", "/faults", json=body))

    def update_faults(self, **changes: Any) -> Faults:
        """Change only the faults named, e.g. `update_faults(outage=False)`."""
        return cast(Faults, self._call("PATCH", "/faults", json=changes))

    def clear_faults(self) -> Faults:
        """Turn every fault off."""
        return self.set_faults()
