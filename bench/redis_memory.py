"""Redis memory: bytes per customer in the ledger, per pending user, per remembered event id, per
dead letter and per user's trace, with 100,000 customers.

Every key is written by the real scripts (`PendingStore.accept`, `mark_applied_many`,
`dead_letter`), in this process, against a private redis-server, so the layout is the one
production writes; no worker or HTTP is needed to measure bytes. Each kind is measured twice:
the `INFO memory` delta (`used_memory`) of the step that creates it, divided by how many were
created (this counts the key's entry in Redis's main dictionary and its members in shared
indexes: `due`, `dlq-index`), and the mean `MEMORY USAGE` of a sample of the keys (the key and
its value only; for the ledger, every bucket's over the customers). Target: ledger <= 150 bytes
per customer, with Redis configured as README's Sizing section says (the harness's
redis-server is). The email index (`rs:email-users`, one entry per customer whose email intake
saw) is measured apart, and so is the ledger's layout before the buckets, then moved by
`Ledger.migrate` as an upgrade does (how long that takes is printed). A user's trace
(`rs:trace:{user}`, trace.py) is measured apart: with the one entry an event leaves, and with
10, 50 and 100 entries (the cap), half events written by the accept script and half attempts
as the sync path writes them. And what the accept script appends to the AOF per event, the
bytes Redis writes and fsyncs (and streams to each replica) for every event the intake accepts.

The events are typical: a name of a few CJK characters and a small metadata object
(`{"plan":"pro","seats":5}`), the fields recur-sync sends. Event ids are 24-character ids like
`evt_2x8kq...` (Standard Webhooks `msg_...` ids are of that length).

    python -m bench.redis_memory [--customers N] [--dead-letters D] [--sample S]
"""

from __future__ import annotations

import argparse
import random
import secrets
import time
from collections.abc import Callable, Iterable

import redis

from bench.harness import LEDGER_VALUE_SETTING, environment, table
from sync_worker import redis_keys as keys
from sync_worker.deadletters.dlq import creation_record, failure_record, new_dead_letter_id
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.ledger import Ledger
from sync_worker.pipeline.pending import ACCEPT_SCRIPT, PENDING_EVENTS, PendingStore
from sync_worker.pipeline.records import dumps
from sync_worker.telemetry import trace
from sync_worker.telemetry.stats import Stats
from sync_worker.telemetry.trace import TraceLog

BATCH = 500
LEDGER_TARGET = 150


def used_memory(client: redis.Redis) -> int:
    """Bytes the allocator holds for data now (`INFO memory` used_memory)."""
    return int(client.info("memory")["used_memory"])


def aof_size(client: redis.Redis) -> int:
    """Bytes in the AOF now (`INFO persistence` aof_current_size)."""
    return int(client.info("persistence")["aof_current_size"])


