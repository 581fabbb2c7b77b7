"""Edit before replay: parsing, validation, the CLI, the admin API, the dashboard and the audit
trail, on real Redis and the sandbox."""

from __future__ import annotations

import getpass
import json
import re
import time
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from sync_worker.cli import app
from sync_worker.deadletters.replay_edit import EditError, FieldEdits, build_edit, parse_assignments
from sync_worker.runtime import Runtime
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import ADMIN_TOKEN
from tests.operators.conftest import accept, sync_due

runner = CliRunner()
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def dlq(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["dlq", *args])
    return result.exit_code, result.stdout, result.stderr


def rejected(runtime: Runtime, sandbox: SandboxHandle, user: str, **fields: Any) -> str:
    """A dead letter `rejected`: Recur answers the PATCH with a 422."""
    sandbox.control.create_customer(f"{user}@x.tw", name="old", external_id=user)
    sandbox.control.set_faults(scripts={user: [422]})
    accept(runtime, user, **(fields or {"name": "refused name"}))
    [outcome] = sync_due(runtime)
    assert outcome.result == "dead_letter", outcome
    return outcome.dead_letter_id


def test_assignments_are_strings_unless_json() -> None:
    assert parse_assignments(["name=a=b", "metadata.plan=5", "metadata.seats:=5"]) == {
        "name": "a=b",
        "metadata.plan": "5",
        "metadata.seats": 5,
    }
    with pytest.raises(EditError, match="PATH=VALUE"):
        parse_assignments(["name"])
    with pytest.raises(EditError, match="not valid JSON"):
        parse_assignments(["metadata:={"])


@pytest.mark.parametrize(
    ("values", "unset", "message"),
    [
        ({"email": "a@b.tw"}, False, "email: cannot be changed"),
        ({"status": "x"}, False, "status: not editable"),
        ({"name.first": "x"}, False, "name.first: not editable"),
        ({"metadata": "x"}, False, "metadata: must be a JSON object"),
        ({"external_id": "x"}, True, "set it or unset it"),
    ],
)
def test_paths_are_checked_before_anything_is_read(
    runtime: Runtime, values: dict[str, Any], unset: bool, message: str
) -> None:
    with pytest.raises(EditError, match=message):
        build_edit(FieldEdits(values, unset), actor={}, ledger=runtime.ledger)


