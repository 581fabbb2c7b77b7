"""`sync-worker send-test-event`: a merchant's own payloads, and the exact headers it sent.

Run as a subprocess against a real `sync-worker web` and Redis. The printed headers are checked
with the independent `standardwebhooks` package, so they are what a merchant's signer must make.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from sync_worker import redis_keys as keys
from tests.fixtures import readme
from tests.fixtures.stack import WEBHOOK_SECRET, Stack


@pytest.fixture
def web_stack(shared_web_stack: Stack) -> Stack:
    """This module's tests share one web process, each test finding it as new."""
    return shared_web_stack


def send(stack: Stack, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run send-test-event against the stack's intake."""
    result = subprocess.run(
        [sys.executable, "-m", "sync_worker", "send-test-event",
         "--url", stack.web_url + "/webhooks/user-updated", *args],
        env={**os.environ, **stack.env}, input=stdin, capture_output=True, timeout=30,
        check=False,
    )  # fmt: skip
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def sent_headers(stdout: str) -> dict[str, str]:
    """The `> name: value` lines the command printed."""
    found = {}
    for line in stdout.splitlines():
        name, sep, value = line.removeprefix("> ").partition(": ")
        if line.startswith("> ") and sep and name.startswith(("webhook-", "content-")):
            found[name] = value
    return found


def answer(stdout: str) -> dict[str, str]:
    """The JSON line after `POST ... -> status`."""
    lines = stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("POST "))
    return json.loads(lines[index + 1])  # type: ignore[no-any-return]


def assert_no_secret(result: subprocess.CompletedProcess[str]) -> None:
    key = WEBHOOK_SECRET.removeprefix("whsec_")
    assert key not in result.stdout + result.stderr


def test_prints_headers_that_verify_and_sends_the_event_time(web_stack: Stack) -> None:
    result = send(web_stack, "--user", "user_1", "--name", "Ada",
                  "--timestamp", "2026-11-24T10:00:00+08:00")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    headers = sent_headers(result.stdout)
    assert set(headers) == {"content-type", "webhook-id", "webhook-timestamp", "webhook-signature"}
    body_line = next(line for line in result.stdout.splitlines() if line.startswith("> {"))
    body = body_line.removeprefix("> ")
    envelope = json.loads(body)
    assert envelope["timestamp"] == "2026-11-24T02:00:00Z"
    assert envelope["id"] == headers["webhook-id"]
    # What was printed is what was signed: an independent verifier accepts it.
    Webhook(WEBHOOK_SECRET).verify(body, headers)
    assert "-> 202" in result.stdout
    assert answer(result.stdout)["event_id"] == headers["webhook-id"]
    assert_no_secret(result)
    stored = web_stack.redis.hgetall(keys.pending("user_1"))
    assert json.loads(stored["v:name"]) == "Ada"
    assert (
        int(stored["t:name"])
        == int(datetime.fromisoformat(envelope["timestamp"]).timestamp()) * 1000
    )


def test_body_file_is_sent_byte_for_byte(web_stack: Stack, tmp_path: Path) -> None:
    # A merchant's own bare-form payload, with their formatting and trailing newline.
    raw = b'{"userId": "user_7",\n  "name": "Bare \\u738b"}\n'
    path = tmp_path / "event.json"
    path.write_bytes(raw)
    result = send(web_stack, "--body", str(path), "--id", "msg_bare_1")
    assert result.returncode == 0, result.stdout + result.stderr
    headers = sent_headers(result.stdout)
    assert headers["webhook-id"] == "msg_bare_1"
    Webhook(WEBHOOK_SECRET).verify(raw, headers)
    assert answer(result.stdout) == {
        "status": "accepted", "event_id": "msg_bare_1", "user_id": "user_7"
    }  # fmt: skip
    assert json.loads(web_stack.redis.hget(keys.pending("user_7"), "v:name")) == "Bare 王"


def test_body_from_stdin_takes_the_envelope_id(web_stack: Stack) -> None:
    envelope = {
        "id": "evt_from_stdin",
        "type": "user.updated",
        "timestamp": "2026-11-24T10:00:00Z",
        "data": {"user_id": "user_3", "metadata": {"plan": "pro"}},
    }
    result = send(web_stack, "--body", "-", stdin=json.dumps(envelope).encode())
    assert result.returncode == 0, result.stdout + result.stderr
    assert sent_headers(result.stdout)["webhook-id"] == "evt_from_stdin"
    assert answer(result.stdout)["event_id"] == "evt_from_stdin"
    # The same id again is a duplicate, which is not an error.
    again = send(web_stack, "--body", "-", stdin=json.dumps(envelope).encode())
    assert again.returncode == 0, again.stdout + again.stderr
    assert "-> 200" in again.stdout
    assert answer(again.stdout) == {"status": "duplicate", "event_id": "evt_from_stdin"}


