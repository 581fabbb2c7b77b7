"""The sandbox's customers: an in-memory, thread-safe store and the validation the API applies.

Pure logic: no web imports, so the rules are tested by calling them directly. Every refusal is
an `ApiError` carrying the HTTP status and the error code of the Recur doc, which the ASGI app
turns into `{"error": {"code": ..., "message": ...}}` unchanged.

Where the Recur doc is silent, the sandbox decides, and says so here:

- `metadata` is kept on every customer but, as in the doc, no `/v1` answer carries it (it is
  write-only through the API); `echo_metadata` puts it back into every answer, for experiments,
  and the control API always shows it, so tests can assert what Recur was sent. A PATCH
  carrying `metadata` REPLACES the whole object (no key-by-key merge); `{}` clears it.
- Customer ids are `cus_` + a ULID-like string: lexical order is creation order, so the list
  is ordered by id and a cursor is found with a bisect, whatever the store's size.
- Emails are unique in the store (one customer per email and mode), so the email filter is a
  dict lookup. Matching is exact, as the doc says.
- A PATCH body is validated before the customer is looked up: a malformed body is a 400 or
  422 even for an unknown customer.
- `updated_at` moves forward by at least one millisecond on every successful PATCH, so a
  client can always tell two writes apart.
"""

from __future__ import annotations

import base64
import random
import re
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

STATUSES = frozenset({"ACTIVE", "BANNED"})
NAME_MAX = 255
LIMIT_DEFAULT = 10
LIMIT_MAX = 100
EXTERNAL_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
_PATCH_FIELDS = frozenset({"name", "external_id", "metadata"})
_CREATE_FIELDS = frozenset(
    {"email", "name", "external_id", "metadata", "status", "email_verified"}
    | {"subscriptions", "orders_count"}
)
# RFC 4648 base32 spells digits in an order ASCII does not sort; Crockford's alphabet does.
_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghjkmnpqrstvwxyz"
)

JsonObject = dict[str, Any]


class ApiError(Exception):
    """A refusal as the API reports it: HTTP status, error code, message, extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> JsonObject:
        """The error envelope of the Recur doc."""
        return {"error": {"code": self.code, "message": self.message}}


def invalid(message: str) -> ApiError:
    """A 400 `invalid_request`."""
    return ApiError(400, "invalid_request", message)


def not_found(message: str = "客戶不存在 (customer not found)") -> ApiError:
    """A 404 `resource_not_found`."""
    return ApiError(404, "resource_not_found", message)


def iso_ms(epoch_ms: int) -> str:
    """`2025-01-15T10:00:00.000Z` for a Unix time in milliseconds."""
    seconds, millis = divmod(epoch_ms, 1000)
    return f"{_iso_seconds(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    # Every response formats two or three stamps, mostly of the same few seconds.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


@dataclass(frozen=True, slots=True)
class Customer:
    """One customer. Frozen: an update swaps in a new object, so readers never see half a write."""

    id: str
    email: str
    name: str | None
    external_id: str | None
    status: str
    email_verified: bool
    created_ms: int
    updated_ms: int
    metadata: JsonObject = field(default_factory=dict)
    subscriptions: tuple[JsonObject, ...] = ()
    orders_count: int = 0

    def to_json(self, *, livemode: bool, metadata: bool = False) -> JsonObject:
        """The customer object returned by PATCH; `metadata` adds the stored metadata."""
        body: JsonObject = {
            "object": "customer",
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "external_id": self.external_id,
            "email_verified": self.email_verified,
            "status": self.status,
            "created_at": iso_ms(self.created_ms),
            "updated_at": iso_ms(self.updated_ms),
            "livemode": livemode,
        }
        if metadata:
            body["metadata"] = self.metadata
        return body

    def to_detail_json(self, *, livemode: bool, metadata: bool = False) -> JsonObject:
        """The object returned by GET one customer: adds `subscriptions`."""
        body = self.to_json(livemode=livemode, metadata=metadata)
        body["subscriptions"] = list(self.subscriptions)
        return body

    def to_list_item_json(self, *, livemode: bool, metadata: bool = False) -> JsonObject:
        """An item of the list: adds `subscriptions_count` and `orders_count`."""
        body = self.to_json(livemode=livemode, metadata=metadata)
        body["subscriptions_count"] = len(self.subscriptions)
        body["orders_count"] = self.orders_count
        return body


@dataclass(frozen=True, slots=True)
class CustomerPatch:
    """A validated PATCH body; `has_external_id` tells "unbind" (None) from "absent"."""

    name: str | None = None
    has_external_id: bool = False
    external_id: str | None = None
    metadata: JsonObject | None = None


@dataclass(frozen=True, slots=True)
class ListParams:
    """Validated query of `GET /v1/customers`."""

    limit: int = LIMIT_DEFAULT
    starting_after: str | None = None
    email: str | None = None
    status: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the list, with the cursor of its last item when more follow."""

    data: list[Customer]
    has_more: bool
    next_cursor: str | None


