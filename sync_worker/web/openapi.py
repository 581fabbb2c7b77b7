"""The HTTP contract as OpenAPI documents, generated from the app's own routes.

- `GET /openapi.json`, public: the webhook intake, health and metrics. The intake reads its raw
  body (the signature covers the exact bytes), so FastAPI cannot see its request or answers;
  they are declared here from models built on the same limits the intake enforces.
- `GET /admin/api/openapi.json`, with the admin bearer token: the operator API and the
  dashboard's routes, which are nobody else's business.

FastAPI's own `/openapi.json` is turned off in the app factory: it would list the admin routes
to anyone.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from pydantic.json_schema import models_json_schema

from sync_worker.intake.events import ID_MAX_CHARS, METADATA_MAX_DEPTH
from sync_worker.intake.signatures import CODES as SIGNATURE_CHECKS
from sync_worker.recur.models import EXTERNAL_ID_PATTERN, NAME_MAX_CHARS
from sync_worker.settings import MAX_BODY_BYTES
from sync_worker.web.auth import SESSION_COOKIE, require_bearer

PUBLIC_PATH = "/openapi.json"
ADMIN_PATH = "/admin/api/openapi.json"
INTAKE_PATH = "/webhooks/user-updated"
EVENT_ID_PATTERN = r"^[\x21-\x7e]+$"
_REF = "#/components/schemas/{model}"
_AT_LEAST_ONE: JsonDict = {
    "anyOf": [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
        for name in ("name", "metadata")
    ]
}

UserId = Field(
    min_length=1,
    max_length=ID_MAX_CHARS,
    pattern=EXTERNAL_ID_PATTERN,
    description="Your user id, which is the Recur customer's external_id.",
)


class UserFields(BaseModel):
    """The user's changed fields: at least one of `name` and `metadata`."""

    model_config = ConfigDict(json_schema_extra=_AT_LEAST_ONE)

    user_id: str = UserId
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=NAME_MAX_CHARS,
        description=f"Not empty, at most {NAME_MAX_CHARS} UTF-16 code units, no control "
        "characters.",
    )
    email: str | None = Field(
        default=None,
        max_length=320,
        description="Never written to Recur: used to bind a customer without an external_id "
        "by email, and in reconciliation reports.",
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description=f"Nested at most {METADATA_MAX_DEPTH} levels. One field: the latest "
        "object replaces the one before.",
    )


class _Envelope(BaseModel):
    id: str = Field(
        min_length=1,
        max_length=ID_MAX_CHARS,
        pattern=EVENT_ID_PATTERN,
        description="Your event id: the same on every retry of one change, new for each change.",
    )
    timestamp: datetime = Field(
        description="When the change happened in your database: ISO 8601 with a time zone, "
        "at most WEBHOOK_TOLERANCE_SECONDS ahead of the server's clock. Per field, the latest "
        "timestamp wins."
    )


class UserUpdated(_Envelope):
    """A change of a user's name, metadata or email."""

    type: Literal["user.updated"]
    data: UserFields


class ExternalIdChange(BaseModel):
    """The old and new id of a user; `new_user_id: null` unbinds the Recur customer."""

    user_id: str = UserId
    new_user_id: str | None = Field(
        min_length=1,
        max_length=ID_MAX_CHARS,
        pattern=EXTERNAL_ID_PATTERN,
        description="The new external_id (different from user_id), or null to unbind.",
    )


class ExternalIdChanged(_Envelope):
    """A user's id changed (a migration): the Recur customer is rebound or unbound."""

    type: Literal["user.external_id_changed"]
    data: ExternalIdChange


class BareUserUpdate(BaseModel):
    """The bare form: its event id is `webhook-id` and its time `webhook-timestamp`.

    That is the time it was sent, so a retried old delivery can win over a newer change: prefer
    the envelope.
    """

    model_config = ConfigDict(json_schema_extra=_AT_LEAST_ONE)

    userId: str = UserId
    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX_CHARS)
    email: str | None = Field(default=None, max_length=320)
    metadata: dict[str, Any] | None = None


class Accepted(BaseModel):
    """Stored durably; it will be sent to Recur."""

    status: Literal["accepted"]
    event_id: str
    user_id: str


class Duplicate(BaseModel):
    """This event id was already stored: a retry that is safe to stop."""

    status: Literal["duplicate"]
    event_id: str


class FieldError(BaseModel):
    """One invalid field."""

    field: str = Field(description="Where, e.g. `data.user_id`.")
    message: str


class ErrorDetail(BaseModel):
    """What was refused and why."""

    code: str
    message: str
    fields: list[FieldError] | None = Field(default=None, description="With a 422 only.")


class Error(BaseModel):
    """A refusal."""

    error: ErrorDetail


class Unavailable(BaseModel):
    """Not stored: retry the same event id later."""

    status: Literal["unavailable"]
    message: str


_EVENT_FORMS: list[type[BaseModel]] = [UserUpdated, ExternalIdChanged, BareUserUpdate]
_MODELS: list[type[BaseModel]] = [
    *_EVENT_FORMS,
    Accepted,
    Duplicate,
    Error,
    Unavailable,
]

