"""The chaos scenario runner: send numbered events, break something, then judge the outcome.

Every event sets a user's `name` to a value that names the user and a version (`user_3 v7`)
and carries an event time that orders the versions, so from what the sandbox holds and logged
we can tell, per user:

- applied: the sandbox's final name is the value of the newest accepted event;
- in the DLQ: that newest value sits in a dead letter instead;
- lost: neither (must be 0);
- stale writes: a successful PATCH that set an older value after a newer one had been applied
  (read from the sandbox's request log, in the order the sandbox handled them; must be 0).

Counts are of events: a user's events all count as applied (or dead-lettered, or lost) with its
newest one, since the newest value is what every older one collapsed into. Each scenario adds
a row to `RESULTS`; the chaos conftest prints them as a table at the end of the run.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from sync_worker import redis_keys as keys
from tests.fixtures.stack import Stack, user_event

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
HEADERS = ("scenario", "sent", "applied", "in DLQ", "lost", "stale writes", "seconds")


@dataclass(frozen=True)
class Row:
    """One scenario's line in the table."""

    scenario: str
    sent: int
    applied: int
    dead_lettered: int
    lost: int
    stale_writes: int
    seconds: float

    def cells(self) -> tuple[str, ...]:
        return (
            self.scenario,
            str(self.sent),
            str(self.applied),
            str(self.dead_lettered),
            str(self.lost),
            str(self.stale_writes),
            f"{self.seconds:.1f}",
        )


RESULTS: list[Row] = []
"""Every scenario judged in this session, in order."""


def table(rows: Iterable[Row]) -> str:
    """The rows as an aligned text table."""
    lines = [HEADERS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]

    def render(cells: tuple[str, ...]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])


@dataclass(frozen=True)
class Event:
    """One `user.updated` delivery of the scenario."""

    event_id: str
    user_id: str
    version: int
    ts_ms: int
    name: str

    def payload(self) -> dict[str, Any]:
        moment = datetime.fromtimestamp(self.ts_ms / 1000, tz=UTC)
        return user_event(self.event_id, self.user_id, at=moment, name=self.name)


@dataclass
class Verdict:
    """What became of every user's newest value, and the stale writes seen."""

    row: Row
    applied_users: set[str]
    dead_lettered_users: set[str]
    lost_users: set[str]
    stale: list[str]


