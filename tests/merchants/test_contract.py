"""What README's "Sending events from your app" tells a merchant, checked on the real web process.

Each refusal the intake really answers must be in the README's table of answers, and the
ordering rules it states (envelope by event time, bare form by delivery time, metadata replaced
as a whole) hold.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sync_worker import redis_keys as keys
from sync_worker.settings import Settings
from tests.fixtures.stack import ADMIN_TOKEN, WEBHOOK_SECRET, Stack, user_event, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def web_stack(shared_web_stack: Stack) -> Stack:
    """This module's tests share one web process, each test finding it as new."""
    return shared_web_stack


def merchant_section() -> str:
    text = README.read_text()
    start = text.index("## Sending events from your app")
    return text[start : text.index("\n## ", start)]


def answers_table() -> dict[str, str]:
    """Rows of the table of answers, by their first cell."""
    section = merchant_section()
    table = section[section.index("| answer | means |") :]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        first = line.split("|")[1].strip()
        rows[first] = line
    return rows


def post(stack: Stack, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        stack.web_url + "/webhooks/user-updated", content=body, headers=headers, timeout=10
    )


def test_every_refusal_is_in_the_readme_table(web_stack: Stack) -> None:
    event = json.dumps(user_event("evt_r", "user_1", name="x")).encode()
    signed = web_stack.sign(event, msg_id="evt_r")
    refusals = [
        post(web_stack, b"{nope", web_stack.sign(b"{nope", msg_id="m")),
        post(web_stack, event, {k: v for k, v in signed.items() if k != "webhook-signature"}),
        post(web_stack, event, web_stack.sign(event, msg_id="evt_r", at=int(time.time()) - 900)),
        post(web_stack, event, {**signed, "webhook-signature": "v1,AAAA"}),
        post(web_stack, event, {**signed, "webhook-timestamp": str(time.time())}),
        post(web_stack, b"{" + b" " * 70_000 + b"}", web_stack.sign(b"{}", msg_id="m")),
        web_stack.post(user_event("evt_bad", "user 1", name="x")),
    ]
    web_stack.redis_server.stop()
    try:
        unavailable = web_stack.post(user_event("evt_503", "user_1", name="x"))
    finally:
        web_stack.redis_server.start()
    rows = answers_table()
    seen = set()
    for response in refusals:
        code = response.json()["error"]["code"]
        seen.add((response.status_code, code))
        row = rows.get(f"`{response.status_code}` `{code}`")
        assert row is not None, f"{response.status_code} {code} is not in README's answers"
        message = response.json()["error"]["message"]
        assert response.status_code != 401 or "the message says which" in row, message
    assert {status for status, _ in seen} == {400, 401, 413, 422}
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "5"
    row = rows['`503` `{"status":"unavailable"}`, `Retry-After: 5`']
    assert unavailable.json()["status"] == "unavailable"
    assert "the same event id" in row
    accepted = web_stack.post(user_event("evt_ok", "user_1", name="x"))
    assert accepted.status_code == 202
    assert accepted.json()["status"] == "accepted"
    assert '`202` `{"status":"accepted","event_id","user_id"}`' in rows
    assert set(accepted.json()) == {"status", "event_id", "user_id"}
    duplicate = web_stack.post(user_event("evt_ok", "user_1", name="x"))
    assert duplicate.status_code == 200
    assert '`200` `{"status":"duplicate","event_id"}`' in rows
    assert duplicate.json() == {"status": "duplicate", "event_id": "evt_ok"}


