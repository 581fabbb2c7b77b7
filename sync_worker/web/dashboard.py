"""`GET /admin`: one server-rendered page for operators, no JavaScript and no build step.

It shows the numbers of `sync-worker status` and the dead letters (filtered by reason), with
replay and delete buttons, and a page per dead letter to edit its change before replaying it
(dead_letter_page.py; those routes and actions in dead_letter_actions.py). Each button is a plain
HTML form POSTing to `/admin/actions/...`, which acts and redirects back (post/redirect/get, so a
reload never repeats an action).

Access: `/admin/login` takes ADMIN_TOKEN and sets a signed session cookie (HttpOnly,
SameSite=Strict, Secure over https; see auth.py). Every form carries a CSRF token derived from
the session. The page forbids framing and scripts through its Content-Security-Policy.
"""

from __future__ import annotations

import asyncio
import time
from html import escape
from importlib.resources import files
from string import Template
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sync_worker.deadletters.dlq import REASONS, DeadLetter
from sync_worker.logging import get_logger
from sync_worker.ops.status import StatusSnapshot, format_age, gather_status
from sync_worker.telemetry import history
from sync_worker.web import auth
from sync_worker.web.charts import (
    CHART_RANGES,
    DEFAULT_CHART_MINUTES,
    REFRESH_SECONDS,
    history_section,
)
from sync_worker.web.state import web_state
from sync_worker.web.throttle import client_address
from sync_worker.web.user_page import search_form, user_html
from sync_worker.write_refusal import MESSAGES

log = get_logger(__name__)
router = APIRouter(prefix="/admin")

ROWS_SHOWN = 200
_PAGE = Template(files("sync_worker.web").joinpath("templates/page.html").read_text("utf-8"))
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
NOTICES = {
    "replayed": ("ok", "Replayed {n}: the workers send it now; it disappears once Recur takes it."),
    "stale": ("bad", "Skipped {n} as stale: a newer state was already applied. Delete it."),
    "busy": ("bad", "{n} already being replayed; wait for the workers."),
    "missing": ("bad", "{n} no longer exists."),
    "deleted": ("ok", "Deleted {n}."),
    "resumed": ("ok", "Sync resumed."),
    "not_replicated": (
        "bad",
        "Done for {n}, but not yet held by a Redis replica: a failover could undo it. "
        "Check, then repeat if needed.",
    ),
}


def html_page(title: str, content: str, *, status: int = 200, head: str = "") -> HTMLResponse:
    """A dashboard page: the template around `content`, with the page's security headers."""
    body = _PAGE.substitute(title=escape(title), content=content, head=head)
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


def operator_session(request: Request) -> tuple[str, str] | None:
    """(token, session) of a logged-in operator, or None."""
    token = auth.admin_token(web_state(request).settings)
    session = request.cookies.get(auth.SESSION_COOKIE, "")
    if token is None or not session or not auth.session_valid(token, session):
        return None
    return token, session


def _disabled() -> HTMLResponse:
    return html_page(
        "Disabled",
        "<div class='login'><h1>Dashboard disabled</h1>"
        "<p>Set <code>ADMIN_TOKEN</code> to turn on the operator dashboard and API.</p></div>",
        status=503,
    )


def _login_page(error: str = "", *, status: int = 200) -> HTMLResponse:
    message = f"<p class='bad'>{escape(error)}</p>" if error else ""
    return html_page(
        "Log in",
        "<div class='login'><h1>recur-sync operators</h1>"
        f"{message}<form method='post' action='/admin/login'>"
        "<label for='token'>Admin token</label>"
        "<input id='token' name='token' type='password' autocomplete='current-password' autofocus>"
        "<button type='submit'>Log in</button></form></div>",
        status=status,
    )


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()  # at most FORM_BYTES: the request guard (guard.py) cut it
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


def back_to_list(reason: str, notice: str = "", n: int = 0) -> RedirectResponse:
    """Back to the dashboard (post/redirect/get), keeping its filter, with a notice."""
    query: dict[str, Any] = {}
    if reason in REASONS:
        query["reason"] = reason
    if notice:
        query.update(notice=notice, n=n)
    return RedirectResponse("/admin" + (f"?{urlencode(query)}" if query else ""), status_code=303)