INTAKE_EXAMPLES: dict[str, dict[str, Any]] = {
    "user.updated": {
        "id": "evt_01JD7X4K8M",
        "type": "user.updated",
        "timestamp": "2026-11-24T10:00:00.123Z",
        "data": {
            "user_id": "user_123",
            "name": "王大明",
            "email": "a@b.tw",
            "metadata": {"plan": "pro"},
        },
    },
    "user.external_id_changed": {
        "id": "evt_01JD7X5A2B",
        "type": "user.external_id_changed",
        "timestamp": "2026-11-24T10:05:00Z",
        "data": {"user_id": "user_123", "new_user_id": "member_123"},
    },
    "unbind": {
        "id": "evt_01JD7X6C3D",
        "type": "user.external_id_changed",
        "timestamp": "2026-11-24T10:06:00Z",
        "data": {"user_id": "member_123", "new_user_id": None},
    },
    "bare form": {"userId": "user_123", "name": "王大明", "email": "a@b.tw"},
}
"""The request examples of the document; the test suite posts each to the real intake."""


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def _intake_operation() -> dict[str, Any]:
    signed = "Standard Webhooks: see the webhook-signature header."
    return {
        "summary": "Accept one signed user event",
        "description": (
            "Signed per Standard Webhooks with WEBHOOK_SECRET. The body is one of the envelope "
            "forms (`user.updated`, `user.external_id_changed`) or the bare form. Answered "
            "only once the event is durably stored; nothing calls Recur inside the request."
        ),
        "operationId": "user_updated",
        "parameters": [
            _header("webhook-id", "The event id (for the envelope, its `id`)."),
            _header(
                "webhook-timestamp",
                "Unix seconds when signed; within WEBHOOK_TOLERANCE_SECONDS (300) of the "
                "server's clock.",
            ),
            _header(
                "webhook-signature",
                "`v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`, keyed "
                "with the base64-decoded secret after `whsec_`; space-separated list allowed.",
            ),
        ],
        "requestBody": {
            "required": True,
            "description": f"At most {MAX_BODY_BYTES} bytes. {signed}",
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [_ref(UserUpdated), _ref(ExternalIdChanged), _ref(BareUserUpdate)]
                    },
                    "examples": {name: {"value": value} for name, value in INTAKE_EXAMPLES.items()},
                }
            },
        },
        "responses": {
            "202": _json(Accepted, "Accepted: stored durably."),
            "200": _json(Duplicate, "Duplicate: this event id was already accepted."),
            "400": _json(Error, "`invalid_json`: the body is not JSON."),
            "401": _json(
                Error,
                "The signature check failed; `error.code` names the check ("
                + ", ".join(f"`{code}`" for code in SIGNATURE_CHECKS)
                + ") and `error.message` says what to fix, never anything secret.",
            ),
            "413": _json(Error, f"`payload_too_large`: the body is over {MAX_BODY_BYTES} bytes."),
            "422": _json(
                Error,
                "`validation_error`: `error.fields` names each invalid field (an envelope "
                "`timestamp` without a time zone, or too far ahead, names `timestamp`).",
            ),
            "503": {
                **_json(
                    Unavailable,
                    "Not safely stored: Redis is unreachable (`Retry-After: 5`), or with "
                    "REDIS_MIN_REPLICAS not yet held by enough replicas (`Retry-After: 1`). "
                    "Retry the same event id.",
                ),
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            },
        },
    }


def _is_admin(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


def _refs(value: Any) -> Iterator[str]:
    """Every schema name a part of a document refers to."""
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str):
            yield ref.rsplit("/", 1)[-1]
        for item in value.values():
            yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def _keep_used_schemas(document: dict[str, Any]) -> None:
    schemas = document.get("components", {}).get("schemas", {})
    used: set[str] = set()
    todo = list(_refs(document["paths"]))
    while todo:
        name = todo.pop()
        if name not in used and name in schemas:
            used.add(name)
            todo.extend(_refs(schemas[name]))
    for name in set(schemas) - used:
        del schemas[name]


def _document(app: FastAPI, *, admin: bool) -> dict[str, Any]:
    """One half of the app's own description: the admin paths, or all the others."""
    document = copy.deepcopy(app.openapi())
    document["paths"] = {
        path: operations
        for path, operations in document["paths"].items()
        if _is_admin(path) == admin
    }
    document["info"]["title"] = f"{app.title} {'operator API' if admin else 'webhook intake'}"
    components = document.setdefault("components", {})
    if admin:
        components["securitySchemes"] = {
            "adminBearer": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"},
            "dashboardSession": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
        }
        for path, operations in document["paths"].items():
            if path == "/admin/login":
                continue
            scheme = "adminBearer" if path.startswith("/admin/api/") else "dashboardSession"
            for operation in operations.values():
                operation["security"] = [{scheme: []}]
    else:
        _, schemas = models_json_schema([(m, "validation") for m in _MODELS], ref_template=_REF)
        components.setdefault("schemas", {}).update(schemas["$defs"])
        document["paths"][INTAKE_PATH]["post"] = _intake_operation()
    _keep_used_schemas(document)
    if not components.get("schemas"):
        components.pop("schemas", None)
    return document


def install(app: FastAPI) -> None:
    """Serve both documents; each is generated once, on its first request."""
    cache: dict[bool, dict[str, Any]] = {}

    def document(admin: bool) -> JSONResponse:
        if admin not in cache:
            cache[admin] = _document(app, admin=admin)
        return JSONResponse(cache[admin])

    router = APIRouter()

    @router.get(PUBLIC_PATH, summary="This document")
    async def public_openapi(_request: Request) -> JSONResponse:
        """The OpenAPI description of the webhook intake, health and metrics."""
        return document(admin=False)

    @router.get(ADMIN_PATH, summary="This document", dependencies=[Depends(require_bearer)])
    async def admin_openapi(_request: Request) -> JSONResponse:
        """The OpenAPI description of the operator API and the dashboard (admin token)."""
        return document(admin=True)

    app.include_router(router)
