"""The shapes Recur sends and accepts (the Customers API), as pydantic models."""

from __future__ import annotations

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
    """A listed customer reduced to the fields the reconciliation reads; the rest is dropped.

    Reading every customer every night, the reconciliation's page fetch is its critical path:
    validating a page of 100 into `Customer` models cost 0.4 ms of it on a loaded 2-core machine,
    these dicts a sixth of that (bench/reconcile.py). The fields read are still validated.
    """

    id: str
    email: str
    name: NotRequired[str | None]
    external_id: NotRequired[str | None]
    metadata: NotRequired[dict[str, Any] | None]


class CustomerListing(TypedDict):
    """One page of `GET /v1/customers` as `ListedCustomer`s."""

    data: list[ListedCustomer]
    has_more: bool
    next_cursor: NotRequired[str | None]


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
