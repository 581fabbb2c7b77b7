"""The per-user trace: written by the accept script, the sync path and replays; read back by
`sync-worker trace` and `GET /admin/api/users/{id}`, against real Redis and the sandbox."""

from __future__ import annotations

import json
import socket

import httpx
from typer.testing import CliRunner

from sync_worker import redis_keys as keys
from sync_worker.cli import app
from sync_worker.deadletters.replay_edit import FieldEdits, build_edit
from sync_worker.intake.events import UserEvent
from sync_worker.ops.timeline import describe
from sync_worker.runtime import Runtime
from sync_worker.telemetry import trace
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import ADMIN_TOKEN, user_event, wait_for
from tests.operators.conftest import accept, make_dead_letter, sync_due
from tests.telemetry.trace.test_history import post

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
runner = CliRunner()


def event(event_id: str, user_id: str, ts_ms: int, **fields: object) -> UserEvent:
    return UserEvent(
        event_id=event_id, type="user.updated", user_id=user_id, ts_ms=ts_ms, fields=dict(fields)
    )


def kinds(runtime: Runtime, user_id: str) -> list[tuple[str, str]]:
    """(kind, outcome or result) of each entry, newest first."""
    return [
        (e.kind, str(e.details.get("outcome", e.details.get("result", ""))))
        for e in trace.read(runtime.redis, user_id)
    ]


def test_intake_traces_merged_duplicate_and_stale_events(runtime: Runtime) -> None:
    runtime.pending.accept(event("evt_new", "user_t", 2_000, name="新", metadata={"p": 1}))
    runtime.pending.accept(event("evt_new", "user_t", 2_000, name="新"))
    runtime.pending.accept(event("evt_old", "user_t", 1_000, name="舊"))

    newest, duplicate, first = trace.read(runtime.redis, "user_t")
    assert newest.details == {
        "id": "evt_old",
        "type": "user.updated",
        "ts": 1000,
        "outcome": "stale",
        "fields": ["name"],
    }
    assert duplicate.details["outcome"] == "duplicate"
    assert first.kind == "event"
    assert first.details["outcome"] == "merged"
    assert sorted(first.details["fields"]) == ["metadata", "name"]
    assert "merged" not in first.details  # listed only when some field was stale
    due = float(runtime.redis.zscore(keys.DUE, "user_t") or 0)
    assert abs(first.details["due"] - due) < 0.001  # cjson keeps 14 significant digits
    assert first.at <= duplicate.at <= newest.at
    ttl = runtime.redis.ttl(keys.trace("user_t"))
    assert 7 * 86400 - 60 < ttl <= 7 * 86400


def test_the_trace_is_capped(runtime: Runtime) -> None:
    for n in range(3 * trace.MAX_ENTRIES):
        runtime.pending.accept(event(f"evt_{n}", "user_busy", 1_000 + n, name=str(n)))
    assert runtime.redis.llen(keys.trace("user_busy")) == trace.MAX_ENTRIES
    newest = trace.read(runtime.redis, "user_busy")
    assert newest[0].details["id"] == f"evt_{3 * trace.MAX_ENTRIES - 1}"
    assert newest[-1].details["id"] == f"evt_{2 * trace.MAX_ENTRIES}"