def check_external_id(value: object) -> str | None:
    """A valid external id or None; 400 for a wrong type, 422 for a malformed string."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid("external_id must be a string or null")
    if not EXTERNAL_ID_PATTERN.fullmatch(value):
        raise ApiError(
            422,
            "validation_error",
            "外部 ID 格式不合法，僅允許英數字、底線、連字號 "
            "(external_id may contain only letters, digits, '_' and '-')",
        )
    return value


def _check_name(value: object) -> str:
    # The doc counts characters; Python's len() counts code points, which is what it means.
    if not isinstance(value, str):
        raise invalid("name must be a string")
    if not 1 <= len(value) <= NAME_MAX:
        raise invalid(f"name must be 1-{NAME_MAX} characters (客戶名稱 1-255 字元)")
    return value


def parse_patch(body: object) -> CustomerPatch:
    """Validate a decoded PATCH body; every 400 is checked before the 422 of the external id."""
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    if "email" in body:
        raise invalid("email 在建立後不可變更 (email cannot be changed; create a new customer)")
    unknown = sorted(set(body) - _PATCH_FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}")
    name = _check_name(body["name"]) if "name" in body else None
    external_id = body.get("external_id")
    if external_id is not None and not isinstance(external_id, str):
        raise invalid("external_id must be a string or null")
    metadata = body.get("metadata")
    if "metadata" in body and not isinstance(metadata, dict):
        raise invalid("metadata must be an object")
    return CustomerPatch(
        name=name,
        has_external_id="external_id" in body,
        external_id=check_external_id(external_id),
        metadata=metadata,
    )


def parse_list_params(query: Mapping[str, str]) -> ListParams:
    """Validate the query of the list; anything out of range is a 400."""
    raw_limit = query.get("limit")
    limit = LIMIT_DEFAULT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise invalid("limit must be an integer between 1 and 100") from None
        if not 1 <= limit <= LIMIT_MAX:
            raise invalid("limit must be an integer between 1 and 100")
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise invalid("status must be ACTIVE or BANNED")
    return ListParams(
        limit=limit,
        # An empty cursor is no cursor: `starting_after=` is what a client sends for page one.
        starting_after=query.get("starting_after") or None,
        email=query.get("email"),
        status=status,
    )


class CustomerStore:
    """All customers of one mode, indexed by id, external id, email and status."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, rng: random.Random | None = None
    ) -> None:
        """`clock` returns Unix seconds; `rng` draws the random part of new ids."""
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - ids need order, not secrecy
        self._lock = threading.Lock()
        self._last_id_value = 0
        self._by_id: dict[str, Customer] = {}
        self._by_external_id: dict[str, str] = {}
        self._by_email: dict[str, str] = {}
        self._order: list[str] = []
        self._by_status: dict[str, list[str]] = {status: [] for status in STATUSES}

    def __len__(self) -> int:
        return len(self._by_id)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _new_id(self, now_ms: int) -> str:
        # ULID layout: 48 bits of milliseconds, 80 random bits; bumping the last value by one
        # when the clock stalls or steps back keeps ids strictly increasing.
        value = (now_ms << 80) | self._rng.getrandbits(80)
        value = max(value, self._last_id_value + 1)
        self._last_id_value = value
        encoded = base64.b32encode(value.to_bytes(16, "big")).translate(_TO_CROCKFORD)
        return "cus_" + encoded[:26].decode()

    def clear(self) -> None:
        """Forget every customer (ids keep increasing across a clear)."""
        with self._lock:
            self._by_id.clear()
            self._by_external_id.clear()
            self._by_email.clear()
            self._order.clear()
            for ids in self._by_status.values():
                ids.clear()

    def create_many(self, specs: Iterable[Mapping[str, object]]) -> list[Customer]:
        """Create customers from `{email, name, external_id, metadata, status, ...}`; all or none.

        400 for a malformed spec, 422 for a malformed external id, 409 when an email or external
        id is already taken (in the store or earlier in the same batch).
        """
        checked = [_check_spec(spec) for spec in specs]
        with self._lock:
            emails: set[str] = set()
            external_ids: set[str] = set()
            for spec in checked:
                if spec["email"] in self._by_email or spec["email"] in emails:
                    raise ApiError(409, "conflict", f"email {spec['email']} is already used")
                external_id = spec["external_id"]
                if external_id is not None and (
                    external_id in self._by_external_id or external_id in external_ids
                ):
                    raise ApiError(409, "conflict", f"external_id {external_id} is already used")
                emails.add(spec["email"])
                if external_id is not None:
                    external_ids.add(external_id)
            now_ms = self._now_ms()
            created = [
                Customer(id=self._new_id(now_ms), created_ms=now_ms, updated_ms=now_ms, **spec)
                for spec in checked
            ]
            for customer in created:
                self._index(customer)
            return created

    def create(self, **spec: object) -> Customer:
        """Create one customer; see `create_many`."""
        return self.create_many([spec])[0]

    def seed(
        self, count: int, *, prefix: str = "user_", start: int = 1, bound: bool = True
    ) -> list[Customer]:
        """Create demo customers `{prefix}{start}` .. with matching emails and names.

        With `bound` false they have no external id (`external_id: null`), as Recur Checkout
        creates customers: only their email `{prefix}{n}@example.com` finds them.
        """
        if count < 0:
            raise invalid("count must not be negative")
        return self.create_many(
            {
                "email": f"{prefix}{n}@example.com",
                "name": f"測試用戶 {n}",
                "external_id": f"{prefix}{n}" if bound else None,
            }
            for n in range(start, start + count)
        )

    def _index(self, customer: Customer) -> None:
        self._by_id[customer.id] = customer
        self._order.append(customer.id)
        self._by_status[customer.status].append(customer.id)
        self._by_email[customer.email] = customer.id
        if customer.external_id is not None:
            self._by_external_id[customer.external_id] = customer.id

    def get(self, customer_id: str) -> Customer:
        """The customer with this id, or a 404."""
        with self._lock:
            customer = self._by_id.get(customer_id)
        if customer is None:
            raise not_found()
        return customer

    def get_by_external_id(self, external_id: str) -> Customer:
        """The customer bound to this external id, or a 404."""
        with self._lock:
            customer_id = self._by_external_id.get(external_id)
            if customer_id is None:
                raise not_found()
            return self._by_id[customer_id]

    def update(
        self,
        patch: CustomerPatch,
        *,
        customer_id: str | None = None,
        external_id: str | None = None,
    ) -> Customer:
        """Apply a PATCH to the customer named by id or by external id; 404, 409 or the result."""
        with self._lock:
            if customer_id is None:
                customer_id = self._by_external_id.get(external_id or "")
            current = self._by_id.get(customer_id) if customer_id is not None else None
            if current is None:
                raise not_found()
            changes: dict[str, Any] = {
                "updated_ms": max(self._now_ms(), current.updated_ms + 1),
            }
            if patch.name is not None:
                changes["name"] = patch.name
            if patch.metadata is not None:
                changes["metadata"] = patch.metadata
            if patch.has_external_id and patch.external_id != current.external_id:
                new = patch.external_id
                if new is not None and new in self._by_external_id:
                    raise ApiError(
                        409,
                        "conflict",
                        f"外部 ID 已被同環境中的其他客戶使用 (external_id {new} is already used "
                        "by another customer)",
                    )
                if current.external_id is not None:
                    del self._by_external_id[current.external_id]
                if new is not None:
                    self._by_external_id[new] = current.id
                changes["external_id"] = new
            updated = replace(current, **changes)
            self._by_id[current.id] = updated
            return updated

    def list(self, params: ListParams) -> Page:
        """One page, in id order; the work is proportional to the page, not to the store."""
        with self._lock:
            after = params.starting_after
            if after is not None and after not in self._by_id:
                raise invalid(f"starting_after {after} is not a known customer id")
            if params.email is not None:
                found = self._by_email.get(params.email)
                ids = [found] if found is not None else []
                if params.status is not None:
                    ids = [i for i in ids if self._by_id[i].status == params.status]
            elif params.status is not None:
                ids = self._by_status[params.status]
            else:
                ids = self._order
            start = 0 if after is None else bisect_right(ids, after)
            window = ids[start : start + params.limit + 1]
            has_more = len(window) > params.limit
            data = [self._by_id[i] for i in window[: params.limit]]
            return Page(
                data=data,
                has_more=has_more,
                next_cursor=data[-1].id if has_more else None,
            )


