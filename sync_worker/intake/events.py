"""Inbound events: the Standard Webhooks envelope and the bare form, validated and normalised.

Both forms become one `UserEvent`: who (the Recur external id), when (the event's own time, which
orders fields when merging), and the fields it sets. `email` is kept for reconciliation reports
but is never sent: Recur does not let it change.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from sync_worker.recur.models import EXTERNAL_ID_PATTERN, NAME_MAX_CHARS

USER_UPDATED = "user.updated"
EXTERNAL_ID_CHANGED = "user.external_id_changed"

SYNCED_FIELDS = ("name", "metadata", "external_id")
"""Fields a PATCH sends."""

RECORDED_FIELDS = ("email",)
"""Fields kept in the ledger for reports but never sent."""

ID_MAX_CHARS = 255
METADATA_MAX_DEPTH = 5
_EVENT_ID = re.compile(r"^[\x21-\x7e]{1,255}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class EventValidationError(Exception):
    """The body is JSON but not a valid event; `errors` name each field and what is wrong."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class UserEvent:
    """One accepted change to one user."""

    event_id: str
    type: str
    user_id: str
    ts_ms: int
    fields: dict[str, Any] = field(default_factory=dict)


def _utf16_length(text: str) -> int:
    # Recur validates in JavaScript, where a string's length counts UTF-16 code units.
    return len(text.encode("utf-16-le")) // 2


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