def test_envelope_orders_by_event_time_bare_form_by_delivery_time(web_stack: Stack) -> None:
    # Envelope: the newer change was sent first; the old one, retried later, changes nothing.
    newer = user_event("evt_new", "user_1", name="New", at="2026-11-24T10:00:05Z")
    older = user_event("evt_old", "user_1", name="Old", at="2026-11-24T10:00:00Z")
    assert web_stack.post(newer).status_code == 202
    assert web_stack.post(older).status_code == 202  # accepted, and stale
    stored = web_stack.redis.hgetall(keys.pending("user_1"))
    assert json.loads(stored["v:name"]) == "New"

    # Bare form: the same story, but the old delivery is retried with a later signing time,
    # which is all the bare form has: the old value wins. README warns of exactly this.
    now = int(time.time())
    new_body = json.dumps({"userId": "user_2", "name": "New"}).encode()
    old_body = json.dumps({"userId": "user_2", "name": "Old"}).encode()
    sent_first = post(web_stack, new_body, web_stack.sign(new_body, msg_id="m_new", at=now - 5))
    retried_later = post(web_stack, old_body, web_stack.sign(old_body, msg_id="m_old", at=now))
    assert (sent_first.status_code, retried_later.status_code) == (202, 202)
    stored = web_stack.redis.hgetall(keys.pending("user_2"))
    assert json.loads(stored["v:name"]) == "Old"


def test_metadata_is_one_field_the_latest_replaces_it(web_stack: Stack) -> None:
    first = user_event("evt_m1", "user_3", metadata={"plan": "pro", "seats": 3},
                       at="2026-11-24T10:00:00Z")  # fmt: skip
    second = user_event("evt_m2", "user_3", metadata={"plan": "team"}, at="2026-11-24T10:00:01Z")
    name = user_event("evt_m3", "user_3", name="Ada", at="2026-11-24T09:00:00Z")
    for event in (first, second, name):
        assert web_stack.post(event).status_code == 202
    stored = web_stack.redis.hgetall(keys.pending("user_3"))
    assert json.loads(stored["v:metadata"]) == {"plan": "team"}
    # Fields merge one by one: an older event still sets a field no newer event set.
    assert json.loads(stored["v:name"]) == "Ada"


def code_blocks(language: str) -> list[str]:
    """The fenced blocks of one language in the merchant section, in order."""
    return re.findall(rf"```{language}\n(.*?)```", merchant_section(), flags=re.DOTALL)


def test_every_json_example_in_the_section_is_accepted(web_stack: Stack) -> None:
    examples = [json.loads(block) for block in code_blocks("json")]
    bare = re.search(r"The bare form, `(\{.*?\})`", merchant_section())
    assert bare is not None
    assert len(examples) == 2
    for example in examples:
        response = web_stack.post(example)
        assert response.status_code == 202, response.text
    body = bare.group(1).encode()
    response = post(web_stack, body, web_stack.sign(body, msg_id="msg_bare_readme"))
    assert response.status_code == 202, response.text
    # "Unknown fields are ignored", at both levels of the envelope.
    extra = {**examples[0], "id": "evt_extra", "source": "app", "data": {
        **examples[0]["data"], "plan_code": "P1"
    }}  # fmt: skip
    assert web_stack.post(extra).status_code == 202


def test_from_nothing_to_a_202_runs_as_written(stack: Stack, tmp_path: Path) -> None:
    stack.sandbox.control.create_customer("one@example.tw", external_id="user_1", name="Old")
    # The dev stack's state, as `make run` leaves it in the working directory.
    (tmp_path / ".dev").mkdir()
    secrets = {"WEBHOOK_SECRET": WEBHOOK_SECRET, "ADMIN_TOKEN": ADMIN_TOKEN}
    (tmp_path / ".dev" / "secrets.json").write_text(json.dumps(secrets, indent=2) + "\n")
    block = next(b for b in code_blocks("sh") if "send-test-event" in b and "RECUR_SYNC_URL" in b)
    script = (
        block.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")
        .replace("http://127.0.0.1:8000", stack.web_url)
        .replace("examples/python/", str(README.parent / "examples" / "python") + "/")
    )
    ours = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key not in ours}
    env["WEB_PORT"] = stack.web_url.rsplit(":", 1)[1]  # where `make run` would listen
    result = subprocess.run(
        ["sh", "-e", "-c", script], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-> 202" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "accepted"
    wait_for(lambda: stack.sandbox.control.requests(method="PATCH", external_id="user_1"))
