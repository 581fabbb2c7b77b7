"""The shapes Recur sends and accepts (the Customers API), as pydantic models."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9_-]+$"
NAME_MAX_CHARS = 255


class Customer(BaseModel):
    """A Recur customer; unknown fields are kept so nothing Recur adds is lost."""

    model_config = ConfigDict(extra="allow")

    object: Literal["customer"] = "customer"
    id: str
    email: str
    name: str | None = None
    external_id: str | None = None
    email_verified: bool = False
    status: str = "ACTIVE"
    created_at: datetime | None = None
    updated_at: datetime | None = None
    livemode: bool = False
    metadata: dict[str, Any] | None = None


class CustomerPage(BaseModel):
    """One page of `GET /v1/customers`."""

    model_config = ConfigDict(extra="allow")

    object: Literal["list"] = "list"
    data: list[Customer]
    has_more: bool
    next_cursor: str | None = None
    livemode: bool = False


class ListedCustomer(TypedDict):
    """A listed customer as far as the reconciliation compares it (drift.compare_page)."""

    id: str
    email: str
    name: NotRequired[str | None]
    external_id: NotRequired[str | None]
    metadata: NotRequired[dict[str, Any] | None]


class _ListedId(TypedDict):
    id: str


class ListingPaging(TypedDict):
    """The paging fields of a page of `GET /v1/customers`, with only the customers' ids."""

    data: list[_ListedId]
    has_more: bool
    next_cursor: NotRequired[str | None]


@dataclass(frozen=True, slots=True)
class RawCustomerPage:
    """A page of `GET /v1/customers` as Recur sent it, and where the next page starts.

    Reading every customer every night, the reconciliation's paging is its critical path, so
    the customers are not decoded in Python at all: the body goes as it is to the Lua script
    that compares it inside Redis (page_script.py), which checks the fields it compares. Only
    the paging fields are read here (bench/reconcile.py measured validating whole pages into
    models at 0.4 ms a page, twice what decoding the body costs the raw loop).
    """

    body: bytes
    next: str | None
    """The cursor of the next page; None when this page is the last."""

    @classmethod
    def of(cls, body: bytes, paging: ListingPaging) -> RawCustomerPage:
        """The page; an empty page ends the listing whatever `has_more` says."""
        ids = paging["data"]
        if not paging["has_more"] or not ids:
            return cls(body, None)
        return cls(body, paging.get("next_cursor") or ids[-1]["id"])


class CustomerPatch(BaseModel):
    """The body of a PATCH: only the fields that are set are sent. `email` is immutable upstream."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX_CHARS)
    external_id: str | None = Field(default=None, pattern=EXTERNAL_ID_PATTERN)
    metadata: dict[str, Any] | None = None
    unbind_external_id: bool = Field(default=False, exclude=True)

    def body(self) -> dict[str, Any]:
        """The JSON body: set fields only, and `external_id: null` when unbinding."""
        payload: dict[str, Any] = self.model_dump(exclude_none=True)
        if self.unbind_external_id:
            payload["external_id"] = None
        return payload
