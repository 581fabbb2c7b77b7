"""The dashboard's page of one dead letter: the queued change, its edit history, and a form to
edit the change and replay it (routes in dead_letter_actions.py; the edit itself in replay_edit.py).

The form is filled with the queued values; only the inputs the operator changed become the
edit, so submitting it untouched is a plain replay and the history records real changes only.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any
from urllib.parse import quote

from sync_worker.deadletters.dlq import DeadLetter
from sync_worker.deadletters.replay_edit import EditError, FieldEdits
from sync_worker.deadletters.triage import UPSTREAM_REASONS, Triage


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _stamp(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def _history_html(history: list[dict[str, Any]]) -> str:
    if not history:
        return "<p class='muted' id='no-history'>Not edited.</p>"
    rows = []
    for record in history:
        who = f"{record.get('by')} ({record.get('via')})"
        for change in record.get("changes", []):
            after = "(removed)" if change.get("action") == "unset" else _json(change.get("to"))
            rows.append(
                f"<tr><td>{escape(_stamp(float(record.get('at', 0))))}</td>"
                f"<td>{escape(who)}</td><td>{escape(str(change.get('field')))}</td>"
                f"<td>{escape(_json(change.get('from')))}</td><td>{escape(after)}</td></tr>"
            )
    return (
        "<table id='history'><thead><tr><th>when</th><th>who</th><th>field</th><th>from</th>"
        f"<th>to</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _cell(value: Any, present: bool, absent: str) -> str:
    return escape(_json(value)) if present else f"<span class='muted'>{escape(absent)}</span>"


def triage_html(found: Triage) -> str:
    """What `sync-worker dlq show` prints: the queued change beside the last applied state and,
    for not_found and conflict, the customer as Recur has it now."""
    entry = found.entry
    upstream = entry.reason in UPSTREAM_REASONS
    head = "<th>field</th><th>queued change</th><th>last applied</th>"
    if upstream:
        head += "<th>Recur now</th>"
    rows = []
    for name, queued, applied, now in found.rows():
        cells = [
            _cell(queued, name in entry.fields, "(not in this change)"),
            _cell(applied, name in found.applied, "(never applied)"),
        ]
        if upstream:
            cells.append(
                _cell(
                    now,
                    found.recur is not None,
                    "(no customer)" if found.recur_missing else "(not fetched)",
                )
            )
        rows.append(
            f"<tr data-field='{escape(name)}'><td>{escape(name)}</td>"
            + "".join(f"<td>{cell}</td>" for cell in cells)
            + "</tr>"
        )
    notes = []
    if found.recur_error:
        notes.append(f"<p class='bad' id='recur-error'>{escape(found.recur_error)}</p>")
    if found.holder is not None:
        notes.append(
            f"<p id='holder'>external_id {escape(_json(entry.request.get('external_id')))} is "
            f"held by customer {escape(str(found.holder.get('id')))} "
            f"({escape(str(found.holder.get('email')))})</p>"
        )
    applied_at = _stamp(found.applied_at) if found.applied_at else "never"
    return (
        f"<h2>Triage</h2><p class='muted'>Last applied {escape(applied_at)}.</p>"
        f"<table id='triage'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        f"</table>{''.join(notes)}"
    )


def _queued(entry: DeadLetter, name: str) -> Any:
    return entry.fields.get(name, {}).get("value")


def entry_html(entry: DeadLetter, hidden: str, error: str = "", found: Triage | None = None) -> str:
    """The page body: details, triage (when given), history and the edit-and-replay form
    (`hidden`: CSRF inputs)."""
    path = quote(entry.id, safe="")
    name = _queued(entry, "name")
    external_id = _queued(entry, "external_id")
    metadata = _queued(entry, "metadata")
    banner = f"<div class='banner bad' id='edit-error'>{escape(error)}</div>" if error else ""
    unset = (
        "<label><input type='checkbox' name='unset_external_id' value='1'> "
        "drop the external-id change (send no rebind)</label><br>"
        if external_id is not None
        else ""
    )
    return (
        f"<header><h1>Dead letter <code>{escape(entry.id)}</code></h1>"
        "<a href='/admin'>back to the dashboard</a></header>"
        f"{banner}<p><strong>{escape(entry.reason)}</strong> for user "
        f"<code>{escape(entry.user_id)}</code>: HTTP {escape(str(entry.http_status or '-'))} "
        f"{escape(entry.error_code)}: {escape(entry.error_message)}</p>"
        f"<p>Refused request: <code>{escape(_json(entry.request))}</code> "
        f"<a href='/admin/users/{quote(entry.user_id, safe='')}'>trace of this user</a></p>"
        f"{triage_html(found) if found is not None else ''}"
        f"<h2>Edits</h2>{_history_html(entry.history)}"
        "<h2>Edit and replay</h2>"
        f"<form method='post' action='/admin/actions/edit-replay/{path}' id='edit-form'>"
        f"{hidden}<label for='name'>name</label><br>"
        f"<input id='name' name='name' size='60' value='{escape(name or '')}'><br>"
        "<label for='external_id'>external_id (a rebind)</label><br>"
        f"<input id='external_id' name='external_id' size='40' "
        f"value='{escape(external_id or '')}'><br>{unset}"
        "<label for='metadata'>metadata (a JSON object)</label><br>"
        f"<textarea id='metadata' name='metadata' rows='4' cols='60'>"
        f"{escape(_json(metadata) if metadata is not None else '')}</textarea><br>"
        "<button type='submit' name='edit-replay'>Save and replay</button></form>"
    )


def form_edits(form: dict[str, str], entry: DeadLetter) -> FieldEdits:
    """The edit the form asks for: only inputs that differ from the queued values."""
    values: dict[str, Any] = {}
    for name in ("name", "external_id"):
        given = form.get(name, "")
        if given and given != _queued(entry, name):
            values[name] = given
    raw = form.get("metadata", "").strip()
    if raw:
        try:
            metadata = json.loads(raw)
        except ValueError:
            raise EditError([{"field": "metadata", "message": "is not valid JSON"}]) from None
        if metadata != _queued(entry, "metadata"):
            values["metadata"] = metadata
    return FieldEdits(values, unset_external_id=form.get("unset_external_id") == "1")
