"""`/admin`: login, session cookie, CSRF, and the replay/delete forms, over real HTTP."""

from __future__ import annotations

import json
import re
import time

import httpx

from sync_worker import redis_keys as keys
from sync_worker.runtime import Runtime
from sync_worker.web import auth
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import ADMIN_TOKEN
from tests.operators.conftest import accept, make_dead_letter, sync_due


def log_in(web: httpx.Client) -> str:
    """Log in; returns the page's CSRF token."""
    response = web.post("/admin/login", data={"token": ADMIN_TOKEN})
    assert response.status_code == 303
    assert response.headers["location"] == "/admin"
    page = web.get("/admin")
    assert page.status_code == 200
    match = re.search(r"name='csrf' value='([0-9a-f]+)'", page.text)
    assert match is not None
    return match.group(1)


def test_unauthenticated_goes_to_login(web: httpx.Client) -> None:
    response = web.get("/admin")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login"
    form = web.get("/admin/login")
    assert "Admin token" in form.text
    assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
    action = web.post("/admin/actions/delete/dl_x", data={"csrf": "x"})
    assert action.status_code == 303
    assert action.headers["location"] == "/admin/login"


def test_wrong_token_is_refused(web: httpx.Client) -> None:
    response = web.post("/admin/login", data={"token": "wrong"})
    assert response.status_code == 401
    assert "not the admin token" in response.text
    assert auth.SESSION_COOKIE not in response.cookies


def test_session_cookie_is_signed_httponly_and_strict(web: httpx.Client) -> None:
    response = web.post("/admin/login", data={"token": ADMIN_TOKEN})
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http here; set when the request came over https
    value = response.cookies[auth.SESSION_COOKIE]
    assert ADMIN_TOKEN not in value
    assert auth.session_valid(ADMIN_TOKEN, value)
    assert not auth.session_valid("another-token", value)
    assert not auth.session_valid(ADMIN_TOKEN, value[:-1] + ("0" if value[-1] != "0" else "1"))
    assert not auth.session_valid(ADMIN_TOKEN, value, now=time.time() + auth.SESSION_SECONDS + 1)


def test_secure_cookie_behind_https(web: httpx.Client) -> None:
    # uvicorn trusts X-Forwarded-Proto from 127.0.0.1, as behind a local TLS proxy.
    response = web.post(
        "/admin/login", data={"token": ADMIN_TOKEN}, headers={"x-forwarded-proto": "https"}
    )
    assert "Secure" in response.headers["set-cookie"]


def test_page_shows_status_and_dead_letters_with_a_filter(
    runtime: Runtime, web: httpx.Client, sandbox: SandboxHandle
) -> None:
    missing = make_dead_letter(runtime, "user_gone")
    sandbox.control.create_customer("a@x.tw", external_id="user_a")
    sandbox.control.create_customer("b@x.tw", external_id="user_b")
    accept(runtime, "user_a", external_id="user_b")
    [conflict] = sync_due(runtime)
    runtime.flow.pause(reason="unauthorized", status=401, message="key <revoked>")
    log_in(web)

    page = web.get("/admin").text
    assert missing in page
    assert conflict.dead_letter_id in page
    assert "Sync paused" in page
    assert "key &lt;revoked&gt;" in page  # escaped
    assert "not_found (1)" in page

    filtered = web.get("/admin", params={"reason": "conflict"}).text
    assert conflict.dead_letter_id in filtered
    assert missing not in filtered


def _card(page: str, label: str) -> tuple[str, str]:
    """A status card's (css classes, value)."""
    match = re.search(rf"<div class='n ?([a-z ]*)'>([^<]*)</div><div class='l'>{label}</div>", page)
    assert match is not None, label
    return match.group(1), match.group(2)


def test_workers_alive_and_stalled_dispatchers(runtime: Runtime, web: httpx.Client) -> None:
    log_in(web)
    page = web.get("/admin").text
    assert _card(page, "workers alive") == ("bad", "0")
    assert _card(page, "dispatchers stalled") == ("", "0")
    assert "Dispatcher stalled" not in page

    # Two heartbeats: one dispatcher did a round a second ago, one none for ten minutes.
    now = time.time()
    for name, loop_at in (("w1@host", now - 600), ("w2@host", now - 1)):
        record = {"hostname": name, "at": now, "loop_at": loop_at}
        runtime.redis.set(keys.worker_heartbeat(name), json.dumps(record))

    page = web.get("/admin").text
    assert _card(page, "workers alive") == ("", "2")
    assert _card(page, "dispatchers stalled") == ("bad", "1")
    assert "<strong>Dispatcher stalled</strong> on w1@host:" in page
    assert "w2@host" not in page


def test_actions_need_the_csrf_token(runtime: Runtime, web: httpx.Client) -> None:
    entry_id = make_dead_letter(runtime, "user_a")
    log_in(web)
    refused = web.post(f"/admin/actions/delete/{entry_id}", data={"csrf": "0" * 64})
    assert refused.status_code == 403
    assert runtime.dlq.ids() == [entry_id]


def test_replay_and_delete_buttons(
    runtime: Runtime, web: httpx.Client, sandbox: SandboxHandle
) -> None:
    replay_me = make_dead_letter(runtime, "user_a")
    delete_me = make_dead_letter(runtime, "user_b")
    sandbox.control.create_customer("a@x.tw", external_id="user_a")
    csrf = log_in(web)

    replayed = web.post(
        f"/admin/actions/replay/{replay_me}", data={"csrf": csrf, "reason": "not_found"}
    )
    assert replayed.status_code == 303
    assert replayed.headers["location"] == "/admin?reason=not_found&notice=replayed&n=1"
    assert "Replayed 1" in web.get(replayed.headers["location"]).text
    assert [o.result for o in sync_due(runtime)] == ["applied"]

    deleted = web.post(f"/admin/actions/delete/{delete_me}", data={"csrf": csrf, "reason": ""})
    assert deleted.headers["location"] == "/admin?notice=deleted&n=1"
    assert runtime.dlq.ids() == []
    assert "No dead letters." in web.get("/admin").text


def test_replay_all_of_a_filter_and_resume(runtime: Runtime, web: httpx.Client) -> None:
    for n in range(3):
        make_dead_letter(runtime, f"user_{n}")
    runtime.flow.pause(reason="unauthorized", status=401, message="bad key")
    csrf = log_in(web)
    response = web.post("/admin/actions/replay-all", data={"csrf": csrf, "reason": "not_found"})
    assert response.headers["location"] == "/admin?reason=not_found&notice=replayed&n=3"
    assert runtime.pending.depths()["pending"] == 3

    resumed = web.post("/admin/actions/resume", data={"csrf": csrf})
    assert resumed.status_code == 303
    assert runtime.flow.paused() is None


def test_logout(web: httpx.Client) -> None:
    csrf = log_in(web)
    response = web.post("/admin/logout", data={"csrf": csrf})
    assert response.headers["location"] == "/admin/login"
    assert web.get("/admin").status_code == 303
