"""Edit before replay: an operator fixes a dead letter's queued change, then replays it.

What may be edited, as `PATH=VALUE` (a string) or `PATH:=JSON` (any JSON value):

    name=王大明                  the customer's name
    external_id=user_42          rebind to another external id (validated like intake)
    metadata.plan=pro            one metadata key; the rest of the metadata is kept
    metadata.seats:=5            a JSON value
    metadata:={"plan": "pro"}    the whole metadata object

and `unset_external_id` drops an external-id change from the queued change, so the replay sends
no rebind (the fix for a `conflict`). `email` cannot be edited: Recur does not let it change.

An edited field gets the event time *now* (or just past the newest time already stored for that
field, when an event stamped slightly ahead of our clock is there): the operator's edit is the
newest intent, so it wins over the stale queued value and over anything older that arrives later,
and still loses to an event newer than the edit. Edited values are validated as intake validates
events. The entry keeps each edit in its history: who, when, and every field's value before and
after.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sync_worker.deadletters.dlq import DeadLetter, Edit
from sync_worker.intake.events import EventValidationError, validate_user_fields
from sync_worker.pipeline.ledger import Ledger

EDITABLE = ("name", "external_id", "metadata")


class EditError(ValueError):
    """An edit that cannot be applied; `errors` name each field and what is wrong."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class FieldEdits:
    """What an operator asked to change: path -> new value, and whether to drop a rebind."""

    values: dict[str, Any] = field(default_factory=dict)
    unset_external_id: bool = False

    def __bool__(self) -> bool:
        return bool(self.values) or self.unset_external_id


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`["name=x", "metadata.seats:=5"]` -> `{"name": "x", "metadata.seats": 5}`."""
    values: dict[str, Any] = {}
    for item in items:
        path, sep, raw = item.partition("=")
        if not sep or not path.rstrip(":"):
            raise EditError([{"field": item, "message": "use PATH=VALUE or PATH:=JSON"}])
        if path.endswith(":"):
            path = path[:-1]
            try:
                values[path] = json.loads(raw)
            except ValueError:
                raise EditError([{"field": path, "message": "is not valid JSON"}]) from None
        else:
            values[path] = raw
    return values


def _check_paths(edits: FieldEdits) -> None:
    errors = []
    for path, value in edits.values.items():
        root, _, key = path.partition(".")
        if root == "email":
            errors.append({"field": path, "message": "cannot be changed through the Recur API"})
        elif root not in EDITABLE or (key and root != "metadata"):
            errors.append(
                {"field": path, "message": "not editable: use name, external_id or metadata.KEY"}
            )
        elif root == "metadata" and not key and not isinstance(value, dict):
            errors.append({"field": path, "message": "must be a JSON object"})
    if edits.unset_external_id and "external_id" in edits.values:
        errors.append(
            {"field": "external_id", "message": "set it or unset it, not both in one edit"}
        )
    if errors:
        raise EditError(errors)


def _validate(user_id: str, fields: dict[str, dict[str, Any]], edited: set[str]) -> None:
    """Validate the edited fields as intake would (name length in UTF-16 units, id pattern)."""
    data: dict[str, Any] = {"user_id": user_id, "metadata": {}}
    for name in edited:
        if name == "external_id":
            data["user_id"] = fields[name]["value"]
        else:
            data[name] = fields[name]["value"]
    try:
        validate_user_fields(data)
    except EventValidationError as error:
        raise EditError(
            [
                {**e, "field": "external_id" if e["field"] == "user_id" else e["field"]}
                for e in error.errors
            ]
        ) from None


def build_edit(
    edits: FieldEdits,
    *,
    actor: dict[str, Any],
    ledger: Ledger,
    clock: Callable[[], float] = time.time,
) -> Edit:
    """The edit `DeadLetterQueue.replay` applies to an entry; `EditError` if it cannot apply.

    `actor` says who: `{"by": "alice", "via": "cli"}`, `{"by": "admin", "via": "dashboard"}`.
    """
    _check_paths(edits)

    def edit(entry: DeadLetter) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        now = clock()
        fields = copy.deepcopy(entry.fields)
        changes: list[dict[str, Any]] = []
        applied_entry = ledger.get(entry.user_id)
        applied = applied_entry.fields if applied_entry is not None else {}

        def stamp(name: str) -> int:
            # Now, or just past the newest time already stored for the field: intake lets an
            # event be up to the signature tolerance ahead of our clock, and the edit must
            # still win over it.
            known = [fields.get(name, {}).get("ts_ms", 0)]
            if name in applied:
                known.append(applied[name].ts_ms)
            return max(int(now * 1000), *(int(ts) + 1 for ts in known))

        def put(name: str, value: Any, path: str, before: Any, after: Any) -> None:
            fields[name] = {"value": value, "ts_ms": stamp(name)}
            changes.append({"field": path, "action": "set", "from": before, "to": after})

        for path, value in sorted(edits.values.items()):
            root, _, key = path.partition(".")
            queued = fields.get(root, {}).get("value")
            if root != "metadata" or not key:
                put(root, value, path, queued, value)
                continue
            if queued is None:  # not in this change: edit what Recur has, not an empty object
                state = applied.get("metadata")
                queued = state.value if state is not None else {}
            updated = {**queued, key: value}
            put("metadata", updated, path, queued.get(key), value)
        if edits.unset_external_id:
            if "external_id" not in fields:
                raise EditError(
                    [{"field": "external_id", "message": "this change does not rebind"}]
                )
            before = fields.pop("external_id")["value"]
            changes.append({"field": "external_id", "action": "unset", "from": before, "to": None})
        if not fields:
            raise EditError([{"field": "body", "message": "nothing left to send: delete it"}])
        edited = {c["field"].partition(".")[0] for c in changes if c["action"] == "set"}
        _validate(entry.user_id, fields, edited)
        return fields, {"at": now, **actor, "changes": changes}

    return edit
