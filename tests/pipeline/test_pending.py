"""The pending store's scripts against a real Redis: merge, debounce, claims, settling, fencing."""

from __future__ import annotations

import itertools
import json

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker import redis_keys as keys
from sync_worker.deadletters.dlq import DeadLetterQueue
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.ledger import Ledger
from sync_worker.pipeline.pending import EVENTS_KEPT, PENDING_EVENTS, PendingStore
from sync_worker.pipeline.records import Claim, FieldState, Snapshot
from tests.fixtures.clock import Clock

START = 1_000_000.0
_ids = itertools.count()


def event(user: str, ts_ms: int, **fields: object) -> UserEvent:
    return UserEvent(
        event_id=f"evt_{next(_ids)}", type="user.updated", user_id=user, ts_ms=ts_ms, fields=fields
    )


def store(client: redis.Redis, clock: Clock, **overrides: float) -> PendingStore:
    options = {"window_seconds": 2.0, "max_wait_seconds": 30.0, "lease_seconds": 60.0}
    options.update(overrides)
    return PendingStore(
        client,
        window_seconds=options["window_seconds"],
        max_wait_seconds=options["max_wait_seconds"],
        dedup_ttl_seconds=3600,
        lease_seconds=options["lease_seconds"],
        clock=clock,
    )


def raw_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def claim_one(pending: PendingStore) -> Claim:
    claims = pending.claim_due(10)
    assert len(claims) == 1
    return claims[0]


def claim_and_read(pending: PendingStore) -> tuple[Claim, Snapshot]:
    """Claim the one due user and read its change, as a task does first."""
    claim = claim_one(pending)
    snapshot = pending.snapshot(claim)
    assert snapshot is not None
    return claim, snapshot


def test_duplicate_event_id_is_refused(redis_url: str) -> None:
    pending = store(raw_client(redis_url), Clock(START))
    first = event("u1", 1000, name="a")
    assert pending.accept(first).duplicate is False
    again = UserEvent(first.event_id, first.type, "u1", 2000, {"name": "b"})
    assert pending.accept(again).duplicate is True
    clock_claim = pending.claim_due(10)
    assert clock_claim == []  # not due yet: the window has not passed


def test_debounce_window_extends_until_max_wait(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock, window_seconds=2.0, max_wait_seconds=5.0)
    start = clock.now
    for step in range(10):
        clock.now = start + step
        pending.accept(event("u1", 1000 + step, name=f"n{step}"))
    due = client.zscore(keys.DUE, "u1")
    assert due == start + 5.0  # capped by the max wait, not pushed to start + 9 + 2
    clock.now = start + 4.9
    assert pending.claim_due(10) == []
    clock.now = start + 5.0
    assert [c.user_id for c in pending.claim_due(10)] == ["u1"]


def test_fields_merge_latest_event_time_wins_per_field(redis_url: str) -> None:
    clock = Clock(START)
    pending = store(raw_client(redis_url), clock)
    pending.accept(event("u1", 3000, name="newest"))
    pending.accept(event("u1", 1000, name="older", metadata={"plan": "free"}))
    pending.accept(event("u1", 2000, metadata={"plan": "pro"}))
    clock.now += 3
    snapshot = pending.snapshot(claim_one(pending))
    assert snapshot is not None
    assert {k: v.value for k, v in snapshot.fields.items()} == {
        "name": "newest",
        "metadata": {"plan": "pro"},
    }


def test_a_pending_change_keeps_its_last_event_ids_and_counts_its_versions(
    redis_url: str,
) -> None:
    """The version counts the events merged into the change (a stale or duplicate one adds
    nothing), and the change names the last EVENTS_KEPT events it covers, oldest first."""
    client = raw_client(redis_url)
    pending = store(client, Clock(START))
    merged = [event("u1", 1000 + i, name=f"n{i}") for i in range(EVENTS_KEPT + 5)]
    assert [pending.accept(e).version for e in merged] == list(range(1, EVENTS_KEPT + 6))
    assert pending.accept(event("u1", 10, name="older")).changed is False
    assert pending.accept(merged[-1]).duplicate is True
    both = event("u1", 9000, name="both", email="a@example.com")
    assert pending.accept(both).version == EVENTS_KEPT + 6
    assert client.hget(keys.pending("u1"), "version") == str(EVENTS_KEPT + 6).encode()
    covered = [raw.decode() for raw in client.lrange(PENDING_EVENTS + "u1", 0, -1)]
    assert covered == [e.event_id for e in merged[-(EVENTS_KEPT - 1) :]] + [both.event_id]
    assert len(covered) == EVENTS_KEPT