def test_a_503_then_200_sync_is_traced_attempt_by_attempt(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    sandbox.control.create_customer("t@x.tw", external_id="user_t", name="old")
    sandbox.control.set_faults(scripts={"user_t": [503, 200]})
    accept(runtime, "user_t", name="新名字")

    [first] = sync_due(runtime)
    assert first.result == "retry"
    wait_for(lambda: [o for o in sync_due(runtime) if o.result == "applied"])

    applied, retry, received = trace.read(runtime.redis, "user_t")
    assert received.kind == "event"
    assert retry.kind == "attempt"
    assert retry.details["result"] == "retry"
    assert retry.details["status"] == 503
    assert retry.details["code"] == "service_unavailable"
    assert retry.details["fields"] == ["name"]
    assert retry.details["worker"].startswith(socket.gethostname() + ":")
    assert retry.details["retry_at"] > retry.at
    assert retry.details["latency_ms"] >= 0
    assert applied.details["result"] == "applied"
    assert applied.details["status"] == 200
    assert "code" not in applied.details


def test_cli_prints_the_timeline_and_compares_with_recur(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    sandbox.control.create_customer("t@x.tw", external_id="user_t", name="old")
    accept(runtime, "user_t", name="新名字", metadata={"plan": "pro"})
    sync_due(runtime)
    # Somebody renames the customer in Recur's dashboard afterwards.
    customer = sandbox.control.customer_by_external_id("user_t")
    assert customer is not None
    with httpx.Client(base_url=sandbox.api_url) as api:
        api.patch(
            f"/customers/{customer['id']}",
            json={"name": "changed at Recur"},
            headers={"Authorization": f"Bearer {sandbox.secret_key}"},
        ).raise_for_status()

    result = runner.invoke(app, ["trace", "user_t", "--recur"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "PATCH metadata, name -> 200: applied" in result.stdout
    assert "user.updated" in result.stdout
    assert "Nothing pending." in result.stdout
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "differs" in rows["name"]
    assert '"changed at Recur"' in rows["name"]
    assert "not readable" in rows["metadata"]
    assert "same" in rows["external_id"]

    as_json = runner.invoke(app, ["trace", "user_t", "--json", "--recur"])
    data = json.loads(as_json.stdout)
    assert [e["kind"] for e in data["timeline"]] == ["attempt", "event"]
    assert data["ledger"]["fields"]["name"]["value"] == "新名字"
    verdicts = {row["field"]: row["verdict"] for row in data["comparison"]}
    assert verdicts == {"name": "differs", "metadata": "not readable", "external_id": "same"}


def test_cli_unknown_user_exits_1(runtime: Runtime) -> None:
    result = runner.invoke(app, ["trace", "user_nobody"])
    assert result.exit_code == 1
    assert "nothing recorded about user user_nobody" in result.stderr


def test_dead_letter_and_edited_replay_are_traced(runtime: Runtime) -> None:
    entry_id = make_dead_letter(runtime, "user_d", name="first")
    edit = build_edit(
        FieldEdits({"name": "fixed"}), actor={"by": "admin", "via": "test"}, ledger=runtime.ledger
    )
    assert runtime.dlq.replay(entry_id, edit=edit).outcome == "replayed"

    replay, dead, _event = trace.read(runtime.redis, "user_d")
    assert dead.details["result"] == "dead_letter"
    assert dead.details["dead_letter_id"] == entry_id
    assert dead.details["reason"] == "not_found"
    assert dead.details["status"] == 404
    assert replay.kind == "replay"
    assert replay.details == {"dead_letter_id": entry_id, "outcome": "replayed", "edited": ["name"]}


def test_pause_holds_and_rebinds_are_traced(runtime: Runtime, sandbox: SandboxHandle) -> None:
    sandbox.control.create_customer("r@x.tw", external_id="user_old")
    accept(runtime, "user_old", external_id="user_new")
    runtime.flow.pause(reason="unauthorized", status=401, message="test")
    sync_due(runtime)
    assert kinds(runtime, "user_old")[0] == ("held", "")
    runtime.flow.resume()
    wait_for(lambda: [o for o in sync_due(runtime) if o.result == "applied"])

    assert kinds(runtime, "user_old")[:3] == [
        ("rebound", ""),
        ("attempt", "applied"),
        ("held", ""),
    ]
    [moved] = trace.read(runtime.redis, "user_new")
    assert moved.details == {"from": "user_old"}


def test_api_serves_the_trace_behind_the_token(
    runtime: Runtime, web: httpx.Client, sandbox: SandboxHandle
) -> None:
    accept(runtime, "user_api", name="n")
    assert web.get("/admin/api/users/user_api").status_code == 401

    answer = web.get("/admin/api/users/user_api", headers=AUTH)
    assert answer.status_code == 200
    data = answer.json()
    assert [e["outcome"] for e in data["timeline"]] == ["merged"]
    assert data["pending"]["fields"]["name"]["value"] == "n"
    assert data["recur"] is None
    assert data["comparison"] is None

    with_recur = web.get("/admin/api/users/user_api", params={"recur": "true"}, headers=AUTH)
    assert with_recur.json()["recur_error"] == "Recur has no customer with external_id 'user_api'"


def test_bind_by_email_is_traced(runtime: Runtime, sandbox: SandboxHandle) -> None:
    customer = sandbox.control.create_customer("bind@x.tw")
    accept(runtime, "user_b", email="bind@x.tw", name="綁定")
    wait_for(lambda: [o for o in sync_due(runtime) if o.result == "applied"])

    applied, bound, _event = trace.read(runtime.redis, "user_b")
    assert bound.kind == "bound_by_email"
    assert bound.details == {"customer_id": customer["id"]}
    assert applied.details["result"] == "applied"


def test_a_refused_delivery_is_traced_on_the_user_it_names(
    runtime: Runtime, web: httpx.Client
) -> None:
    too_long = user_event("evt_long", "user_r", name="x" * 300)
    assert post(web, too_long).status_code == 422
    bad_id = user_event("evt_bad_id", "user r!", name="ok")
    assert post(web, bad_id).status_code == 422

    [refused] = wait_for(lambda: trace.read(runtime.redis, "user_r"))
    assert refused.kind == "event"
    assert refused.details["outcome"] == "refused"
    assert refused.details["id"] == "evt_long"
    assert [e["field"] for e in refused.details["errors"]] == ["data.name"]
    assert "refused (422), data.name" in describe(refused)
    # An id intake would refuse never becomes a key.
    assert runtime.redis.keys(keys.TRACE + "*") == [keys.trace("user_r").encode()]