@dataclass
class Chaos:
    """One scenario on a running stack: its users, the events it sent, and the verdict."""

    stack: Stack
    name: str
    users: list[str]
    started: float = field(default_factory=time.monotonic)
    answers: list[int] = field(default_factory=list)
    _accepted: dict[str, Event] = field(default_factory=dict)
    _by_value: dict[str, Event] = field(default_factory=dict)
    _next_version: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, stack: Stack, name: str, *, users: int, prefix: str = "user_") -> Chaos:
        """Create `users` customers in the sandbox (named "old") and begin a scenario."""
        ids = [f"{prefix}{i}" for i in range(users)]
        stack.sandbox.control.create_customers(
            [{"email": f"{u}@example.com", "name": "old", "external_id": u} for u in ids]
        )
        return cls(stack=stack, name=name, users=ids)

    # -- events -------------------------------------------------------------------------------

    def event(self, user_id: str, version: int | None = None) -> Event:
        """The event of `user_id` at `version` (the next one if not given). A higher version
        has a later event time, whatever order the events are sent in."""
        with self._lock:
            if version is None:
                version = self._next_version.get(user_id, 0)
            self._next_version[user_id] = max(self._next_version.get(user_id, 0), version + 1)
        ts = T0 + timedelta(milliseconds=version * 10)
        return Event(
            event_id=f"evt_{re.sub('[^A-Za-z0-9]+', '-', self.name)}_{user_id}_{version}",
            user_id=user_id,
            version=version,
            ts_ms=int(ts.timestamp() * 1000),
            name=f"{user_id} v{version}",
        )

    def wave(self) -> list[Event]:
        """The next event of every user."""
        return [self.event(user) for user in self.users]

    def post(self, event: Event, *, client: httpx.Client | None = None) -> int:
        """Deliver one event; record it as sent if the answer says it is stored (202, or 200
        for a delivery stored before). Returns the status, or 0 for a transport error."""
        body = json.dumps(event.payload()).encode()
        headers = self.stack.sign(body, msg_id=event.event_id)
        url = self.stack.web_url + "/webhooks/user-updated"
        try:
            if client is None:
                status = httpx.post(url, content=body, headers=headers, timeout=10).status_code
            else:
                status = client.post(url, content=body, headers=headers).status_code
        except httpx.TransportError:
            status = 0
        with self._lock:
            self.answers.append(status)
            if status in (200, 202):
                self._accepted[event.event_id] = event
                self._by_value[event.name] = event
        return status

    def post_all(self, events: Iterable[Event]) -> None:
        """Deliver events one after the other; each must be accepted."""
        with httpx.Client(timeout=10) as client:
            for event in events:
                status = self.post(event, client=client)
                assert status == 202, f"{event.event_id}: {status}"

    def post_concurrently(
        self, events: list[Event], *, threads: int = 6, expect: int = 202
    ) -> None:
        """Deliver events from several threads at once; each must be answered `expect`."""
        chunks = [events[i::threads] for i in range(threads)]
        failures: list[str] = []

        def run(chunk: list[Event]) -> None:
            with httpx.Client(timeout=10) as client:
                for event in chunk:
                    status = self.post(event, client=client)
                    if status != expect:
                        failures.append(f"{event.event_id}: {status}")

        workers = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert not failures, failures

    # -- judging ------------------------------------------------------------------------------

    def expected(self) -> dict[str, Event]:
        """The newest accepted event of each user that has one."""
        newest: dict[str, Event] = {}
        for event in self._accepted.values():
            current = newest.get(event.user_id)
            if current is None or event.ts_ms > current.ts_ms:
                newest[event.user_id] = event
        return newest

    def _final_names(self, users: Iterable[str]) -> dict[str, str | None]:
        control = self.stack.sandbox.control
        names: dict[str, str | None] = {}
        for user in users:
            customer = control.customer_by_external_id(user)
            names[user] = None if customer is None else customer["name"]
        return names

    def _dead_lettered_values(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for entry in self.stack.dead_letters():
            request = json.loads(entry.get("request") or "{}")
            if isinstance(request, dict) and isinstance(request.get("name"), str):
                found.setdefault(entry.get("user_id", ""), set()).add(request["name"])
        return found

    def _settled(self) -> bool:
        client = self.stack.redis
        busy = any(client.exists(keys.pending(user)) for user in self.users)
        if busy:
            return False
        newest = self.expected()
        names = self._final_names(newest)
        dead = self._dead_lettered_values()
        return all(
            names[user] == event.name or event.name in dead.get(user, set())
            for user, event in newest.items()
        )

    def stale_writes(self) -> list[str]:
        """Successful PATCHes that set a value older than one already applied to that user."""
        newest_applied: dict[str, int] = {}
        stale: list[str] = []
        users = set(self.users)
        for request in self.stack.sandbox.control.requests(method="PATCH"):
            user = request["external_id"]
            body = request["body"]
            if user not in users or not 200 <= request["status"] < 300:
                continue
            if not isinstance(body, dict) or body.get("name") not in self._by_value:
                continue
            sent = self._by_value[body["name"]]
            if sent.ts_ms < newest_applied.get(user, 0):
                stale.append(f"seq {request['seq']}: {user} <- {sent.name} after a newer value")
            newest_applied[user] = max(newest_applied.get(user, 0), sent.ts_ms)
        return stale

    def finish(self, *, timeout: float = 90) -> Verdict:
        """Wait (up to `timeout`) until every user is applied or dead-lettered, then judge,
        record the row, and assert nothing was lost and nothing went back in time."""
        deadline = time.monotonic() + timeout
        while not self._settled() and time.monotonic() < deadline:
            time.sleep(0.25)
        newest = self.expected()
        names = self._final_names(newest)
        dead = self._dead_lettered_values()
        counts: dict[str, int] = {}
        for event in self._accepted.values():
            counts[event.user_id] = counts.get(event.user_id, 0) + 1
        applied = {u for u, e in newest.items() if names[u] == e.name}
        dead_lettered = {
            u for u, e in newest.items() if u not in applied and e.name in dead.get(u, set())
        }
        lost = set(newest) - applied - dead_lettered
        stale = self.stale_writes()
        row = Row(
            scenario=self.name,
            sent=len(self._accepted),
            applied=sum(counts[u] for u in applied),
            dead_lettered=sum(counts[u] for u in dead_lettered),
            lost=sum(counts[u] for u in lost),
            stale_writes=len(stale),
            seconds=time.monotonic() - self.started,
        )
        RESULTS.append(row)
        verdict = Verdict(row, applied, dead_lettered, lost, stale)
        assert not lost, {u: (names[u], newest[u].name) for u in sorted(lost)}
        assert not stale, stale
        return verdict


def poll(predicate: Callable[[], Any], *, timeout: float = 30, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy and return it; None if the time ran out."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
