"""The dashboard's page of one user (`/admin/users/{user_id}`, routes in dashboard.py): the same
story as `sync-worker trace USER_ID --recur` (timeline.py), as HTML."""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any
from urllib.parse import quote

from sync_worker.ops.timeline import FieldRow, UserTrace, describe, pending_summary

VERDICT_CSS = {
    "same": "same",
    "differs": "diff",
    "not readable": "muted",
    "not synced yet": "muted",
}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _stamp(moment: float | None) -> str:
    if moment is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def search_form(value: str = "") -> str:
    """The box that goes to a user's page (a plain GET form: no script)."""
    return (
        "<form class='inline search' method='get' action='/admin/users' id='user-search'>"
        "<label for='user_id'>User </label>"
        f"<input id='user_id' name='user_id' value='{escape(value)}' placeholder='user id' "
        "required maxlength='255'> <button type='submit'>Trace</button></form>"
    )


def _field_row(row: FieldRow, with_recur: bool) -> str:
    cells = [
        f"<td>{escape(row.name)}</td>",
        f"<td>{escape(_json(row.pending)) if row.in_pending else '-'}</td>",
        "<td>"
        + (
            f"{escape(_json(row.applied))} <span class='muted'>(event of "
            f"{escape(_stamp(row.applied_ts_ms / 1000))})</span>"
            if row.applied_ts_ms is not None
            else "<span class='muted'>never applied</span>"
        )
        + "</td>",
    ]
    if with_recur:
        readable = row.verdict != "not readable"
        cells.append(f"<td>{escape(_json(row.recur)) if readable else '-'}</td>")
        css = VERDICT_CSS.get(str(row.verdict), "")
        cells.append(f"<td class='{css}'>{escape(str(row.verdict or '-'))}</td>")
    return f"<tr data-field='{escape(row.name)}'>{''.join(cells)}</tr>"


def _fields_html(found: UserTrace) -> str:
    with_recur = found.recur is not None
    head = "<th>field</th><th>pending</th><th>applied (ledger)</th>"
    if with_recur:
        head += "<th>Recur now</th><th></th>"
    rows = "".join(_field_row(row, with_recur) for row in found.rows)
    note = (
        f"<p class='banner bad' id='recur-error'>{escape(found.recur_error)}</p>"
        if found.recur_error
        else ""
    )
    return (
        f"<h2>Fields</h2><p class='muted'>Last applied {escape(_stamp(found.applied_at))}. "
        "Metadata is write-only at Recur: it cannot be compared.</p>"
        f"{note}<table id='fields'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def _pending_html(pending: dict[str, Any] | None) -> str:
    return f"<p id='pending'>{escape(pending_summary(pending))}</p>"


def _dead_letters_html(found: UserTrace) -> str:
    if not found.dead_letters:
        return ""
    items = "".join(
        f"<li><a href='/admin/dead-letters/{quote(e.id, safe='')}'>{escape(e.id)}</a>: "
        f"{escape(e.reason)}, HTTP {escape(str(e.http_status or '-'))} "
        f"{escape(e.error_code)}: {escape(e.error_message)} (replayed {e.replay_count})</li>"
        for e in found.dead_letters
    )
    return f"<h2>Dead letters</h2><ul id='user-dead-letters'>{items}</ul>"


def _timeline_html(found: UserTrace) -> str:
    if not found.timeline:
        return "<p id='no-timeline' class='muted'>No trace recorded (or it expired).</p>"
    rows = "".join(
        f"<tr data-kind='{escape(entry.kind)}'><td>{escape(_stamp(entry.at))}</td>"
        f"<td>{escape(entry.kind)}</td><td>{escape(describe(entry))}</td></tr>"
        for entry in found.timeline
    )
    return (
        "<table id='timeline'><thead><tr><th>when</th><th>what</th><th>detail</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def user_html(found: UserTrace) -> str:
    """The page body."""
    unknown = (
        ""
        if found.known
        else "<p class='banner bad' id='unknown'>Nothing recorded about this "
        "user: check the id.</p>"
    )
    return (
        f"<header><h1>User <code>{escape(found.user_id)}</code></h1>"
        f"<span>{search_form(found.user_id)} <a href='/admin'>dashboard</a></span></header>"
        f"{unknown}{_pending_html(found.pending)}{_fields_html(found)}"
        f"{_dead_letters_html(found)}<h2>Timeline, newest first</h2>{_timeline_html(found)}"
    )