def settled_memory(client: redis.Redis) -> int:
    """`used_memory` once Redis has shrunk its key tables after a mass deletion: its cron does
    that a step at a time, and not while an AOF rewrite runs; until then the deleted keys' table
    slots count against what stays. Waits for no rewrite and their size to hold still a second."""
    readings: list[tuple[int, int]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        persistence = client.info("persistence")
        if persistence["aof_rewrite_in_progress"] or persistence["rdb_bgsave_in_progress"]:
            # Redis does not resize its tables while a child process shares its memory.
            readings.clear()
            time.sleep(0.2)
            continue
        db = client.memory_stats().get("db.0", {})
        readings.append(
            (
                int(db.get("overhead.hashtable.main", 0)),
                int(db.get("overhead.hashtable.expires", 0)),
            )
        )
        if len(readings) >= 6 and len(set(readings[-6:])) == 1:
            break
        time.sleep(0.2)
    return used_memory(client)


def encodings_of(client: redis.Redis, buckets: list[str]) -> str:
    """The encodings of a spread of the ledger's buckets (listpack, hashtable)."""
    found = {client.object("encoding", b) for b in buckets[:: max(1, len(buckets) // 64)]}
    return ",".join(sorted(e.decode() for e in found if e))


def total_usage(client: redis.Redis, names: list[str]) -> int:
    """Sum of `MEMORY USAGE` (SAMPLES 0) of the named keys; missing ones count 0."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
    return sum(int(size) for size in pipe.execute() if size is not None)


def sample_usage(client: redis.Redis, names: list[str]) -> float:
    """Mean `MEMORY USAGE` (SAMPLES 0: every element counted) of the named keys."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
    sizes = [int(size) for size in pipe.execute() if size is not None]
    return sum(sizes) / len(sizes)


def event(user: int, round_number: int) -> UserEvent:
    """A typical change: a CJK name and a small metadata object, a fresh 24-character id."""
    return UserEvent(
        event_id="evt_" + secrets.token_hex(10),
        type="user.updated",
        user_id=f"user_{user}",
        ts_ms=int(time.time() * 1000),
        fields={"name": f"王大明 {user}-{round_number}", "metadata": {"plan": "pro", "seats": 5}},
    )


def in_batches(users: Iterable[int], action: Callable[[list[int]], None]) -> None:
    batch: list[int] = []
    for user in users:
        batch.append(user)
        if len(batch) == BATCH:
            action(batch)
            batch = []
    if batch:
        action(batch)


def accept_all(client: redis.Redis, store: PendingStore, users: range, round_number: int) -> None:
    """One event per user through the intake script, pipelined."""

    script = client.register_script(ACCEPT_SCRIPT)

    def accept(batch: list[int]) -> None:
        pipe = client.pipeline(transaction=False)
        for user in batch:
            script_keys, args = store.accept_call(event(user, round_number))
            script(keys=script_keys, args=args, client=pipe)
        pipe.execute()

    in_batches(users, accept)


def apply_all(store: PendingStore, count: int) -> None:
    """Claim every due user and settle it as applied, as a worker does after a 200."""
    done = 0
    while done < count:
        claims = store.claim_due(BATCH)
        if not claims:
            raise SystemExit(f"only {done:,} of {count:,} users were due")
        snapshots = store.snapshot_many(claims)
        store.mark_applied_many(
            [(c, s) for c, s in zip(claims, snapshots, strict=True) if s is not None]
        )
        done += len(claims)


def dead_letter_all(store: PendingStore, count: int) -> None:
    """Claim `count` due users and dead-letter each as a 404, as sync.py does."""
    done = 0
    while done < count:
        claims = store.claim_due(min(BATCH, count - done))
        if not claims:
            raise SystemExit(f"only {done:,} of {count:,} users were due")
        for claim, snapshot in zip(claims, store.snapshot_many(claims), strict=True):
            assert snapshot is not None
            now = time.time()
            entry_id = new_dead_letter_id(now)
            body = {name: state.value for name, state in snapshot.fields.items()}
            store.dead_letter(
                claim,
                snapshot,
                new_id=entry_id,
                common=failure_record(
                    reason="not_found",
                    http_status=404,
                    error_code="resource_not_found",
                    error_message="Customer not found",
                    request=body,
                    fields=snapshot.fields,
                    event_ids=snapshot.event_ids,
                    attempts=1,
                    now=now,
                ),
                created=creation_record(
                    entry_id=entry_id, user_id=claim.user_id, first_failure=now
                ),
            )
        done += len(claims)


def old_layout(client: redis.Redis, n: int) -> list[list[object]]:
    """The layout before the buckets, measured for comparison, then moved by `Ledger.migrate`
    as an upgrade does: a hash per user (`rs:ledger:{user}`, the fields as the old scripts wrote
    them) and a member of `rs:ledger-index` each. Users `old_{n}`, deleted afterwards."""
    ledger = Ledger(client)
    before = settled_memory(client)

    def write(batch: list[int]) -> None:
        pipe = client.pipeline(transaction=False)
        for user in batch:
            fields = event(user, 1).fields
            pipe.hset(
                keys.LEDGER + f"old_{user}",
                mapping={
                    "v:name": dumps(fields["name"]),
                    "t:name": "1764150000000",
                    "v:metadata": dumps(fields["metadata"]),
                    "t:metadata": "1764150000000",
                    "applied_at": repr(time.time()),
                },
            )
            pipe.sadd(keys.LEDGER_INDEX, f"old_{user}")
        pipe.execute()

    in_batches(range(1, n + 1), write)
    old_delta = (settled_memory(client) - before) / n
    started = time.perf_counter()
    moved = ledger.migrate()
    seconds = time.perf_counter() - started
    if moved != n or client.exists(keys.LEDGER_INDEX):
        raise SystemExit(f"the migration moved {moved:,} of {n:,} users")
    migrated_delta = (settled_memory(client) - before) / n
    for user in range(1, n + 1, BATCH):
        pipe = client.pipeline(transaction=False)
        for one in range(user, min(user + BATCH, n + 1)):
            pipe.hdel(keys.ledger(f"old_{one}"), f"old_{one}")
        pipe.execute()
    return [
        ["(before) ledger as a hash per user + index member", n, old_delta, "-", "-"],
        [f"  moved by Ledger.migrate() in {seconds:.1f} s", moved, migrated_delta, "-", "-"],
    ]


def default_config_ledger(client: redis.Redis, n: int, listpack_delta: float) -> list[object]:
    """The ledger once its buckets are hash tables, as with Redis's default
    `hash-max-listpack-value` (64): each bucket rewritten under it, what that adds to the
    listpack figure `listpack_delta`. Last: a hash table never turns back into a listpack."""
    buckets = [keys.LEDGER_BUCKET + str(b) for b in range(keys.LEDGER_BUCKETS)]
    before = settled_memory(client)
    client.config_set(LEDGER_VALUE_SETTING, 64)
    for start in range(0, len(buckets), BATCH):
        pipe = client.pipeline(transaction=False)
        for bucket in buckets[start : start + BATCH]:
            pipe.hgetall(bucket)
        rewrite = client.pipeline(transaction=False)
        for bucket, entries in zip(buckets[start : start + BATCH], pipe.execute(), strict=True):
            if entries:
                rewrite.hset(bucket, mapping=entries)
        rewrite.execute()
    delta = (settled_memory(client) - before) / n
    after = total_usage(client, buckets)
    return [
        f"ledger with hash-max-listpack-value 64 ({encodings_of(client, buckets)})",
        n,
        listpack_delta + delta,
        after / n,
        "-",
    ]


def email_index(client: redis.Redis, n: int) -> list[object]:
    """One `rs:email-users` entry per customer, as intake writes it (then deleted)."""
    before = used_memory(client)

    def write(batch: list[int]) -> None:
        client.hset(
            keys.EMAIL_USERS, mapping={f"user{user}@example.com": f"user_{user}" for user in batch}
        )

    in_batches(range(1, n + 1), write)
    delta = (used_memory(client) - before) / n
    usage = int(client.memory_usage(keys.EMAIL_USERS, samples=0) or 0) / n
    client.unlink(keys.EMAIL_USERS)
    return ["email index entry (`rs:email-users`)", n, delta, usage, "-"]


def long_traces(client: redis.Redis, store: PendingStore, users: int = 100) -> list[list[object]]:
    """Mean MEMORY USAGE of traces of 10, 50 and 200 entries (then deleted)."""
    log = TraceLog()
    stats = Stats(client, trace=log)
    rows: list[list[object]] = []
    for length in (10, 50, trace.MAX_ENTRIES):
        base = 10_000_000 + length * 1000
        for user in range(base, base + users):
            for round_number in range(length // 2):
                accepted = event(user, round_number)
                store.accept(accepted)
                log.add(
                    accepted.user_id,
                    "attempt",
                    result="retry",
                    worker=trace.worker_name(),
                    latency_ms=23.4,
                    fields=["metadata", "name"],
                    attempts=round_number + 1,
                    status=503,
                    code="service_unavailable",
                    message="Service temporarily unavailable",
                    retry_at=round(time.time() + 5, 3),
                )
            stats.flush()
        ids = [f"user_{user}" for user in range(base, base + users)]
        usage = sample_usage(client, [keys.trace(user_id) for user_id in ids])
        rows.append([f"trace with {length} entries (per user)", users, "-", usage, "-"])
        # Leave nothing behind for the measurements that follow.
        client.zrem(keys.DUE, *ids)
        client.delete(*[keys.pending(u) for u in ids], *[PENDING_EVENTS + u for u in ids])
        delete_matching(client, keys.TRACE + "*")
        delete_matching(client, keys.EVENT_SEEN + "*")
    return rows


def delete_matching(client: redis.Redis, pattern: str) -> int:
    """UNLINK every key matching `pattern`; how many there were."""
    deleted = 0
    batch: list[bytes] = []
    for name in client.scan_iter(match=pattern, count=5000):
        batch.append(name)
        if len(batch) == 5000:
            deleted += int(client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--dead-letters", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=1000)
    args = parser.parse_args()
    n, dead = args.customers, args.dead_letters
    rows: list[list[object]] = []
    with environment() as (_, redis_url):
        client = redis.Redis.from_url(redis_url)
        store = PendingStore(
            client,
            window_seconds=0,
            max_wait_seconds=0,
            dedup_ttl_seconds=604800,
            lease_seconds=600,
        )
        sample = random.Random(7).sample(range(1, n + 1), min(args.sample, n))
        # The AOF only grows while this runs, so its size before and after a step is what the
        # step appended.
        client.config_set("auto-aof-rewrite-percentage", 0)
        start = used_memory(client)

        # Round 1: one event per customer, then every one applied. What stays: the ledger (and
        # its index) and the remembered event ids.
        aof_before = aof_size(client)
        accept_all(client, store, range(1, n + 1), 1)
        first_aof = (aof_size(client) - aof_before) / n
        apply_all(store, n)
        trace_usage = sample_usage(client, [keys.trace(f"user_{u}") for u in sample])
        before_traces = used_memory(client)
        traced = delete_matching(client, keys.TRACE + "*")
        trace_delta = (before_traces - used_memory(client)) / traced
        ids_sample = [k.decode() for k in client.scan_iter(match=keys.EVENT_SEEN + "*", count=5000)]
        event_id_usage = sample_usage(client, ids_sample[: args.sample])
        before_ids = used_memory(client)
        remembered = delete_matching(client, keys.EVENT_SEEN + "*")
        event_id_delta = (before_ids - used_memory(client)) / remembered
        ledger_delta = (settled_memory(client) - start) / n
        buckets = [keys.LEDGER_BUCKET + str(b) for b in range(keys.LEDGER_BUCKETS)]
        ledger_usage = total_usage(client, buckets) / n
        rows.append(
            [
                f"ledger entry (per customer; buckets: {encodings_of(client, buckets)})",
                n,
                ledger_delta,
                ledger_usage,
                f"<= {LEDGER_TARGET}",
            ]
        )
        rows.append(["remembered event id", remembered, event_id_delta, event_id_usage, "-"])
        rows.append(email_index(client, n))
        rows += old_layout(client, n)
        rows.append(["trace with 1 entry (per user)", traced, trace_delta, trace_usage, "-"])
        rows += long_traces(client, store)

        # Round 2: a second event per customer, not yet sent: a pending user each.
        before = used_memory(client)
        aof_before = aof_size(client)
        accept_all(client, store, range(1, n + 1), 2)
        next_aof = (aof_size(client) - aof_before) / n
        delete_matching(client, keys.EVENT_SEEN + "*")
        delete_matching(client, keys.TRACE + "*")
        pending_delta = (used_memory(client) - before) / n
        pending_usage = sample_usage(
            client, [keys.pending(f"user_{u}") for u in sample]
        ) + sample_usage(client, [PENDING_EVENTS + f"user_{u}" for u in sample])
        rows.append(["pending user (hash + event list)", n, pending_delta, pending_usage, "-"])
        rows.append(["AOF appended by a customer's first event", n, first_aof, "-", "-"])
        rows.append(
            ["AOF appended by its next event, once the first was applied", n, next_aof, "-", "-"]
        )

        # Some of them fail for good: dead letters (their pending change moves into the entry).
        before = used_memory(client)
        pending_before = client.zcard(keys.DUE)
        dead_letter_all(store, dead)
        moved_out = pending_before - client.zcard(keys.DUE)
        dead_delta = (used_memory(client) - before) / dead + pending_delta * moved_out / dead
        entries = [k.decode() for k, _ in client.zscan_iter(keys.DEAD_LETTERS, count=1000)]
        dead_usage = sample_usage(client, [keys.dead_letter(e) for e in entries[: args.sample]])
        rows.append(["dead letter", dead, dead_delta, dead_usage, "-"])
        rows.append(default_config_ledger(client, n, ledger_delta))
        client.close()

    print(
        table(
            f"Redis memory with {n:,} customers (INFO used_memory deltas; MEMORY USAGE of "
            f"{args.sample:,} sampled keys)",
            ["what", "count", "bytes each (INFO delta)", "bytes each (MEMORY USAGE)", "target"],
            rows,
        )
    )
    verdict = "met" if ledger_delta <= LEDGER_TARGET else "NOT met"
    print(f"\nledger: {ledger_delta:.0f} bytes per customer, target <= {LEDGER_TARGET}: {verdict}")


if __name__ == "__main__":
    main()
