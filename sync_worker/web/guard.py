"""Refuse before reading: a request's size and credentials are checked before its body is read.

A pure ASGI middleware, because a FastAPI dependency runs only after FastAPI has read and parsed
the body: 300 MiB posted without a token to an operator route grew the web process by 1.8 GiB
before the auth dependency answered. Here, per route:

    route                              body cap   checked before the body is read
    POST /webhooks/user-updated        64 KiB     nothing (the signature covers the body)
    /admin/api/...                     64 KiB     ADMIN_TOKEN set (else 503), login throttle
                                                  (429), `Authorization: Bearer` (401)
    POST /admin/login                  16 KiB     login throttle (429)
    other POST /admin/... (forms)      16 KiB     a valid session cookie (else 303 to login)
    anything else                      16 KiB     -

The intake route is then answered by `intake.serve` directly, not through FastAPI's routing
(see intake.py). A body over its cap is refused with 413: at once when `Content-Length` says
so, otherwise as soon as the streamed bytes pass it (chunked bodies), and the app then sees a
disconnect. Every refusal closes the connection, so a client that keeps sending is cut off
rather than read to the end.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from sync_worker.settings import MAX_BODY_BYTES
from sync_worker.web import auth, intake
from sync_worker.web.state import WebState
from sync_worker.web.throttle import client_address

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INTAKE_PATH = "/webhooks/user-updated"
ADMIN_API_BYTES = MAX_BODY_BYTES  # an edit may carry metadata as large as an event's
FORM_BYTES = 16 * 1024
OTHER_BYTES = 16 * 1024
CLOSE = {"connection": "close"}


@dataclass(frozen=True)
class Rule:
    """What a route allows: its body cap and the check that runs before its body is read."""

    cap: int
    check: str  # "none", "bearer", "throttle" or "session"


def rule_for(method: str, path: str) -> Rule:
    """The rule of a request, by method and path."""
    if path == INTAKE_PATH:
        return Rule(MAX_BODY_BYTES, "none")
    if path == "/admin/api" or path.startswith("/admin/api/"):
        return Rule(ADMIN_API_BYTES, "bearer")
    if method == "POST" and path == "/admin/login":
        return Rule(FORM_BYTES, "throttle")
    if method == "POST" and path.startswith("/admin/"):
        return Rule(FORM_BYTES, "session")
    return Rule(OTHER_BYTES, "none")


def _too_large(cap: int) -> Response:
    return JSONResponse(
        {"error": {"code": "payload_too_large", "message": f"body exceeds {cap} bytes"}},
        status_code=413,
        headers=CLOSE,
    )


class RequestGuard:
    """The middleware; `state` gives the settings, the login throttle and the intake counters."""

    def __init__(self, app: ASGIApp, *, state: WebState) -> None:
        self.app = app
        self.state = state
        self._intake: ASGIApp = functools.partial(intake.serve, state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check size and credentials, then run the app with the body cap enforced."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        rule = rule_for(scope["method"], path)
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > rule.cap:
            self._count_too_large(path, reached_app=False)
            await _too_large(rule.cap)(scope, receive, send)
            return
        refusal = await self._check(rule, scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        expects_body = "transfer-encoding" in headers or declared.strip("0") != ""
        app = self._intake if path == INTAKE_PATH and scope["method"] == "POST" else self.app
        await self._run_capped(app, scope, receive, send, rule.cap, expects_body=expects_body)

    def _count_too_large(self, path: str, *, reached_app: bool) -> None:
        if path != INTAKE_PATH:
            return
        stats = self.state.runtime.stats
        if not reached_app:  # else the intake counted it as received already
            stats.incr("events_received_total")
        stats.incr("events_rejected_total", reason="too_large")

    async def _check(self, rule: Rule, scope: Scope, headers: Headers) -> Response | None:
        if rule.check == "none":
            return None
        token = auth.admin_token(self.state.settings)
        if rule.check == "session":
            cookies = cookie_parser(headers.get("cookie", ""))
            session = cookies.get(auth.SESSION_COOKIE, "")
            if token is None or not session or not auth.session_valid(token, session):
                return RedirectResponse("/admin/login", status_code=303, headers=CLOSE)
            return None
        if token is None:
            if rule.check == "throttle":
                return None  # the login page says the dashboard is off
            return auth.admin_error_response(auth.disabled_error(), close=True)
        address = client_address(scope)
        wait = await self.state.throttle.retry_after(address)
        if wait and rule.check == "throttle":
            return PlainTextResponse(
                f"Too many failed logins from this address; try again in {wait} s.",
                status_code=429,
                headers={"Retry-After": str(wait), **CLOSE},
            )
        if wait:
            return JSONResponse(
                {
                    "error": {
                        "code": "too_many_attempts",
                        "message": f"too many failed logins from this address; retry in {wait} s",
                    }
                },
                status_code=429,
                headers={"Retry-After": str(wait), **CLOSE},
            )
        if rule.check == "bearer" and not auth.bearer_matches(headers, token):
            await self.state.throttle.failed(address)
            return auth.admin_error_response(auth.unauthorized_error(), close=True)
        return None

    async def _run_capped(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        cap: int,
        *,
        expects_body: bool,
    ) -> None:
        received = 0
        body_done = not expects_body
        refused = False
        started = False

        async def capped_receive() -> Message:
            nonlocal received, body_done, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > cap:
                    refused = True
                    self._count_too_large(scope["path"], reached_app=True)
                    if not started:
                        await _too_large(cap)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the app's own answer to the disconnect: we already answered 413
            if message["type"] == "http.response.start":
                started = True
                if not body_done:
                    # The route answered without reading the whole body (a 405, a refusal):
                    # close, or the server would go on reading and discarding what is sent.
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await app(scope, capped_receive, guarded_send)
        except Exception:
            # Reading past the cap ends the app's request with a disconnect (Starlette raises
            # ClientDisconnect); the client has its 413, so that is not an error of ours.
            if not refused:
                raise