def test_type_external_id_changed_rebinds(web_stack: Stack) -> None:
    result = send(web_stack, "--type", "user.external_id_changed",
                  "--user", "old_1", "--new-user", "new_1")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    body = next(line for line in result.stdout.splitlines() if line.startswith("> {"))
    assert json.loads(body.removeprefix("> "))["data"] == {
        "user_id": "old_1",
        "new_user_id": "new_1",
    }
    stored = web_stack.redis.hgetall(keys.pending("old_1"))
    assert json.loads(stored["v:external_id"]) == "new_1"


def test_unbind_sends_a_null_new_user_id(web_stack: Stack) -> None:
    result = send(web_stack, "--type", "user.external_id_changed", "--user", "old_2", "--unbind")
    assert result.returncode == 0, result.stdout + result.stderr
    body = next(line for line in result.stdout.splitlines() if line.startswith("> {"))
    assert json.loads(body.removeprefix("> "))["data"] == {"user_id": "old_2", "new_user_id": None}
    stored = web_stack.redis.hgetall(keys.pending("old_2"))
    assert json.loads(stored["v:external_id"]) is None


def test_a_wrong_secret_shows_the_401_and_fails(web_stack: Stack) -> None:
    other = "whsec_" + "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzISEhISEhISE="
    result = subprocess.run(
        [sys.executable, "-m", "sync_worker", "send-test-event",
         "--url", web_stack.web_url + "/webhooks/user-updated"],
        env={**os.environ, **web_stack.env, "WEBHOOK_SECRET": other},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "-> 401" in result.stdout
    assert "signature" in answer(result.stdout)["error"]["message"]  # type: ignore[index]
    assert "b3RoZXItc2VjcmV0" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        pytest.param(
            ["--body", "missing.json"],
            None,
            "error: --body missing.json: cannot read it (",
            id="missing-file",
        ),
        pytest.param(
            ["--body", "-"], b"{not json", "error: --body stdin: not JSON (", id="not-json"
        ),
        pytest.param(
            ["--body", "-", "--name", "x"],
            b"{}",
            "error: --body is sent exactly as it is; --name cannot change it",
            id="body-and-name",
        ),
        pytest.param(
            ["--timestamp", "2026-11-24T10:00:00"],
            None,
            "error: --timestamp '2026-11-24T10:00:00': give a time zone",
            id="naive-timestamp",
        ),
        pytest.param(
            ["--timestamp", "yesterday"],
            None,
            "error: --timestamp 'yesterday': not an ISO 8601 time",
            id="bad-timestamp",
        ),
        pytest.param(
            ["--type", "user.external_id_changed"],
            None,
            "error: --type user.external_id_changed needs --new-user ID or --unbind",
            id="rebind-without-new-user",
        ),
    ],
)
def test_bad_input_is_refused_before_sending(
    tmp_path: Path, args: list[str], stdin: bytes | None, message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sync_worker", "send-test-event",
         "--url", "http://127.0.0.1:9/never-reached", *args],
        env={**os.environ, "WEBHOOK_SECRET": WEBHOOK_SECRET}, cwd=tmp_path, input=stdin,
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.decode().startswith(message), result.stderr
    assert b"POST" not in result.stdout


def test_the_quickstart_sample_is_what_it_prints(web_stack: Stack) -> None:
    """README's Quickstart shows every line the command prints, as a new user sees them (the
    default intake URL and debounce window)."""
    command = '.venv/bin/sync-worker send-test-event --user user_1 --name "王大明"'
    sample = readme.commented_output(readme.section("Quickstart"), command)
    intake = web_stack.web_url + "/webhooks/user-updated"
    result = subprocess.run(
        [sys.executable, "-m", "sync_worker", "send-test-event",
         "--user", "user_1", "--name", "王大明", "--url", intake],
        env={**os.environ, **web_stack.env, "DEBOUNCE_WINDOW_SECONDS": "2"},
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    printed = result.stdout.decode().replace(intake, "http://127.0.0.1:8000/webhooks/user-updated")
    assert readme.mismatches(sample, printed.splitlines()) == []
