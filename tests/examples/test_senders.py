"""The README's Python and shell senders (examples/), run as a merchant runs them.

Against a real `sync-worker web` and worker: the change must reach the sandbox as a PATCH. The
retry cases stop Redis so the intake answers 503, and check that the sender retries the same
event id until it is stored.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sync_worker import redis_keys as keys
from tests.fixtures.stack import WEBHOOK_SECRET, Stack, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PYTHON_SENDER = EXAMPLES / "python" / "send_event.py"
SHELL_SENDER = EXAMPLES / "shell" / "send_event.sh"


def sender_env(stack: Stack, **extra: str) -> dict[str, str]:
    """What a merchant exports: the intake URL and the secret, nothing of ours."""
    return {
        **os.environ,
        "RECUR_SYNC_URL": stack.web_url + "/webhooks/user-updated",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        **extra,
    }


def patches(stack: Stack, external_id: str) -> list[dict[str, Any]]:
    """The bodies of the PATCHes the sandbox received for one user."""
    logged = stack.sandbox.control.requests(method="PATCH", external_id=external_id)
    return [request["body"] for request in logged]


def run_python(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PYTHON_SENDER), *args], env=sender_env(stack),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_python_sender_reaches_recur_without_the_email(stack: Stack) -> None:
    stack.sandbox.control.create_customer("ming@example.tw", external_id="user_1", name="Old")
    result = run_python(
        stack, "user_1", "--name", "王大明", "--email", "ming@example.tw",
        "--metadata", '{"plan": "pro"}', "--changed-at", "2026-11-24T10:00:00Z",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["status"] == "accepted"
    assert answer["event_id"].startswith("evt_")
    # email is used to bind and report, never sent to Recur.
    wait_for(lambda: patches(stack, "user_1"))
    assert patches(stack, "user_1") == [{"name": "王大明", "metadata": {"plan": "pro"}}]


def test_python_sender_rebinds(stack: Stack) -> None:
    stack.sandbox.control.create_customer("a@example.tw", external_id="old_9", name="A")
    result = run_python(stack, "old_9", "--new-user-id", "new_9")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: patches(stack, "old_9"))
    assert patches(stack, "old_9") == [{"external_id": "new_9"}]
    assert stack.sandbox.control.customer_by_external_id("new_9") is not None


def test_python_sender_unbinds(stack: Stack) -> None:
    customer = stack.sandbox.control.create_customer("u@example.tw", external_id="gone_1")
    result = run_python(stack, "gone_1", "--unbind")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: patches(stack, "gone_1"))
    assert patches(stack, "gone_1") == [{"external_id": None}]
    unbound = stack.sandbox.control.customer(customer["id"])
    assert unbound is not None
    assert unbound["external_id"] is None


def test_python_sender_stops_on_a_422_naming_the_field(stack: Stack) -> None:
    result = run_python(stack, "user 1", "--name", "x")
    assert result.returncode == 1
    assert "rejected evt_" in result.stderr
    assert "422" in result.stderr
    assert "data.user_id" in result.stderr
    assert "retrying" not in result.stderr


def intake_refused(stack: Stack) -> bool:
    """The web process has answered at least one 503 (it logs each with the event id)."""
    web = next(proc for proc in stack.processes if proc.name == "web")
    return "intake_unavailable" in web.log()


def test_python_sender_retries_a_503_with_the_same_event_id(web_stack: Stack) -> None:
    web_stack.redis_server.stop()
    try:
        sender = subprocess.Popen(
            [sys.executable, str(PYTHON_SENDER), "user_5", "--name", "Retried"],
            env=sender_env(web_stack), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(lambda: intake_refused(web_stack))
    finally:
        web_stack.redis_server.start()
    stdout, stderr = sender.communicate(timeout=60)
    assert sender.returncode == 0, stdout + stderr
    answer = json.loads(stdout)
    assert answer["status"] == "accepted"
    assert "attempt 1: 503 " in stderr
    assert f"retrying {answer['event_id']} in" in stderr
    stored = web_stack.redis.hgetall(keys.pending("user_5"))
    assert json.loads(stored["v:name"]) == "Retried"
    assert stored["e:name"] == answer["event_id"]


needs_shell_tools = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("sh", "curl", "openssl", "od")),
    reason="the shell example needs sh, curl, openssl and od",
)


def run_shell(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SHELL_SENDER), *args], env=sender_env(stack, **env),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@needs_shell_tools
def test_shell_sender_reaches_recur(stack: Stack) -> None:
    stack.sandbox.control.create_customer("b@example.tw", external_id="user_2", name="Old")
    name = 'Ada "the first" \\ 王'
    result = run_shell(stack, "user_2", name, EVENT_ID="evt_shell_1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {
        "status": "accepted", "event_id": "evt_shell_1", "user_id": "user_2"
    }  # fmt: skip
    wait_for(lambda: patches(stack, "user_2"))
    assert patches(stack, "user_2") == [{"name": name}]
    # The same event id again is a duplicate: nothing more is sent.
    again = run_shell(stack, "user_2", name, EVENT_ID="evt_shell_1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["status"] == "duplicate"


@needs_shell_tools
def test_shell_sender_fails_on_a_wrong_secret(web_stack: Stack) -> None:
    wrong = "whsec_" + "d3Jvbmctc2VjcmV0LW9mLTMyLWJ5dGVzISEhISEhISE="
    result = run_shell(web_stack, "user_2", "Ada", WEBHOOK_SECRET=wrong)
    assert result.returncode == 22  # curl's exit status for an HTTP error answer
    assert json.loads(result.stdout)["error"]["code"] == "bad_signature"


@needs_shell_tools
def test_shell_sender_retries_a_503(web_stack: Stack) -> None:
    web_stack.redis_server.stop()
    try:
        sender = subprocess.Popen(
            ["sh", str(SHELL_SENDER), "user_6", "Retried"],
            env=sender_env(web_stack, EVENT_ID="evt_shell_retry"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(lambda: intake_refused(web_stack))
    finally:
        web_stack.redis_server.start()
    stdout, stderr = sender.communicate(timeout=120)
    assert sender.returncode == 0, stdout + stderr
    assert json.loads(stdout)["status"] == "accepted"
    stored = web_stack.redis.hgetall(keys.pending("user_6"))
    assert stored["e:name"] == "evt_shell_retry"
