"""The ledger's bucketed layout (ledger.py, ledger_fn.lua): Lua and Python agree on it, buckets
stay listpacks, and entries of the layout before it (a hash per user, `ledger:{user}`) are read
merged in and moved into the buckets without one being lost."""

from __future__ import annotations

import json
import random
import string

import redis

from sync_worker import lua
from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.ledger import Ledger
from sync_worker.pipeline.pending import PendingStore

_FUNCTIONS = lua.script("pipeline/ledger_fn.lua")


def raw_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def store(client: redis.Redis) -> PendingStore:
    return PendingStore(
        client, window_seconds=0, max_wait_seconds=0, dedup_ttl_seconds=3600, lease_seconds=60
    )


def old_entry(client: redis.Redis, user: str, fields: dict[str, tuple[object, int]]) -> None:
    """An entry as the layout before the buckets wrote it."""
    mapping: dict[str, str] = {"applied_at": "1700000000.5"}
    for name, (value, ts) in fields.items():
        mapping["v:" + name] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        mapping["t:" + name] = str(ts)
    client.hset(keys.LEDGER + user, mapping=mapping)
    client.sadd(keys.LEDGER_INDEX, user)


def values(ledger: Ledger, user: str) -> dict[str, tuple[object, int]]:
    entry = ledger.get(user)
    assert entry is not None
    return {name: (state.value, state.ts_ms) for name, state in entry.fields.items()}


def test_lua_and_python_put_a_user_in_the_same_bucket(redis_url: str) -> None:
    client = raw_client(redis_url)
    bucket_of = client.register_script(
        _FUNCTIONS + "\nlocal out = {}\nfor i, u in ipairs(ARGV) do out[i] = ledger_bucket(u) end"
        "\nreturn out"
    )
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + "_-"
    users = ["a", "user_1", "Z" * 255] + [
        "".join(rng.choices(alphabet, k=rng.randint(1, 64))) for _ in range(2000)
    ]
    in_lua = [name.decode() for name in bucket_of(args=users)]
    assert in_lua == [keys.ledger(user) for user in users]
    assert len(set(in_lua)) > 1500  # spread, not piled into a few


def test_an_entry_reads_back_as_written_and_its_bucket_is_a_listpack(redis_url: str) -> None:
    client = raw_client(redis_url)
    ledger = Ledger(client)
    fields = {
        "name": "王大明\ttab",
        "metadata": {"plan": "pro", "note": "line\nbreak", "url": "https://x/y"},
        "email": "A@b.tw",
    }
    ledger.seed("user_1", fields, ts_ms=1_700_000_000_000)
    entry = ledger.get("user_1")
    assert entry is not None
    assert {name: state.value for name, state in entry.fields.items()} == fields
    assert {state.ts_ms for state in entry.fields.values()} == {1_700_000_000_000}
    assert entry.applied_at is not None
    assert ledger.count() == 1
    assert client.hlen(keys.ledger("user_1")) == 1
    packed = client.hget(keys.ledger("user_1"), "user_1")
    assert packed is not None
    lines = packed.decode().split("\n")[1:]
    assert [line.split("\t")[:2] for line in lines] == [
        ["e", "1700000000000"],
        ["m", "1700000000000"],
        ["n", "1700000000000"],
    ]
    assert not client.exists(keys.LEDGER + "user_1", keys.LEDGER_INDEX)
    # with Redis configured as README's Sizing section says, a bucket stays one listpack (a
    # ziplist, Redis 6.2 says, with its setting of that name)
    setting, compact = "hash-max-listpack-value", b"listpack"
    if not client.config_get(setting):
        setting, compact = "hash-max-ziplist-value", b"ziplist"
    previous = client.config_get(setting)[setting]
    client.config_set(setting, 1024)
    try:
        ledger.seed("user_2", {"name": "x" * 300}, ts_ms=1)
        assert client.object("encoding", keys.ledger("user_2")) == compact
    finally:
        client.config_set(setting, previous)


def test_entries_of_the_layout_before_are_read_merged_and_moved_by_a_write(
    redis_url: str,
) -> None:
    client = raw_client(redis_url)
    ledger = Ledger(client)
    old_entry(client, "u1", {"name": ("old name", 5000), "metadata": ({"a": 1}, 5000)})
    old_entry(client, "u2", {"name": ("kept", 5000)})
    assert values(ledger, "u1") == {"name": ("old name", 5000), "metadata": ({"a": 1}, 5000)}
    assert ledger.count() == 2
    pending = store(client)
    # the stale guard sees the old entry: an event older than what it applied changes nothing
    assert (
        pending.accept(UserEvent("e1", "user.updated", "u1", 4000, {"name": "older"})).version == 0
    )
    # a newer one goes through, and applying it moves the user's entry, merged, to its bucket
    assert pending.accept(UserEvent("e2", "user.updated", "u1", 6000, {"name": "newer"})).version
    claims = pending.claim_due(10)
    snapshot = pending.snapshot(claims[0])
    assert snapshot is not None
    assert pending.mark_applied(claims[0], snapshot) == "done"
    assert values(ledger, "u1") == {"name": ("newer", 6000), "metadata": ({"a": 1}, 5000)}
    assert not client.exists(keys.LEDGER + "u1")
    assert client.smembers(keys.LEDGER_INDEX) == {b"u2"}
    assert ledger.count() == 2


def test_migrate_moves_every_entry_and_drops_the_old_index(redis_url: str) -> None:
    client = raw_client(redis_url)
    ledger = Ledger(client)
    users = [f"user_{n}" for n in range(1, 1202)]
    for n, user in enumerate(users):
        old_entry(client, user, {"name": (f"名字 {n}", 1000 + n), "email": (f"{n}@x.tw", 1000)})
    # one user was also written in the new layout already, a field newer there and one older
    ledger.seed("user_1", {"name": "newer in the bucket"}, ts_ms=9000)
    ledger.seed("user_1", {"email": "older@x.tw"}, ts_ms=10)
    assert ledger.migrate(batch=100) == len(users) - 1  # user_1 moved when it was written
    assert not client.exists(keys.LEDGER_INDEX)
    assert not any(client.exists(keys.LEDGER + user) for user in users)
    assert ledger.count() == len(users)
    found = ledger.get_many(users)
    assert set(found) == set(users)
    assert values(ledger, "user_1") == {
        "name": ("newer in the bucket", 9000),
        "email": ("0@x.tw", 1000),
    }
    assert values(ledger, "user_1201") == {
        "name": ("名字 1200", 2200),
        "email": ("1200@x.tw", 1000),
    }
    assert ledger.migrate() == 0