class _UserFields(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    user_id: str = Field(min_length=1, max_length=ID_MAX_CHARS, pattern=EXTERNAL_ID_PATTERN)
    name: str | None = None
    email: str | None = Field(default=None, max_length=320)
    metadata: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must not be empty")
        if _utf16_length(value) > NAME_MAX_CHARS:
            raise ValueError(f"must be at most {NAME_MAX_CHARS} characters")
        if _CONTROL.search(value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and (value.count("@") != 1 or _CONTROL.search(value)):
            raise ValueError("is not an email address")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and _depth(value) > METADATA_MAX_DEPTH:
            raise ValueError(f"must not nest deeper than {METADATA_MAX_DEPTH} levels")
        return value

    def changes(self) -> dict[str, Any]:
        found = {
            name: getattr(self, name)
            for name in ("name", "metadata", "email")
            if getattr(self, name) is not None
        }
        if "name" not in found and "metadata" not in found:
            raise ValueError("at least one of name, metadata is required")
        return found


class _BareUser(_UserFields):
    user_id: str = Field(
        alias="userId", min_length=1, max_length=ID_MAX_CHARS, pattern=EXTERNAL_ID_PATTERN
    )


class _Rebind(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: str = Field(min_length=1, max_length=ID_MAX_CHARS, pattern=EXTERNAL_ID_PATTERN)
    # Required, and null unbinds the customer (`{"external_id": null}`): a missing key is an error.
    new_user_id: (
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=ID_MAX_CHARS, pattern=EXTERNAL_ID_PATTERN),
        ]
        | None
    )


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=ID_MAX_CHARS)
    type: Literal["user.updated", "user.external_id_changed"]
    timestamp: datetime
    data: dict[str, Any]

    @field_validator("id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not _EVENT_ID.match(value):
            raise ValueError("must be printable ASCII without spaces")
        return value


def _errors(error: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    found = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "body"
        message = str(item["msg"]).removeprefix("Value error, ")
        found.append({"field": prefix + where, "message": message})
    return found


def _ts_ms(moment: datetime, *, now: float, max_future_seconds: int) -> int:
    # A naive time names a different instant in every time zone, so it cannot order fields.
    # A time far ahead would win every merge until then: that user's real events would all be
    # "stale" (frozen). The signature's tolerance is the clock skew we already accept.
    if moment.tzinfo is None:
        raise EventValidationError(
            [{"field": "timestamp", "message": "must include a time zone, e.g. Z or +08:00"}]
        )
    seconds = moment.timestamp()
    if seconds > now + max_future_seconds:
        raise EventValidationError(
            [
                {
                    "field": "timestamp",
                    "message": f"is more than {max_future_seconds} s ahead of the server's clock",
                }
            ]
        )
    return int(seconds * 1000)


def _not_json(constant: str) -> Any:
    # Python's json reads NaN and Infinity; they are not JSON, and httpx refuses to send them.
    raise json.JSONDecodeError(f"{constant} is not a JSON value", constant, 0)


class _NumberOutOfRange(ValueError):
    pass


def _finite_float(text: str) -> float:
    # 1e400 reads as inf, which no JSON encoder (nor Recur) can send back.
    value = float(text)
    if not math.isfinite(value):
        raise _NumberOutOfRange(text)
    return value


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_not_json, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise  # not JSON at all
    except ValueError:
        # An integer past Python's digit limit (sys.get_int_max_str_digits) or a float past
        # the double range: valid JSON syntax, but no value we could store or send.
        raise EventValidationError(
            [{"field": "body", "message": "holds a number too large to represent"}]
        ) from None


def _require_unicode(payload: dict[str, Any]) -> None:
    # A lone surrogate ("\ud800") is valid JSON syntax but no text: it cannot be encoded to
    # UTF-8, so a PATCH carrying it would fail on every attempt.
    try:
        json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise EventValidationError(
            [{"field": "body", "message": "must not contain unpaired UTF-16 surrogates"}]
        ) from None


def parse_event(
    body: bytes, *, webhook_id: str, webhook_timestamp: int, now: float, max_future_seconds: int
) -> UserEvent:
    """Validate a body in either form; raise `json.JSONDecodeError` or `EventValidationError`.

    An envelope's `timestamp` must carry a time zone and be at most `max_future_seconds` ahead
    of `now` (the server's clock, epoch seconds).
    """
    payload = _load_json(body)
    if not isinstance(payload, dict):
        raise EventValidationError([{"field": "body", "message": "must be a JSON object"}])
    _require_unicode(payload)
    if "type" in payload or "data" in payload:
        return _from_envelope(payload, now=now, max_future_seconds=max_future_seconds)
    try:
        bare = _BareUser.model_validate(payload)
        changes = bare.changes()
    except ValidationError as error:
        raise EventValidationError(_errors(error)) from None
    except ValueError as error:
        raise EventValidationError([{"field": "body", "message": str(error)}]) from None
    return UserEvent(
        event_id=webhook_id,
        type=USER_UPDATED,
        user_id=bare.user_id,
        ts_ms=webhook_timestamp * 1000,
        fields=changes,
    )


def _from_envelope(payload: dict[str, Any], *, now: float, max_future_seconds: int) -> UserEvent:
    try:
        envelope = _Envelope.model_validate(payload)
    except ValidationError as error:
        raise EventValidationError(_errors(error)) from None
    ts_ms = _ts_ms(envelope.timestamp, now=now, max_future_seconds=max_future_seconds)
    try:
        if envelope.type == EXTERNAL_ID_CHANGED:
            rebind = _Rebind.model_validate(envelope.data)
            if rebind.new_user_id == rebind.user_id:
                raise EventValidationError(
                    [{"field": "data.new_user_id", "message": "must differ from data.user_id"}]
                )
            return UserEvent(
                event_id=envelope.id,
                type=envelope.type,
                user_id=rebind.user_id,
                ts_ms=ts_ms,
                fields={"external_id": rebind.new_user_id},
            )
        user = _UserFields.model_validate(envelope.data)
        changes = user.changes()
    except ValidationError as error:
        raise EventValidationError(_errors(error, prefix="data.")) from None
    except EventValidationError:
        raise
    except ValueError as error:
        raise EventValidationError([{"field": "data", "message": str(error)}]) from None
    return UserEvent(
        event_id=envelope.id, type=envelope.type, user_id=user.user_id, ts_ms=ts_ms, fields=changes
    )


def validate_user_fields(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Validate a user's fields as intake does: `(user_id, {name, metadata, email})`.

    For callers that take users from elsewhere (a ledger import). Raises `EventValidationError`
    naming each bad field.
    """
    try:
        user = _UserFields.model_validate(data)
        return user.user_id, user.changes()
    except ValidationError as error:
        raise EventValidationError(_errors(error)) from None
    except ValueError as error:
        raise EventValidationError([{"field": "row", "message": str(error)}]) from None
