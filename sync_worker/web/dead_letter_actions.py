"""The dashboard's dead-letter actions: replay one, replay every one of the filter, delete one,
and the page of one dead letter with its edit-and-replay form (rendered by dead_letter_page.py).

Each action is a form POST checked like every dashboard form (session and CSRF, dashboard.py)
that redirects back to the list; with REDIS_MIN_REPLICAS, a write no replica holds yet says so.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from sync_worker.deadletters.dlq import REASONS
from sync_worker.deadletters.replay_edit import EditError, build_edit
from sync_worker.deadletters.triage import triage
from sync_worker.logging import get_logger
from sync_worker.replication import acknowledged
from sync_worker.settings import ConfigError
from sync_worker.web import auth
from sync_worker.web.dashboard import (
    back_to_list,
    checked_form,
    hidden_inputs,
    html_page,
    operator_session,
)
from sync_worker.web.dead_letter_page import entry_html, form_edits
from sync_worker.web.state import web_state

log = get_logger(__name__)
router = APIRouter(prefix="/admin")


@router.post("/actions/replay/{entry_id}", response_model=None)
async def replay_action(request: Request, entry_id: str) -> Response:
    """Replay one dead letter, then back to the page."""
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    result = await asyncio.to_thread(web_state(request).runtime.dlq.replay, entry_id)
    log.info("dead_letter_replayed", source="dashboard", id=entry_id, outcome=result.outcome)
    if result.outcome == "replayed" and not await _replicated(request):
        return back_to_list(form.get("reason", ""), "not_replicated", 1)
    return back_to_list(form.get("reason", ""), result.outcome, 1)


@router.post("/actions/replay-all", response_model=None)
async def replay_all_action(request: Request) -> Response:
    """Replay every dead letter of the current filter."""
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    reason = form.get("reason", "")
    dlq = web_state(request).runtime.dlq

    def replay_filtered() -> int:
        entries = dlq.find(reason=reason if reason in REASONS else None)
        return sum(dlq.replay(entry.id).outcome == "replayed" for entry in entries)

    replayed = await asyncio.to_thread(replay_filtered)
    log.info("dead_letters_replayed", source="dashboard", reason=reason, replayed=replayed)
    if replayed and not await _replicated(request):
        return back_to_list(reason, "not_replicated", replayed)
    return back_to_list(reason, "replayed", replayed)


@router.post("/actions/delete/{entry_id}", response_model=None)
async def delete_action(request: Request, entry_id: str) -> Response:
    """Delete one dead letter, then back to the page."""
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    deleted = await asyncio.to_thread(web_state(request).runtime.dlq.delete, [entry_id])
    log.info("dead_letter_deleted", source="dashboard", id=entry_id, deleted=deleted)
    if deleted and not await _replicated(request):
        return back_to_list(form.get("reason", ""), "not_replicated", deleted)
    return back_to_list(
        form.get("reason", ""), "deleted" if deleted else "missing", max(deleted, 1)
    )


async def _replicated(request: Request) -> bool:
    """True once REDIS_MIN_REPLICAS replicas hold what this action wrote."""
    state = web_state(request)
    settings = state.settings
    return await asyncio.to_thread(
        acknowledged,
        state.runtime.redis,
        replicas=settings.min_replicas,
        timeout_ms=settings.redis_wait_timeout_ms,
    )


def _session_actor(request: Request) -> dict[str, str]:
    """Who edits from the dashboard: the admin, and when their session began (not the cookie)."""
    issued = request.cookies.get(auth.SESSION_COOKIE, "").partition(".")[0]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(issued or 0)))
    return {"by": "admin", "via": "dashboard", "session": started}


@router.get("/dead-letters/{entry_id}", response_model=None)
async def dead_letter_page(request: Request, entry_id: str) -> Response:
    """One dead letter: its triage, edit history and the edit-and-replay form."""
    found = operator_session(request)
    if found is None:
        return RedirectResponse("/admin/login", status_code=303)
    runtime = web_state(request).runtime
    entry = await asyncio.to_thread(runtime.dlq.get, entry_id)
    if entry is None:
        return back_to_list("", "missing", 1)
    try:
        recur, unavailable = runtime.recur, ""
    except ConfigError as error:
        recur, unavailable = None, f"not fetched from Recur: {error}"
    found_triage = await asyncio.to_thread(
        triage, entry, ledger=runtime.ledger, recur=recur, recur_unavailable=unavailable
    )
    hidden = hidden_inputs(auth.csrf_token(*found), "")
    return html_page(entry.id, entry_html(entry, hidden, found=found_triage))


@router.post("/actions/edit-replay/{entry_id}", response_model=None)
async def edit_replay_action(request: Request, entry_id: str) -> Response:
    """Edit the queued change as the form says, then replay it; the form again if invalid."""
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    runtime = web_state(request).runtime
    entry = await asyncio.to_thread(runtime.dlq.get, entry_id)
    if entry is None:
        return back_to_list("", "missing", 1)
    try:
        edits = form_edits(form, entry)
        edit = build_edit(edits, actor=_session_actor(request), ledger=runtime.ledger)
        result = await asyncio.to_thread(runtime.dlq.replay, entry_id, edit=edit)
    except EditError as error:
        hidden = hidden_inputs(form.get("csrf", ""), "")
        return html_page(entry.id, entry_html(entry, hidden, str(error)), status=422)
    log.info(
        "dead_letter_replayed",
        source="dashboard",
        id=entry_id,
        outcome=result.outcome,
        edited=sorted(edits.values),
    )
    if result.outcome == "replayed" and not await _replicated(request):
        return back_to_list("", "not_replicated", 1)
    return back_to_list("", result.outcome, 1)
