"""The admin API and the dashboard, hit by someone without the token, on the real web
process: refused before anything is read, the same answer whether an id exists or not, and
nothing done."""

from __future__ import annotations

import httpx
import pytest

from sync_worker.web import auth
from tests.fixtures.stack import ADMIN_TOKEN, Stack, user_event, wait_for
from tests.hostile.leaks import remember_secret

BASE = "/admin/api/dead-letters/"
ROUTES = (("GET", ""), ("GET", "?triage=true"), ("POST", "/replay"), ("DELETE", ""))
FORGED = "Bearer forged-token-5f3c9a1e77d2"
remember_secret("a forged Authorization header", FORGED)


def dead_letter(stack: Stack) -> str:
    """A real dead letter: an update for a customer Recur does not know (404)."""
    assert stack.post(user_event("evt_ghost", "user_ghost", name="x")).status_code == 202
    ids: list[str] = wait_for(lambda: stack.redis.zrange("rs:dlq-index", 0, -1), timeout=30)
    return ids[0]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        FORGED,
        f"Bearer {ADMIN_TOKEN[:-1]}",
        f"Bearer {ADMIN_TOKEN} extra",
        f"Token {ADMIN_TOKEN}",
        f"bearer{ADMIN_TOKEN}",
        "Bearer " + "a" * 8000,
    ],
)
def test_admin_api_refuses_and_does_not_tell_which_ids_exist(
    web: Stack, authorization: str | None
) -> None:
    real = dead_letter(web)
    headers = {} if authorization is None else {"Authorization": authorization}
    with httpx.Client(base_url=web.web_url, headers=headers, timeout=10) as client:
        pairs = [
            (
                client.request(method, BASE + real + tail),
                client.request(method, BASE + other + tail),
            )
            for method, tail in ROUTES
            for other in ("dl_missing", "dl_0000000000_x", real[:-1], "%2e%2e")
        ]
        others = [
            client.get("/admin/api/dead-letters"),
            client.post("/admin/api/dead-letters/replay", json={"all": True}),
            client.get("/admin/api/status"),
            client.post("/admin/api/resume"),
        ]
    for existing, missing in pairs:
        assert existing.status_code == missing.status_code == 401
        assert existing.content == missing.content
        assert existing.headers.get("www-authenticate") == "Bearer"
    assert {r.status_code for r in others} == {401}
    answers = [r for pair in pairs for r in pair] + others
    assert not any(ADMIN_TOKEN in r.text or "forged-token" in r.text for r in answers)
    assert web.redis.zrange("rs:dlq-index", 0, -1) == [real]  # nothing replayed or deleted


@pytest.mark.parametrize(
    "cookie",
    [
        None,
        "garbage",
        "1.2.3",
        auth.new_session("another-token-entirely"),
        auth.new_session(ADMIN_TOKEN, now=0),  # signed, but long expired
    ],
    # Sessions carry random nonces: fixed ids keep collection identical across xdist workers.
    ids=["none", "garbage", "malformed", "other-token", "expired"],
)
def test_dashboard_actions_refuse_and_do_not_tell_which_ids_exist(
    web: Stack, cookie: str | None
) -> None:
    real = dead_letter(web)
    cookies = {} if cookie is None else {auth.SESSION_COOKIE: cookie}
    with httpx.Client(base_url=web.web_url, cookies=cookies, timeout=10) as client:
        page = client.get("/admin")
        assert page.status_code == 303
        assert real not in page.text
        for action in ("replay", "delete"):
            existing = client.post(f"/admin/actions/{action}/{real}", data={"csrf": "x"})
            missing = client.post(f"/admin/actions/{action}/dl_missing", data={"csrf": "x"})
            assert existing.status_code == missing.status_code == 303
            assert existing.headers["location"] == missing.headers["location"] == "/admin/login"
            assert existing.content == missing.content
        assert client.post("/admin/actions/replay-all", data={"csrf": "x"}).status_code == 303
    assert web.redis.zrange("rs:dlq-index", 0, -1) == [real]


def test_dashboard_login_with_a_wrong_token_is_refused_and_not_echoed(web: Stack) -> None:
    response = httpx.post(
        web.web_url + "/admin/login", data={"token": "forged-token-5f3c9a1e77d2"}, timeout=10
    )
    assert response.status_code == 401
    assert "forged-token" not in response.text
    assert auth.SESSION_COOKIE not in response.cookies


def test_the_webhook_route_ignores_an_authorization_header(web: Stack) -> None:
    body = b'{"userId": "user_1", "name": "x"}'
    headers = {**web.sign(body, msg_id="msg_auth"), "Authorization": f"Bearer {ADMIN_TOKEN}"}
    headers["webhook-signature"] = "v1,AAAA"
    response = httpx.post(
        web.web_url + "/webhooks/user-updated", content=body, headers=headers, timeout=10
    )
    assert response.status_code == 401
    assert ADMIN_TOKEN not in response.text
