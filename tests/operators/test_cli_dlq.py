"""`sync-worker dlq ...` against real Redis and the sandbox, through the typer app."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sync_worker import redis_keys as keys
from sync_worker.cli import app
from sync_worker.cli.dlq import parse_duration
from sync_worker.ops.status import format_age
from sync_worker.runtime import Runtime
from tests.fixtures.sandbox import SandboxHandle
from tests.operators.conftest import accept, make_dead_letter, sync_due

runner = CliRunner()


def dlq(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["dlq", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_ages_read_short() -> None:
    assert [format_age(s) for s in (5, 125, 7300, 200000)] == ["5s", "2m", "2h", "2d"]


def test_every_command_explains_its_options() -> None:
    for command, option in [
        ("list", "--older-than"),
        ("show", "ID"),
        ("replay", "--dry-run"),
        ("delete", "ID"),
        ("purge", "--yes"),
        ("export", "--reason"),
    ]:
        result = runner.invoke(app, ["dlq", command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert option in result.stdout, command


def test_list_table_json_and_filters(runtime: Runtime) -> None:
    first = make_dead_letter(runtime, "user_a")
    second = make_dead_letter(runtime, "user_b")
    runtime.redis.hset(keys.dead_letter(first), "last_failure", "1000")  # long ago

    code, out, _ = dlq("list")
    assert code == 0
    assert first in out
    assert second in out
    assert "not_found" in out
    assert "resource_not_found" in out

    code, out, _ = dlq("list", "--json")
    listed = json.loads(out)
    assert [e["id"] for e in listed] == [second, first]  # newest failure first
    assert listed[0]["request"] == {"name": "name of user_b"}
    assert listed[0]["http_status"] == 404

    assert [e["id"] for e in json.loads(dlq("list", "--json", "--user", "user_a")[1])] == [first]
    assert [e["id"] for e in json.loads(dlq("list", "--json", "--older-than", "1h")[1])] == [first]
    assert json.loads(dlq("list", "--json", "--reason", "conflict")[1]) == []
    assert dlq("list", "--reason", "nonsense")[0] == 2


def test_show_not_found_fetches_recur_and_the_ledger(runtime: Runtime) -> None:
    entry_id = make_dead_letter(runtime, "user_gone", name="新名字")
    runtime.ledger.seed("user_gone", {"name": "舊名字"}, ts_ms=1)

    code, out, _ = dlq("show", entry_id, "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["entry"]["id"] == entry_id
    assert shown["applied"] == {"name": "舊名字"}
    assert shown["recur"] is None
    assert "no customer with external_id 'user_gone'" in shown["recur_error"]

    code, out, _ = dlq("show", entry_id)
    assert code == 0
    assert "新名字" in out
    assert "舊名字" in out
    assert "Recur now" in out


def test_show_conflict_shows_both_customers(runtime: Runtime, sandbox: SandboxHandle) -> None:
    sandbox.control.create_customer("me@x.tw", name="me", external_id="user_me")
    sandbox.control.create_customer("other@x.tw", name="other", external_id="taken")
    accept(runtime, "user_me", external_id="taken")
    [outcome] = sync_due(runtime)
    assert outcome.result == "dead_letter"

    shown = json.loads(dlq("show", outcome.dead_letter_id, "--json")[1])
    assert shown["entry"]["reason"] == "conflict"
    assert shown["recur"]["email"] == "me@x.tw"
    assert shown["holder"]["email"] == "other@x.tw"
    out = dlq("show", outcome.dead_letter_id)[1]
    assert "'taken' is held by customer" in out


def test_show_survives_recur_failing(runtime: Runtime, sandbox: SandboxHandle) -> None:
    entry_id = make_dead_letter(runtime, "user_x")
    sandbox.control.set_faults(outage=True)
    code, out, _ = dlq("show", entry_id, "--json")
    assert code == 0
    assert json.loads(out)["recur_error"].startswith("could not fetch the customer from Recur")


def test_show_unknown_id_exits_1(runtime: Runtime) -> None:
    code, _, err = dlq("show", "dl_nope")
    assert code == 1
    assert "no dead letter dl_nope" in err


def test_replay_sends_the_change_and_removes_the_entry_on_success(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    entry_id = make_dead_letter(runtime, "user_late", name="王大明")
    sandbox.control.create_customer("late@x.tw", external_id="user_late")

    code, out, _ = dlq("replay", entry_id, "--dry-run")
    assert code == 0
    assert 'would PATCH /v1/customers/external/user_late {"name": "王大明"}' in out
    assert runtime.pending.depths()["pending"] == 0  # a dry run changes nothing

    code, out, _ = dlq("replay", entry_id)
    assert code == 0
    assert "1 replayed" in out
    assert runtime.dlq.get(entry_id) is not None  # kept until the sync succeeds
    [outcome] = sync_due(runtime)
    assert outcome.result == "applied"
    assert runtime.dlq.get(entry_id) is None
    assert sandbox.control.customer_by_external_id("user_late")["name"] == "王大明"  # type: ignore[index]


def test_a_replay_that_fails_again_raises_the_replay_count(runtime: Runtime) -> None:
    entry_id = make_dead_letter(runtime, "user_still_gone")
    assert dlq("replay", entry_id)[0] == 0
    [outcome] = sync_due(runtime)
    assert outcome.result == "dead_letter"
    entry = runtime.dlq.get(entry_id)
    assert entry is not None
    assert entry.replay_count == 1
    assert runtime.dlq.ids() == [entry_id]


def test_replay_counts_stale_and_missing_and_exits_1(runtime: Runtime) -> None:
    stale = make_dead_letter(runtime, "user_s")
    runtime.ledger.seed("user_s", {"name": "newer"})  # applied after the dead letter's event
    code, out, _ = dlq("replay", stale, "dl_missing", "--json")
    assert code == 1
    assert json.loads(out)["counts"] == {"stale": 1, "missing": 1}


def test_replay_by_reason_and_all(runtime: Runtime) -> None:
    ids = {make_dead_letter(runtime, f"user_{n}") for n in range(3)}
    code, out, _ = dlq("replay", "--reason", "not_found", "--json")
    assert code == 0
    assert {r["id"] for r in json.loads(out)["results"]} == ids
    assert runtime.pending.depths()["pending"] == 3
    # Already under way: a second replay of the same entries is refused as busy.
    code, out, _ = dlq("replay", "--all", "--json")
    assert code == 1
    assert json.loads(out)["counts"] == {"busy": 3}


def test_replay_needs_exactly_one_selection(runtime: Runtime) -> None:
    assert dlq("replay")[0] == 2
    assert dlq("replay", "dl_1", "--all")[0] == 2


def test_delete_purge_and_export(runtime: Runtime, sandbox: SandboxHandle) -> None:
    a, b, c = (make_dead_letter(runtime, f"user_{n}") for n in "abc")
    sandbox.control.create_customer("d@x.tw", external_id="user_d")
    sandbox.control.create_customer("e@x.tw", external_id="user_e")
    accept(runtime, "user_d", external_id="user_e")
    [conflict] = sync_due(runtime)

    lines = dlq("export")[1].splitlines()
    assert {json.loads(line)["id"] for line in lines} == {a, b, c, conflict.dead_letter_id}
    assert [json.loads(x)["id"] for x in dlq("export", "--reason", "conflict")[1].splitlines()] == [
        conflict.dead_letter_id
    ]

    assert dlq("delete", a, "dl_nope") == (1, "deleted 1 of 2\n", "")
    code, _, err = dlq("purge", "--reason", "not_found")
    assert code == 1
    assert "refusing to delete 2 dead letter(s) without --yes" in err
    assert len(runtime.dlq.ids()) == 3
    assert dlq("purge", "--reason", "not_found", "--yes")[:2] == (0, "purged 2\n")
    assert runtime.dlq.ids() == [conflict.dead_letter_id]
    assert dlq("purge", "--yes")[:2] == (0, "purged 1\n")


def test_redis_down_is_one_line(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    code, _, err = dlq("list")
    assert code == 1
    assert err.startswith("error: Redis:")
    assert len(err.strip().splitlines()) == 1