def test_cli_edit_replays_the_fixed_change_and_keeps_who_changed_what(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    entry_id = rejected(runtime, sandbox, "user_r", name="refused", metadata={"plan": "free"})
    before = time.time()
    code, out, err = dlq("replay", entry_id, "--set", "name=王大明", "--set", "metadata.seats:=5")
    assert code == 0, err
    assert "1 replayed" in out

    entry = json.loads(dlq("show", entry_id, "--json")[1])["entry"]
    [record] = entry["history"]
    assert record["by"] == getpass.getuser()
    assert record["via"] == "cli"
    assert record["at"] >= before
    assert record["changes"] == [
        {"field": "metadata.seats", "action": "set", "from": None, "to": 5},
        {"field": "name", "action": "set", "from": "refused", "to": "王大明"},
    ]
    assert entry["fields"]["metadata"]["value"] == {"plan": "free", "seats": 5}
    assert entry["fields"]["name"]["ts_ms"] >= int(before * 1000)  # the edit is the newest intent
    assert entry["request"] == {"name": "refused", "metadata": {"plan": "free"}}  # as refused
    shown = dlq("show", entry_id)[1]
    assert "edits before replay" in shown
    assert "王大明" in shown

    [outcome] = sync_due(runtime)
    assert outcome.result == "applied"
    customer = sandbox.control.customer_by_external_id("user_r")
    assert customer is not None
    assert (customer["name"], customer["metadata"]) == ("王大明", {"plan": "free", "seats": 5})
    assert runtime.dlq.get(entry_id) is None


def test_metadata_key_edits_what_recur_has_when_the_change_had_none(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    runtime.ledger.seed("user_m", {"metadata": {"plan": "pro", "region": "tw"}})
    entry_id = rejected(runtime, sandbox, "user_m")
    assert dlq("replay", entry_id, "--set", "metadata.plan=team")[0] == 0
    entry = runtime.dlq.get(entry_id)
    assert entry is not None
    assert entry.fields["metadata"]["value"] == {"plan": "team", "region": "tw"}


def test_unset_external_id_drops_a_conflicting_rebind(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    sandbox.control.create_customer("me@x.tw", name="me", external_id="user_me")
    sandbox.control.create_customer("other@x.tw", name="other", external_id="taken")
    accept(runtime, "user_me", external_id="taken", name="renamed")
    [outcome] = sync_due(runtime)
    assert outcome.result == "dead_letter"

    code, _, err = dlq("replay", outcome.dead_letter_id, "--unset-external-id")
    assert code == 0, err
    [record] = json.loads(dlq("show", outcome.dead_letter_id, "--json")[1])["entry"]["history"]
    assert record["changes"] == [
        {"field": "external_id", "action": "unset", "from": "taken", "to": None}
    ]
    [replayed] = sync_due(runtime)
    assert replayed.result == "applied"
    customer = sandbox.control.customer_by_external_id("user_me")
    assert customer is not None
    assert customer["name"] == "renamed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "name=" + "字" * 256], "name: must be at most 255 characters"),
        (["--set", "name=" + "😀" * 128], "name: must be at most 255 characters"),  # UTF-16 units
        (["--set", "name="], "name: must not be empty"),
        (["--set", "external_id=has space"], "external_id: String should match pattern"),
        (["--set", "email=a@b.tw"], "email: cannot be changed"),
        (["--unset-external-id"], "external_id: this change does not rebind"),
    ],
)
def test_cli_refuses_an_invalid_edit_and_changes_nothing(
    runtime: Runtime, sandbox: SandboxHandle, args: list[str], message: str
) -> None:
    entry_id = rejected(runtime, sandbox, "user_bad")
    result = runner.invoke(app, ["dlq", "replay", entry_id, *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) + result.stderr
    entry = runtime.dlq.get(entry_id)
    assert entry is not None
    assert entry.history == []
    assert entry.fields["name"]["value"] == "refused name"
    assert sync_due(runtime) == []  # nothing was queued


def test_cli_edits_one_entry_at_a_time(runtime: Runtime) -> None:
    result = runner.invoke(app, ["dlq", "replay", "--all", "--set", "name=x"])
    assert result.exit_code == 2
    assert "exactly one ID" in " ".join(result.output.split())


def test_dry_run_shows_the_edited_patch_and_records_nothing(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    entry_id = rejected(runtime, sandbox, "user_dry")
    code, out, _ = dlq("replay", entry_id, "--set", "name=fixed", "--dry-run")
    assert code == 0
    assert '{"name": "fixed"}' in out
    entry = runtime.dlq.get(entry_id)
    assert entry is not None
    assert (entry.history, entry.fields["name"]["value"]) == ([], "refused name")


def test_api_edit_and_its_errors(
    runtime: Runtime, sandbox: SandboxHandle, web: httpx.Client
) -> None:
    entry_id = rejected(runtime, sandbox, "user_api")
    url = f"/admin/api/dead-letters/{entry_id}/replay"

    bad = web.post(url, json={"set": {"name": "x" * 256, "external_id": "a b"}}, headers=AUTH)
    assert bad.status_code == 422
    fields = {e["field"] for e in bad.json()["error"]["errors"]}
    assert fields == {"name", "external_id"}
    assert web.post(url, json={"sets": {}}, headers=AUTH).status_code == 422  # unknown key

    dry = web.post(url, params={"dry_run": "true"}, json={"set": {"name": "fixed"}}, headers=AUTH)
    assert (dry.status_code, dry.json()["request"]) == (200, {"name": "fixed"})

    done = web.post(url, json={"set": {"name": "fixed", "metadata.tier": 2}}, headers=AUTH)
    assert done.status_code == 202, done.text
    entry = web.get(f"/admin/api/dead-letters/{entry_id}", headers=AUTH).json()
    [record] = entry["history"]
    assert (record["by"], record["via"]) == ("admin", "api")
    assert [c["field"] for c in record["changes"]] == ["metadata.tier", "name"]
    [outcome] = sync_due(runtime)
    assert outcome.result == "applied"
    customer = sandbox.control.customer_by_external_id("user_api")
    assert customer is not None
    assert (customer["name"], customer["metadata"]) == ("fixed", {"tier": 2})


def test_dashboard_edit_form(runtime: Runtime, sandbox: SandboxHandle, web: httpx.Client) -> None:
    entry_id = rejected(runtime, sandbox, "user_dash", name="refused <b>", metadata={"a": 1})
    assert web.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 303
    page = web.get(f"/admin/dead-letters/{entry_id}")
    assert page.status_code == 200
    assert "value='refused &lt;b&gt;'" in page.text
    assert "Not edited." in page.text
    csrf = re.search(r"name='csrf' value='([0-9a-f]+)'", page.text)
    assert csrf is not None
    action = f"/admin/actions/edit-replay/{entry_id}"

    form = {"csrf": csrf.group(1), "name": "", "metadata": '{"a": 1}'}
    invalid = web.post(action, data={**form, "name": "x" * 300})
    assert invalid.status_code == 422
    assert "name: must be at most 255 characters" in invalid.text
    assert web.post(action, data={**form, "csrf": "forged"}).status_code == 403

    done = web.post(action, data={**form, "name": "fixed", "metadata": '{"a": 2}'})
    assert done.status_code == 303
    assert "notice=replayed" in done.headers["location"]
    after = web.get(f"/admin/dead-letters/{entry_id}").text
    assert "admin (dashboard)" in after
    assert "&quot;fixed&quot;" in after
    entry = runtime.dlq.get(entry_id)
    assert entry is not None
    [record] = entry.history
    assert record["session"].endswith("Z")
    assert {c["field"] for c in record["changes"]} == {"name", "metadata"}  # only what changed
    [outcome] = sync_due(runtime)
    assert outcome.result == "applied"
