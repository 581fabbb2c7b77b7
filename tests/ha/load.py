"""A merchant's webhook sender: signed events at a steady rate, one user each, retrying an
event (same id, same body) until it is answered 2xx, as Standard Webhooks senders do."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from tests.fixtures.stack import Stack, user_event

RETRY_PAUSE_SECONDS = 0.2

SUMMARIES: list[str] = []
"""One line per failover run: what was sent, accepted and lost, how long intake and the worker
took to come back; printed at the end of the session (conftest.py)."""


@dataclass
class Sent:
    """One event and what intake answered to each attempt."""

    event_id: str
    user_id: str
    name: str
    answers: list[tuple[float, float, str]] = field(default_factory=list)
    """(time.monotonic() the attempt started, when it was answered, the status or error)."""
    accepted_at: float | None = None
    """time.monotonic() of the 2xx answer, if one came."""


class Sender:
    """Sends `count` events at `rate` per second from a pool of threads."""

    def __init__(self, stack: Stack, *, count: int, rate: float, give_up_after: float) -> None:
        self._stack = stack
        self._rate = rate
        self._give_up_after = give_up_after
        self.events = [
            Sent(f"evt_ha_{n}", f"user_{n}", f"user_{n} after failover")
            for n in range(1, count + 1)
        ]
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()
        self._answered = 0
        self._pool = ThreadPoolExecutor(64, thread_name_prefix="sender")
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        for index, event in enumerate(self.events):
            self._pool.submit(self._send, event, self.started + index / self._rate)

    def wait(self) -> None:
        """Until every event is answered 2xx or given up."""
        self._pool.shutdown(wait=True)
        for client in self._clients:
            client.close()

    def answered(self) -> int:
        """Attempts answered so far (any status, or a transport error)."""
        with self._lock:
            return self._answered

    def accepted(self) -> list[Sent]:
        return [e for e in self.events if e.accepted_at is not None]

    def _client(self) -> httpx.Client:
        if not hasattr(self._local, "client"):
            self._local.client = httpx.Client(timeout=10)
            with self._lock:
                self._clients.append(self._local.client)
        client: httpx.Client = self._local.client
        return client

    def _send(self, event: Sent, at: float) -> None:
        time.sleep(max(0.0, at - time.monotonic()))
        body = json.dumps(user_event(event.event_id, event.user_id, name=event.name)).encode()
        deadline = time.monotonic() + self._give_up_after
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                response = self._client().post(
                    self._stack.web_url + "/webhooks/user-updated",
                    content=body,
                    headers=self._stack.sign(body, msg_id=event.event_id),
                )
                answer = str(response.status_code)
            except httpx.TransportError as error:
                answer = type(error).__name__
            now = time.monotonic()
            event.answers.append((started, now, answer))
            with self._lock:
                self._answered += 1
            if answer in ("200", "202"):
                event.accepted_at = now
                return
            time.sleep(RETRY_PAUSE_SECONDS)
