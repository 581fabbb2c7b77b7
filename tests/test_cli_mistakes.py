"""A new user's mistakes, as the README's first run invites them: each is one line on stderr
naming what to fix, never a traceback."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from sync_worker.settings import ConfigError, Settings, load_settings
from tests.fixtures.redis_server import free_port
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import Stack

OTHER_SECRET = "whsec_" + base64.b64encode(b"not the secret the web process has").decode()


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`sync-worker ARGS` in a fresh process, with no setting but `env`."""
    clean = {k: v for k, v in os.environ.items() if k.upper() not in Settings.model_fields}
    clean = {k: v for k, v in clean.items() if k.lower() not in Settings.model_fields}
    return subprocess.run(
        [sys.executable, "-m", "sync_worker", *args],
        env={**clean, "LOG_FORMAT": "json", **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://127.0.0.1:99999/0", "has a port that is not a number from 1 to 65535"),
        ("redis://127.0.0.1:6379/abc", "the database after the port must be a number"),
        ("sentinel://a:26379;sentinel://b:0", "has a port that is not a number from 1 to 65535"),
        ("unix:///var/run/redis.sock", "must start with redis://, rediss:// or sentinel://"),
    ],
)
def test_a_malformed_redis_url_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"REDIS_URL: {says}")


def test_a_port_out_of_range_is_one_line_not_a_traceback() -> None:
    done = run("status", REDIS_URL="redis://127.0.0.1:99999/0")
    assert done.returncode == 2
    assert one_line(done.stderr).startswith("error: REDIS_URL: has a port")


def test_an_unreachable_redis_names_redis_url() -> None:
    done = run("status", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("error: Redis: ")
    assert line.endswith("(check REDIS_URL)")


def test_sentinels_without_the_master_name_it_without_client_reprs() -> None:
    done = run("dlq", "list", REDIS_URL=f"sentinel://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "mymaster" in line
    assert line.endswith("(check REDIS_URL and REDIS_SENTINEL_MASTER)")
    assert "<redis." not in line


def test_a_refused_recur_key_tells_reconcile_which_setting_to_fix(
    redis_url: str, sandbox: SandboxHandle
) -> None:
    done = run(
        "reconcile", REDIS_URL=redis_url, RECUR_API_URL=sandbox.url, RECUR_SECRET_KEY="sk_test_no"
    )
    assert done.returncode == 1
    error = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert len(error) == 1, done.stdout
    assert "-> 401" in error[0]
    assert "fix RECUR_SECRET_KEY" in error[0]


def test_send_test_event_with_another_secret_says_so(web_stack: Stack) -> None:
    env = {**web_stack.env, "WEBHOOK_SECRET": OTHER_SECRET}
    done = run("send-test-event", "--url", web_stack.web_url + "/webhooks/user-updated", **env)
    assert done.returncode == 1
    assert "-> 401" in done.stdout
    line = one_line(done.stderr)
    assert "WEBHOOK_SECRET" in line
    assert "not the secret this intake verifies with" in line
    assert OTHER_SECRET not in done.stdout + done.stderr


def test_send_test_event_with_nothing_listening_says_where_it_looked() -> None:
    url = f"http://127.0.0.1:{free_port()}/webhooks/user-updated"
    done = run("send-test-event", "--url", url, WEBHOOK_SECRET=OTHER_SECRET)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith(f"error: POST {url} failed:")
    assert "--url or WEB_PORT" in line


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_a_worker_or_beat_without_redis_at_start_says_so_in_one_line(command: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = run(command, REDIS_URL=url, RECUR_SECRET_KEY="sk_test_sandbox")
    assert done.returncode == 1
    assert one_line(done.stderr).endswith("(check REDIS_URL)")