def test_event_older_than_applied_state_changes_nothing(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    pending.accept(event("u1", 5000, name="applied"))
    clock.now += 3
    claim, snapshot = claim_and_read(pending)
    assert pending.mark_applied(claim, snapshot) == "done"

    late = pending.accept(event("u1", 4000, name="stale"))
    assert late.duplicate is False
    assert late.changed is False
    assert not client.exists(keys.pending("u1"))
    assert client.zscore(keys.DUE, "u1") is None
    entry = Ledger(client).get("u1")
    assert entry is not None
    assert entry.fields["name"].value == "applied"


def test_change_arriving_during_flight_is_kept_and_rescheduled(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    pending.accept(event("u1", 1000, name="first", metadata={"a": 1}))
    clock.now += 3
    claim, snapshot = claim_and_read(pending)
    # while the PATCH is in flight, a newer name arrives: it must not be scheduled on its own
    pending.accept(event("u1", 2000, name="second"))
    assert client.zscore(keys.DUE, "u1") is None
    assert pending.mark_applied(claim, snapshot) == "more"
    assert client.zscore(keys.DUE, "u1") is not None
    clock.now += 3
    again = pending.snapshot(claim_one(pending))
    assert again is not None
    assert {k: v.value for k, v in again.fields.items()} == {"name": "second"}
    ledger = Ledger(client).get("u1")
    assert ledger is not None
    assert ledger.fields["name"].value == "first"
    assert ledger.fields["metadata"].value == {"a": 1}


def test_two_claims_never_hold_the_same_user(redis_url: str) -> None:
    clock = Clock(START)
    first = store(raw_client(redis_url), clock)
    second = store(raw_client(redis_url), clock)
    first.accept(event("u1", 1000, name="x"))
    clock.now += 3
    assert len(first.claim_due(10)) == 1
    assert second.claim_due(10) == []


def test_lapsed_lease_is_requeued_and_the_old_claim_is_fenced(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock, lease_seconds=10)
    pending.accept(event("u1", 1000, name="x"))
    clock.now += 3
    stale_claim = claim_one(pending)
    clock.now += 11  # the worker died: its lease lapses
    assert pending.requeue_expired() == 1
    fresh_claim = claim_one(pending)
    assert fresh_claim.token != stale_claim.token
    assert pending.snapshot(stale_claim) is None
    assert pending.renew(stale_claim) is False
    assert pending.hand_back(stale_claim, delay=1, error={"code": "x"}) is None
    assert pending.snapshot(fresh_claim) is not None


def test_hand_back_counts_attempts_and_reschedules(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    pending.accept(event("u1", 1000, name="x"))
    clock.now += 3
    claim = claim_one(pending)
    assert pending.snapshot(claim) is not None
    attempts, since = pending.hand_back(claim, delay=30, error={"code": "internal_error"}) or (0, 0)
    assert (attempts, since) == (1, clock.now)
    assert client.zscore(keys.DUE, "u1") == clock.now + 30
    assert client.zscore(keys.INFLIGHT, "u1") is None
    # a new event does not pull a user in backoff forward
    pending.accept(event("u1", 2000, name="y"))
    assert client.zscore(keys.DUE, "u1") == clock.now + 30


def test_dead_letter_takes_the_change_out_atomically(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    pending.accept(event("u1", 1000, name="x"))
    clock.now += 3
    claim, snapshot = claim_and_read(pending)
    written, state = pending.dead_letter(
        claim,
        snapshot,
        new_id="dl_1",
        common={"reason": "not_found", "request": "{}"},
        created={"id": "dl_1", "user_id": "u1"},
    )
    assert (written, state) == ("dl_1", "done")
    assert client.hget(keys.dead_letter("dl_1"), "reason") == b"not_found"
    assert client.zscore(keys.DEAD_LETTERS, "dl_1") is not None
    assert not client.exists(keys.pending("u1"))
    assert client.zscore(keys.INFLIGHT, "u1") is None


def test_restore_for_replay_is_guarded_and_skips_stale(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    fields = {"name": FieldState("from-dlq", 1000)}
    assert pending.restore("u1", fields, replay_of="dl_1") == 1
    assert pending.restore("u1", fields, replay_of="dl_1") == -1  # already being replayed
    claim = claim_one(pending)  # due at once: a replay skips the debounce
    snapshot = pending.snapshot(claim)
    assert snapshot is not None
    assert snapshot.replay_of == ["dl_1"]
    pending.mark_applied(claim, snapshot)
    # the ledger now has ts 1000; the same field at the same age is no longer newer than pending
    assert pending.restore("u1", {"name": FieldState("older", 500)}) == 0


class Model:
    """A reference model of one user's desired state: the newest event per field wins."""

    def __init__(self) -> None:
        self.newest: dict[str, tuple[int, int, str]] = {}

    def apply(self, order: int, ts: int, field: str, value: str) -> None:
        current = self.newest.get(field)
        if current is None or (ts, order) >= (current[0], current[1]):
            self.newest[field] = (ts, order, value)


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("event"),
            st.integers(1, 50),
            st.sampled_from(["name", "metadata"]),
            st.text("abc", min_size=1, max_size=3),
        ),
        st.tuples(st.just("sync"), st.just(0), st.just(""), st.just("")),
        st.tuples(st.just("claim"), st.just(0), st.just(""), st.just("")),
        st.tuples(st.just("finish"), st.just(0), st.just(""), st.just("")),
    ),
    max_size=30,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_interleavings_never_leave_a_stale_final_value(redis_url: str, ops: list) -> None:  # type: ignore[type-arg]
    """Events, claims and settles interleaved in any order: once everything is flushed, the
    ledger holds the newest value of each field (by event time), never an older one."""
    client = raw_client(redis_url)
    client.flushall()
    clock = Clock(START)
    pending = store(client, clock, window_seconds=0, max_wait_seconds=1)
    model = Model()
    in_flight: list[tuple[Claim, object]] = []
    for order, (kind, ts, field, value) in enumerate(ops):
        if kind == "event":
            pending.accept(event("u1", ts, **{field: value}))
            model.apply(order, ts, field, value)
        elif kind == "claim":
            for claim in pending.claim_due(5):
                snapshot = pending.snapshot(claim)
                if snapshot is not None:
                    in_flight.append((claim, snapshot))
        elif kind in ("finish", "sync") and in_flight:
            claim, snapshot = in_flight.pop(0)
            pending.mark_applied(claim, snapshot)  # type: ignore[arg-type]
    for claim, snapshot in in_flight:
        pending.mark_applied(claim, snapshot)  # type: ignore[arg-type]
    while True:
        claims = pending.claim_due(5)
        if not claims:
            break
        for claim in claims:
            snapshot = pending.snapshot(claim)
            assert snapshot is not None
            pending.mark_applied(claim, snapshot)
    entry = Ledger(client).get("u1")
    applied = {} if entry is None else {k: v.value for k, v in entry.fields.items()}
    assert applied == {field: value for field, (_, _, value) in model.newest.items()}
    assert not client.exists(keys.pending("u1"))


def test_rebind_moves_ledger_and_pending_change(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    pending.accept(event("old", 1000, name="before", metadata={"a": 1}))
    clock.now += 3
    claim, snapshot = claim_and_read(pending)
    pending.accept(event("old", 2000, name="typed during the move"))
    assert pending.mark_applied(claim, snapshot) == "more"
    assert pending.rebind("old", "new") is True
    assert Ledger(client).get("old") is None
    ledger = Ledger(client).get("new")
    assert ledger is not None
    assert ledger.fields["metadata"].value == {"a": 1}
    assert client.zscore(keys.DUE, "old") is None
    clock.now += 3
    moved = pending.snapshot(claim_one(pending))
    assert moved is not None
    assert moved.user_id == "new"
    assert {k: v.value for k, v in moved.fields.items()} == {"name": "typed during the move"}


def test_replay_restored_while_in_flight_is_resolved_by_the_send_that_carries_it(
    redis_url: str,
) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    client.hset(keys.dead_letter("dl_1"), mapping={"id": "dl_1", "user_id": "u1"})
    client.zadd(keys.DEAD_LETTERS, {"dl_1": clock.now})
    pending.accept(event("u1", 1000, name="in flight"))
    clock.now += 3
    claim, snapshot = claim_and_read(pending)
    # the operator replays while the user's PATCH is in flight
    assert pending.restore("u1", {"metadata": FieldState({"plan": "pro"}, 900)}, replay_of="dl_1")
    assert pending.mark_applied(claim, snapshot) == "more"
    assert client.exists(keys.dead_letter("dl_1"))  # not sent yet: the entry stays
    claim, replay = claim_and_read(pending)
    assert replay.replay_of == ["dl_1"]
    assert pending.mark_applied(claim, replay) == "done"
    assert not client.exists(keys.dead_letter("dl_1"))
    assert client.zscore(keys.DEAD_LETTERS, "dl_1") is None


def test_a_rebinding_send_settles_and_moves_in_one_step(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    pending.accept(event("old", 1000, external_id="new"))
    clock.now += 3
    claim, snapshot = claim_and_read(pending)
    typed = event("old", 2000, name="typed during the move")
    pending.accept(typed)
    clock.now += 3
    assert pending.mark_applied(claim, snapshot) == "done"
    # no moment exists where a claim could send the old id's change (it would get a 404)
    assert client.zscore(keys.DUE, "old") is None
    assert not client.exists(keys.pending("old"))
    assert Ledger(client).get("old") is None
    assert not client.exists(PENDING_EVENTS + "old")
    moved = pending.snapshot(claim_one(pending))
    assert moved is not None
    assert moved.user_id == "new"
    assert {k: v.value for k, v in moved.fields.items()} == {"name": "typed during the move"}
    assert moved.event_ids == [typed.event_id]
    assert Ledger(client).get("new") is not None


def test_rebind_keeps_a_field_the_new_user_applied_later(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    Ledger(client).seed("new", {"name": "applied to new"}, ts_ms=5000)
    older = event("old", 3000, name="older than new's", metadata={"a": 1})
    pending.accept(older)
    assert pending.rebind("old", "new") is True
    assert not client.exists(keys.pending("old"), PENDING_EVENTS + "old")
    clock.now += 3
    moved = pending.snapshot(claim_one(pending))
    assert moved is not None
    assert moved.user_id == "new"
    assert {k: v.value for k, v in moved.fields.items()} == {"metadata": {"a": 1}}
    assert moved.event_ids == [older.event_id]


def test_rebind_of_a_change_entirely_older_than_the_new_users_drops_it(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    Ledger(client).seed("new", {"name": "applied to new"}, ts_ms=5000)
    pending.accept(event("old", 3000, name="older than new's"))
    assert pending.rebind("old", "new") is True
    assert not client.exists(keys.pending("old"), PENDING_EVENTS + "old")
    assert not client.exists(keys.pending("new"))
    assert client.zcard(keys.DUE) == 0
    entry = Ledger(client).get("new")
    assert entry is not None
    assert entry.fields["name"].value == "applied to new"


def test_rebind_drops_a_change_of_the_new_id_older_than_what_the_old_id_applied(
    redis_url: str,
) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    pending.accept(event("old", 3000, name="applied to old"))
    clock.now += 3
    claim, snapshot = claim_and_read(pending)
    assert pending.mark_applied(claim, snapshot) == "done"
    # sent under the new id before the rebind, and older than what the old id applied
    pending.accept(event("new", 2000, name="older", metadata={"a": 1}))
    assert pending.rebind("old", "new") is False
    clock.now += 3
    left = pending.snapshot(claim_one(pending))
    assert left is not None
    assert {k: v.value for k, v in left.fields.items()} == {"metadata": {"a": 1}}


def test_a_dead_letter_of_a_rebound_id_is_replayed_to_the_new_one(redis_url: str) -> None:
    client = raw_client(redis_url)
    clock = Clock(START)
    pending = store(client, clock)
    dlq = DeadLetterQueue(client, pending=pending)
    client.hset(
        keys.dead_letter("dl_1"),
        mapping={
            "id": "dl_1",
            "user_id": "old",
            "fields": json.dumps({"name": {"value": "refused once", "ts_ms": 1000}}),
        },
    )
    client.zadd(keys.DEAD_LETTERS, {"dl_1": clock.now})
    pending.accept(event("old", 2000, external_id="new"))
    clock.now += 3
    claim, snapshot = claim_and_read(pending)
    assert pending.mark_applied(claim, snapshot) == "done"
    result = dlq.replay("dl_1")
    assert (result.outcome, result.user_id) == ("replayed", "new")
    assert not client.exists(keys.pending("old"))
    replay = pending.snapshot(claim_one(pending))
    assert replay is not None
    assert replay.user_id == "new"
    assert replay.replay_of == ["dl_1"]
    # moved back: the pointer of the id that holds the customer again is gone, no loop
    assert pending.rebind("new", "old") is False
    assert pending.current_id("new") == "old"
    assert pending.current_id("old") == "old"
