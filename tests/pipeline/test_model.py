"""A model-based test of the whole sync path: its oracle is what Recur received, in order.

Hypothesis interleaves events (out of order), scripted Recur failures (5xx: hand-backs behind a
fence; 404 and 422: dead letters), claims by two workers, lease lapses, replays and rebinds.
At the end the faults are cleared, everything due is synced and every dead letter replayed;
then the sandbox's request log, folded in the order the sandbox applied it, must leave each
customer with the newest accepted value of each field, and the sandbox's own state must agree.

The store and two Syncers run in this process on a clock the test moves (real Redis, the real
sandbox over HTTP), so a lapse, a backoff or a fence passes without waiting for it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sync_worker import redis_keys as keys
from sync_worker.deadletters.dlq import DeadLetterQueue
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.pending import PendingStore
from sync_worker.pipeline.records import Claim
from sync_worker.pipeline.sync import Syncer
from sync_worker.runtime import Runtime
from sync_worker.settings import Settings, load_settings
from tests.fixtures.clock import Clock
from tests.fixtures.sandbox import SandboxHandle

USERS = 2
LEASE = 10.0
FIELDS = ("name", "metadata")


@dataclass
class User:
    """One customer as the merchant sees it: its external ids (the last is current) and the
    newest value it sent for each field, as (event time, value)."""

    ids: list[str]
    newest: dict[str, tuple[int, Any]] = field(default_factory=dict)
    last_ts: int = 100_000

    @property
    def current(self) -> str:
        return self.ids[-1]


def model_settings(redis_url: str, sandbox: SandboxHandle) -> Settings:
    return load_settings(
        _env_file=None,
        redis_url=redis_url,
        recur_api_url=sandbox.url,
        recur_secret_key=sandbox.secret_key,
        debounce_window_seconds=0,
        debounce_max_wait_seconds=1,
        recur_connect_timeout_seconds=1,
        recur_read_timeout_seconds=2,
        retry_fast_attempts=1,
        retry_fast_max_seconds=1,
        retry_backoff_base_seconds=1,
        retry_backoff_max_seconds=4,
        lease_seconds=LEASE,
        fence_hold_seconds=60,  # on the test's clock; the key's real expiry outlives a run
        fence_verify_delay_seconds=1,
        rate_limit_per_second=10_000,
        rate_limit_burst=10_000,
        breaker_min_calls=100_000,
        bind_by_email=False,
        log_level="WARNING",
        log_format="json",
    )


def received(sandbox: SandboxHandle) -> dict[str, dict[str, Any]]:
    """Recur's customers rebuilt from the successful PATCHes it logged, in the order it applied
    them: external id -> fields. A PATCH that sets `external_id` moves the customer."""
    customers: dict[str, dict[str, Any]] = {}
    for request in sandbox.control.requests(method="PATCH", status=200):
        target = request["external_id"]
        body = request["body"]
        customer = customers.pop(target, {})
        customer.update({k: v for k, v in body.items() if k != "external_id"})
        customers[body.get("external_id", target)] = customer
    return customers


class SyncModel(RuleBasedStateMachine):
    """The interleavings; `teardown` drains and judges."""

    redis_url = ""
    sandbox: SandboxHandle

    def __init__(self) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(self.redis_url)
        self.client.flushall()
        self.sandbox.control.reset()
        self.clock = Clock()
        self.settings = model_settings(self.redis_url, self.sandbox)
        self.runtimes = [Runtime(self.settings, client=self.client) for _ in range(2)]
        self.stores = [self._store() for _ in self.runtimes]
        self.workers = [
            self._syncer(runtime, store)
            for runtime, store in zip(self.runtimes, self.stores, strict=True)
        ]
        self.dlq = DeadLetterQueue(self.client, pending=self.stores[0])
        self.claimed: list[list[Claim]] = [[], []]
        self.users: list[User] = []
        self.order = itertools.count(1)
        self.ticks = itertools.count(1)

    def _store(self) -> PendingStore:
        return PendingStore(
            self.client,
            window_seconds=0,
            max_wait_seconds=1,
            dedup_ttl_seconds=3600,
            lease_seconds=LEASE,
            verify_delay_seconds=self.settings.fence_verify_delay_seconds,
            clock=self.clock,
        )

    def _syncer(self, runtime: Runtime, store: PendingStore) -> Syncer:
        return Syncer(
            settings=self.settings,
            pending=store,
            flow=runtime.flow,
            breaker=runtime.breaker,
            client=runtime.recur,
            stats=runtime.stats,
            ops=runtime.ops,
            ledger=runtime.ledger,
            trace=runtime.trace,
            clock=self.clock,
        )

    @initialize()
    def customers(self) -> None:
        self.users = [User(ids=[f"u{i}"]) for i in range(USERS)]
        self.sandbox.control.create_customers(
            [
                {"email": f"u{i}@example.com", "name": "old", "external_id": f"u{i}"}
                for i in range(USERS)
            ]
        )

    def _accept(self, user: User, ts: int, fields: dict[str, Any]) -> None:
        event = UserEvent(f"evt_{next(self.order)}", "user.updated", user.current, ts, fields)
        self.stores[0].accept(event)

    # -- the merchant -------------------------------------------------------------------------

    @rule(
        who=st.integers(0, USERS - 1),
        name=st.sampled_from(FIELDS),
        age=st.integers(0, 30),
        value=st.integers(0, 99),
    )
    def event(self, who: int, name: str, age: int, value: int) -> None:
        """A change with an event time anywhere in the recent past: arrival order is not time
        order. Times are unique per user (ties are broken by arrival, which a model of several
        external ids cannot follow)."""
        user = self.users[who]
        user.last_ts += 100
        ts = user.last_ts - age * 100 + next(self.ticks)  # < 100 events a run: unique
        content: Any = f"{user.ids[0]} {value}" if name == "name" else {"v": value}
        self._accept(user, ts, {name: content})
        current = user.newest.get(name)
        if current is None or ts > current[0]:
            user.newest[name] = (ts, content)

    @rule(who=st.integers(0, USERS - 1))
    def rebind(self, who: int) -> None:
        """The user's external id changes (newest change of all, like a real one)."""
        user = self.users[who]
        if len(user.ids) > 2:  # two moves per user are enough; the steps go to the rest
            return
        new_id = f"{user.ids[0]}_r{len(user.ids)}"
        user.last_ts += 100
        self._accept(user, user.last_ts, {"external_id": new_id})
        user.ids.append(new_id)

    # -- Recur --------------------------------------------------------------------------------

    @rule(who=st.integers(0, USERS - 1), status=st.sampled_from([500, 502, 404, 422]))
    def fail_next(self, who: int, status: int) -> None:
        """Recur refuses the next request naming the user's current id."""
        faults = self.sandbox.control.faults()
        scripts = faults["scripts"]
        user = self.users[who]
        scripts[user.current] = [*scripts.get(user.current, []), status]
        self.sandbox.control.update_faults(scripts=scripts)

    # -- workers ------------------------------------------------------------------------------

    @rule(worker=st.integers(0, 1))
    def claim(self, worker: int) -> None:
        self.claimed[worker] += self.stores[worker].claim_due(5)

    @rule(worker=st.integers(0, 1))
    def run(self, worker: int) -> None:
        claims, self.claimed[worker] = self.claimed[worker], []
        if claims:
            self.workers[worker].sync_claims(claims)

    @rule(seconds=st.sampled_from([0.5, 2.0, 5.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def lease_lapses(self) -> None:
        """A worker stalls past its lease: the sweeper offers its users again."""
        self.clock.now += LEASE + 1
        self.stores[1].requeue_expired()

    @precondition(lambda self: bool(self._dead_letters()))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        entry_id = data.draw(st.sampled_from(sorted(self._dead_letters())))
        self.dlq.replay(entry_id)

    def _dead_letters(self) -> list[str]:
        return [m.decode() for m in self.client.zrange(keys.DEAD_LETTERS, 0, -1)]

    @invariant()
    def one_holder_per_user(self) -> None:
        due = {m.decode() for m in self.client.zrange(keys.DUE, 0, -1)}
        inflight = {m.decode() for m in self.client.zrange(keys.INFLIGHT, 0, -1)}
        assert not due & inflight

    # -- the end ------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Sync everything due, lapsed or fenced, and replay every dead letter, until nothing
        moves (faults are off by now)."""
        for _ in range(200):
            self.clock.now += 61  # past any backoff, lease or fence
            for store in self.stores:
                store.requeue_expired()
            for worker, claims in enumerate(self.claimed):
                if claims:
                    self.claimed[worker] = []
                    self.workers[worker].sync_claims(claims)
            claims = self.stores[0].claim_due(50)
            if claims:
                self.workers[0].sync_claims(claims)
                continue
            replayed = [self.dlq.replay(i).outcome for i in self._dead_letters()]
            if "replayed" not in replayed:
                return
        pytest.fail("the pending store never emptied")

    def teardown(self) -> None:
        try:
            if self.users:
                self.sandbox.control.clear_faults()
                self._drain()
                self._judge()
        finally:
            for runtime in self.runtimes:
                runtime.close()

    def _judge(self) -> None:
        assert not self.client.exists(*[keys.pending(i) for u in self.users for i in u.ids])
        recur = received(self.sandbox)
        for user in self.users:
            expected = {name: value for name, (_, value) in user.newest.items()}
            if len(user.ids) > 1:
                assert self.sandbox.control.customer_by_external_id(user.ids[0]) is None
            got = recur.get(user.current, {})
            assert {k: got.get(k) for k in expected} == expected, (user, recur)
            customer = self.sandbox.control.customer_by_external_id(user.current)
            assert customer is not None, user
            if "name" in expected:
                assert customer["name"] == expected["name"], (user, customer)


def test_recur_ends_with_the_newest_value_of_every_field(
    redis_url: str, sandbox: SandboxHandle
) -> None:
    SyncModel.redis_url = redis_url
    SyncModel.sandbox = sandbox
    run_state_machine_as_test(
        SyncModel,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        ),
    )