@router.get("/login", response_model=None)
def login_form(request: Request) -> Response:
    """The login form (or straight to the dashboard when already logged in)."""
    if auth.admin_token(web_state(request).settings) is None:
        return _disabled()
    if operator_session(request) is not None:
        return RedirectResponse("/admin", status_code=303)
    return _login_page()


@router.post("/login", response_model=None)
async def login(request: Request) -> Response:
    """Check the token; on success set the session cookie and go to the dashboard."""
    token = auth.admin_token(web_state(request).settings)
    if token is None:
        return _disabled()
    given = (await _form(request)).get("token", "")
    if not auth.token_matches(given, token):
        address = client_address(request.scope)
        await web_state(request).throttle.failed(address)
        log.warning("admin_login_failed", client=address)
        return _login_page("That is not the admin token.", status=401)
    response = RedirectResponse("/admin", status_code=303)
    response.set_cookie(
        auth.SESSION_COOKIE,
        auth.new_session(token),
        max_age=auth.SESSION_SECONDS,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _card(label: str, value: object, css: str = "") -> str:
    return (
        f"<div class='card'><div class='n {css}'>{escape(str(value))}</div>"
        f"<div class='l'>{escape(label)}</div></div>"
    )


def hidden_inputs(csrf: str, reason: str) -> str:
    """The hidden inputs every form carries: the CSRF token and the list's filter."""
    return (
        f"<input type='hidden' name='csrf' value='{escape(csrf)}'>"
        f"<input type='hidden' name='reason' value='{escape(reason)}'>"
    )


def _status_html(snapshot: StatusSnapshot, csrf: str) -> str:
    if snapshot.paused is not None:
        paused = snapshot.paused
        state = (
            "<div class='banner bad'><strong>Sync paused</strong>: "
            f"{escape(str(paused.get('reason')))} (HTTP {escape(str(paused.get('status')))}) "
            f"{escape(str(paused.get('message', '')))}. Fix RECUR_SECRET_KEY; it resumes by itself."
            "<form class='inline' method='post' action='/admin/actions/resume'>"
            f"{hidden_inputs(csrf, '')} <button type='submit'>Resume now</button></form></div>"
        )
    else:
        state = "<div class='banner ok'>Sync running.</div>"
    stalled = snapshot.stalled_workers
    if stalled:
        # A live heartbeat with a stuck dispatcher sends nothing: "workers alive" alone hides it.
        state += (
            "<div class='banner bad' id='stalled'><strong>Dispatcher stalled</strong> on "
            f"{escape(', '.join(stalled))}: no round done lately, so that worker sends nothing; "
            "see <code>sync-worker status</code> for its last error.</div>"
        )
    if snapshot.redis_refusal is not None:
        state += (
            "<div class='banner bad' id='redis-writes'><strong>Redis refuses writes</strong>: "
            f"{escape(MESSAGES[snapshot.redis_refusal])}.</div>"
        )
    if snapshot.replicas_missing:
        state += (
            "<div class='banner bad' id='replicas'><strong>Too few Redis replicas</strong>: "
            f"{snapshot.replicas_online} in sync, REDIS_MIN_REPLICAS is {snapshot.min_replicas}, "
            "so intake answers 503 to every event and operator actions fail.</div>"
        )
    if snapshot.breaker.get("state", "closed") != "closed":
        state += (
            "<div class='banner bad' id='breaker'><strong>Circuit breaker "
            f"{escape(str(snapshot.breaker['state']))}</strong>: Recur is failing, sends are held "
            "and intake still accepts; one probe goes out in "
            f"{float(snapshot.breaker.get('open_seconds_left', 0)):.0f} s.</div>"
        )
    cards = [
        _card("mode", snapshot.mode),
        *(_card(f"queue {name}", depth) for name, depth in snapshot.queues.items()),
        _card("pending users", snapshot.pending_users),
        _card("due now", snapshot.due_now),
        _card("being sent", snapshot.inflight),
        _card("scheduled retries", snapshot.retrying_users),
        _card(
            "dead letters",
            snapshot.dead_letters_total,
            "bad" if snapshot.dead_letters_total else "",
        ),
        _card("workers alive", len(snapshot.workers), "" if snapshot.workers else "bad"),
        _card("dispatchers stalled", len(stalled), "bad" if stalled else ""),
    ]
    if snapshot.cooldown_seconds > 0:
        cards.append(_card("429 cool-down (s)", f"{snapshot.cooldown_seconds:.1f}", "bad"))
    report = snapshot.last_reconciliation
    recon = "none yet" if report is None else ", ".join(f"{k}: {v}" for k, v in report.items())
    return (
        f"{state}<div class='cards'>{''.join(cards)}</div>"
        f"<p class='muted'>Last reconciliation: {escape(recon)}</p>"
    )


def _row(entry: DeadLetter, csrf: str, reason: str, now: float) -> str:
    entry_path = quote(entry.id, safe="")
    return (
        f"<tr data-id='{escape(entry.id)}'><td><code>{escape(entry.id)}</code></td>"
        f"<td>{escape(entry.reason)}</td><td>{escape(entry.user_id)}</td>"
        f"<td>{escape(str(entry.http_status or '-'))}</td>"
        f"<td class='err'>{escape(entry.error_code)}: {escape(entry.error_message)}</td>"
        f"<td>{format_age(now - entry.last_failure)}</td><td>{entry.replay_count}</td><td>"
        f"<form class='inline' method='post' action='/admin/actions/replay/{entry_path}'>"
        f"{hidden_inputs(csrf, reason)}<button type='submit' name='replay'>Replay</button></form> "
        f"<form class='inline' method='post' action='/admin/actions/delete/{entry_path}'>"
        f"{hidden_inputs(csrf, reason)}<button type='submit' name='delete'>Delete</button></form> "
        f"<a href='/admin/dead-letters/{entry_path}'>Edit</a></td></tr>"
    )


def _dead_letters_html(
    entries: list[DeadLetter],
    snapshot: StatusSnapshot,
    csrf: str,
    query: dict[str, Any],
    after: int | None,
) -> str:
    reason = str(query.get("reason", ""))
    links = [f"<a href='/admin' class='{'' if reason else 'current'}'>all</a>"]
    for name in REASONS:
        css = "current" if name == reason else ""
        count = snapshot.dead_letters.get(name, 0)
        links.append(f"<a href='/admin?reason={name}' class='{css}'>{name} ({count})</a>")
    bulk = (
        "<form class='inline' method='post' action='/admin/actions/replay-all'>"
        f"{hidden_inputs(csrf, reason)}<button type='submit'>Replay all "
        f"{escape(reason or 'dead letters')}</button></form>"
        if entries
        else ""
    )
    now = time.time()
    rows = "".join(_row(entry, csrf, reason, now) for entry in entries)
    user = str(query.get("user_id", ""))
    pages = []
    if query.get("cursor"):
        first = {k: v for k, v in query.items() if k != "cursor"}
        pages.append(f"<a href='/admin?{escape(urlencode(first))}' id='first-page'>first page</a>")
    if after is not None:
        following = urlencode({**query, "cursor": after})
        pages.append(f"<a href='/admin?{escape(following)}' id='next-page'>next page</a>")
    more = f"<p>{' '.join(pages)}</p>" if pages else ""
    hidden = "".join(
        f"<input type='hidden' name='{escape(k)}' value='{escape(str(v))}'>"
        for k, v in query.items()
        if k in ("reason", "minutes", "refresh")
    )
    by_user = (
        "<form class='inline search' method='get' action='/admin' id='user-filter'>"
        f"{hidden}<label for='filter_user'>only user </label><input id='filter_user' "
        f"name='user_id' value='{escape(user)}'> <button type='submit'>Filter</button></form>"
    )
    table = (
        "<table id='dead-letters'><thead><tr><th>id</th><th>reason</th><th>user</th>"
        "<th>status</th><th>error</th><th>age</th><th>replays</th><th></th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{more}"
        if entries
        else "<p id='no-dead-letters'>No dead letters.</p>"
    )
    return (
        f"<h2>Dead letters</h2><nav>{' '.join(links)}</nav><p>{by_user}</p><p>{bulk}</p>"
        f"{table}{more}"
    )


@router.get("", response_model=None)
async def dashboard(
    request: Request,
    reason: str = "",
    notice: str = "",
    n: int = 0,
    minutes: int = DEFAULT_CHART_MINUTES,
    refresh: str = "",
    user_id: str = "",
    cursor: int = 0,
) -> Response:
    """The dashboard page; the login form when there is no valid session.

    It reloads itself every few seconds (a meta refresh to the same filters, no script) unless
    `refresh=off`; the charts show the last `minutes` minutes.
    """
    if auth.admin_token(web_state(request).settings) is None:
        return _disabled()
    found = operator_session(request)
    if found is None:
        return RedirectResponse("/admin/login", status_code=303)
    token, session = found
    csrf = auth.csrf_token(token, session)
    reason = reason if reason in REASONS else ""
    minutes = minutes if minutes in CHART_RANGES else DEFAULT_CHART_MINUTES
    runtime = web_state(request).runtime
    snapshot = await asyncio.to_thread(gather_status, runtime)
    recent = await asyncio.to_thread(history.read, runtime.redis, minutes=minutes)
    entries, after = await asyncio.to_thread(
        runtime.dlq.page,
        reason=reason or None,
        user_id=user_id.strip() or None,
        cursor=max(cursor, 0),
        limit=ROWS_SHOWN,
    )
    banner = ""
    if notice in NOTICES:
        css, text = NOTICES[notice]
        banner = f"<div class='banner {css}' id='notice'>{escape(text.format(n=n))}</div>"
    header = (
        f"<header><h1>recur-sync</h1><span>{search_form()} "
        "<form class='inline' method='post' action='/admin/logout'>"
        f"{hidden_inputs(csrf, '')}<button type='submit'>Log out</button></form></span></header>"
    )
    live = refresh != "off"
    query: dict[str, Any] = {"minutes": minutes}
    if reason:
        query["reason"] = reason
    if not live:
        query["refresh"] = "off"
    if user_id.strip():
        query["user_id"] = user_id.strip()
    if cursor > 0:
        query["cursor"] = cursor
    content = (
        header
        + banner
        + _status_html(snapshot, csrf)
        + history_section(recent, query, live)
        + _dead_letters_html(entries, snapshot, csrf, query, after)
    )
    # The reload drops `notice`, so a banner about an action is shown once.
    head = (
        f"<meta http-equiv='refresh' "
        f"content='{REFRESH_SECONDS}; url=/admin?{escape(urlencode(query))}'>"
        if live
        else ""
    )
    return html_page("Dashboard", content, head=head)


async def checked_form(request: Request) -> dict[str, str] | Response:
    """The form of a logged-in operator with a valid CSRF token, or the response refusing it."""
    found = operator_session(request)
    if found is None:
        return RedirectResponse("/admin/login", status_code=303)
    token, session = found
    form = await _form(request)
    if not auth.csrf_valid(token, session, form.get("csrf", "")):
        log.warning("admin_csrf_refused", path=request.url.path)
        return html_page("Refused", "<p>This form has expired. Go back and reload.</p>", status=403)
    return form


@router.post("/logout", response_model=None)
async def logout(request: Request) -> Response:
    """End the session."""
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE, path="/admin")
    return response


@router.post("/actions/resume", response_model=None)
async def resume_action(request: Request) -> Response:
    """Lift the auth pause by hand."""
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    if await asyncio.to_thread(web_state(request).runtime.flow.resume):
        log.info("sync_resumed", why="an operator resumed it", source="dashboard")
    return back_to_list(form.get("reason", ""), "resumed")


@router.get("/users", response_model=None)
async def find_user(request: Request, user_id: str = "") -> Response:
    """The search box's target: to that user's page."""
    if operator_session(request) is None:
        return RedirectResponse("/admin/login", status_code=303)
    if not user_id.strip():
        return RedirectResponse("/admin", status_code=303)
    return RedirectResponse(f"/admin/users/{quote(user_id.strip(), safe='')}", status_code=303)


@router.get("/users/{user_id}", response_model=None)
async def user_page(request: Request, user_id: str) -> Response:
    """What happened to one user, beside the customer as Recur has it now."""
    if operator_session(request) is None:
        return RedirectResponse("/admin/login", status_code=303)
    runtime = web_state(request).runtime
    found = await asyncio.to_thread(runtime.user_trace, user_id, with_recur=True)
    return html_page(f"User {user_id}", user_html(found))
