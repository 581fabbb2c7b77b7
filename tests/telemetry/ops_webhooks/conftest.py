"""A local receiver of operational webhooks: it checks every delivery's signature with the
independent `standardwebhooks` package (not our signer) and records what it got."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

OPS_SECRET = "whsec_" + base64.b64encode(b"recur-sync-ops-webhook-secret-32").decode()


@dataclass(frozen=True)
class Delivery:
    """One POST the receiver verified, and the status it answered."""

    headers: dict[str, str]
    event: dict[str, Any]
    answered: int


@dataclass
class Receiver:
    """What the receiver got; `answers` are the statuses of the next deliveries (then 200)."""

    url: str
    answers: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    forged: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """The events answered 2xx, optionally only those of one type."""
        with self.lock:
            return [
                d.event
                for d in self.deliveries
                if d.answered < 300 and event_type in (None, d.event["type"])
            ]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                event = Webhook(OPS_SECRET).verify(body, headers)
            except WebhookVerificationError:
                with receiver.lock:
                    receiver.forged += 1
                self.send_response(401)
                self.end_headers()
                return
            with receiver.lock:
                status = receiver.answers.pop(0) if receiver.answers else 200
                receiver.deliveries.append(Delivery(headers, event, status))
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"ok": status < 300}).encode())

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads what was recorded, not an access log."""

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver on a free port of 127.0.0.1, served by a thread for the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    host, port = server.server_address[:2]
    got = Receiver(url=f"http://{host!s}:{port}/hooks/recur-sync")
    server.RequestHandlerClass = _handler(got)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
