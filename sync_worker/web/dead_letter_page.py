"""The dashboard's page of one dead letter: the queued change, its edit history, and a form to
edit the change and replay it (routes in dashboard.py; the edit itself in replay_edit.py).

The form is filled with the queued values; only the inputs the operator changed become the
edit, so submitting it untouched is a plain replay and the history records real changes only.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any
from urllib.parse import quote

from sync_worker.dlq import DeadLetter
from sync_worker.replay_edit import EditError, FieldEdits


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


def _queued(entry: DeadLetter, name: str) -> Any:
    return entry.fields.get(name, {}).get("value")


def entry_html(entry: DeadLetter, hidden: str, error: str = "") -> str:
    """The page body: details, history and the edit-and-replay form (`hidden`: CSRF inputs)."""
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
        f"<p>Refused request: <code>{escape(_json(entry.request))}</code></p>"
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