def _check_spec(spec: Mapping[str, object]) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise invalid("each customer must be a JSON object")
    unknown = sorted(set(spec) - _CREATE_FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}")
    email = spec.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise invalid("email is required and must look like an address")
    name = spec.get("name")
    status = spec.get("status", "ACTIVE")
    if status not in STATUSES:
        raise invalid("status must be ACTIVE or BANNED")
    metadata = spec.get("metadata", {})
    if not isinstance(metadata, dict):
        raise invalid("metadata must be an object")
    email_verified = spec.get("email_verified", False)
    if not isinstance(email_verified, bool):
        raise invalid("email_verified must be a boolean")
    subscriptions = spec.get("subscriptions", [])
    if not isinstance(subscriptions, list) or not all(isinstance(s, dict) for s in subscriptions):
        raise invalid("subscriptions must be a list of objects")
    orders_count = spec.get("orders_count", 0)
    if not isinstance(orders_count, int) or isinstance(orders_count, bool) or orders_count < 0:
        raise invalid("orders_count must be a non-negative integer")
    return {
        "email": email,
        "name": None if name is None else _check_name(name),
        "external_id": check_external_id(spec.get("external_id")),
        "status": status,
        "email_verified": email_verified,
        "metadata": metadata,
        "subscriptions": tuple(subscriptions),
        "orders_count": orders_count,
    }
