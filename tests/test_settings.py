"""Settings: read from the environment and `.env`; a bad value is one line naming the variable."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sync_worker.settings import ConfigError, Settings, load_settings
from tests.fixtures.redis_server import free_port

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the caller's environment or `.env`: a fresh cwd and no variables."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert message.strip() == message
    return message


def test_defaults() -> None:
    settings = load_settings()
    assert str(settings.recur_api_url).rstrip("/") == "https://api.recur.tw"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.web_port == 8000
    assert settings.debounce_window_seconds == 2.0
    assert settings.debounce_max_wait_seconds == 30.0
    assert settings.retry_budget_seconds == 24 * 3600
    assert settings.reconcile_schedule == "0 3 * * *"
    assert settings.recur_secret_key is None
    assert settings.mode_label == "unset"
    assert not settings.test_mode


BAD = [
    pytest.param(
        {"RECUR_SECRET_KEY": "pk_test_x"}, "RECUR_SECRET_KEY", "publishable", id="publishable key"
    ),
    pytest.param(
        {"RECUR_SECRET_KEY": "pk_live_x"}, "RECUR_SECRET_KEY", "publishable", id="live pk"
    ),
    pytest.param({"RECUR_SECRET_KEY": "abc123"}, "RECUR_SECRET_KEY", "sk_", id="not sk"),
    pytest.param({"RECUR_SECRET_KEY": "rk_test_x"}, "RECUR_SECRET_KEY", "sk_", id="restricted"),
    pytest.param({"RECUR_API_URL": "not a url"}, "RECUR_API_URL", "URL", id="url garbage"),
    pytest.param({"RECUR_API_URL": "ftp://api.recur.tw"}, "RECUR_API_URL", "http", id="ftp"),
    pytest.param({"RECUR_API_URL": "https://"}, "RECUR_API_URL", "", id="url no host"),
    pytest.param({"REDIS_URL": "localhost:6379"}, "REDIS_URL", "redis://", id="redis url"),
    pytest.param({"WEBHOOK_SECRET": "whsec_!!not base64!!"}, "WEBHOOK_SECRET", "base64", id="b64"),
    pytest.param(
        {"WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"short").decode()},
        "WEBHOOK_SECRET",
        "too short",
        id="short secret",
    ),
    pytest.param({"ADMIN_TOKEN": "x" * 15}, "ADMIN_TOKEN", "at least 16", id="short token"),
    pytest.param(
        {"REDIS_MIN_REPLICAS": "-1"}, "REDIS_MIN_REPLICAS", "or auto", id="negative replicas"
    ),
    pytest.param({"REDIS_MIN_REPLICAS": "all"}, "REDIS_MIN_REPLICAS", "or auto", id="replicas"),
    pytest.param({"REDIS_WAIT_TIMEOUT_MS": "0"}, "REDIS_WAIT_TIMEOUT_MS", "", id="wait 0"),
    pytest.param({"WEB_PORT": "0"}, "WEB_PORT", "", id="port 0"),
    pytest.param({"WEB_PORT": "http"}, "WEB_PORT", "integer", id="port text"),
    pytest.param(
        {"RECONCILE_TIMEZONE": "Mars/Olympus"}, "RECONCILE_TIMEZONE", "Mars/Olympus", id="tz"
    ),
    pytest.param({"RECONCILE_TIMEZONE": "../etc"}, "RECONCILE_TIMEZONE", "time zone", id="tz path"),
    pytest.param({"RECONCILE_SCHEDULE": "0 3 * *"}, "RECONCILE_SCHEDULE", "five", id="cron 4"),
    pytest.param({"RECONCILE_SCHEDULE": "daily"}, "RECONCILE_SCHEDULE", "five", id="cron word"),
    pytest.param({"RECONCILE_SCHEDULE": "61 3 * * *"}, "RECONCILE_SCHEDULE", "61", id="cron 61"),
    pytest.param({"RECONCILE_SCHEDULE": "0 3 * * x"}, "RECONCILE_SCHEDULE", "cron", id="cron x"),
    pytest.param({"RECONCILE_SCHEDULE": "0 3 , * *"}, "RECONCILE_SCHEDULE", "cron", id="cron ,"),
    pytest.param({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL", "", id="log level"),
    pytest.param(
        {"DEBOUNCE_WINDOW_SECONDS": "60"}, "DEBOUNCE_WINDOW_SECONDS", "MAX_WAIT", id="window"
    ),
    pytest.param({"DEBOUNCE_WINDOW_SECONDS": "-1"}, "DEBOUNCE_WINDOW_SECONDS", "", id="negative"),
    pytest.param({"LEASE_SECONDS": "10"}, "LEASE_SECONDS", "longest sync attempt", id="lease"),
    pytest.param(
        {"LEASE_SECONDS": "4000"}, "VISIBILITY_TIMEOUT_SECONDS", "LEASE_SECONDS", id="visibility"
    ),
    pytest.param(
        {"RETRY_BACKOFF_BASE_SECONDS": "7200"},
        "RETRY_BACKOFF_BASE_SECONDS",
        "RETRY_BACKOFF_MAX_SECONDS",
        id="backoff",
    ),
]


@pytest.mark.parametrize(("env", "variable", "says"), BAD)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, says: str
) -> None:
    message = config_error(monkeypatch, **env)
    assert message.startswith(variable + " ") or message.startswith(variable + ":")
    assert says in message
    assert "Value error" not in message
    for value in env.values():
        if value.startswith(("pk_", "whsec_")):
            assert value not in message


def test_the_whole_message_for_a_publishable_key(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_error(monkeypatch, RECUR_SECRET_KEY="pk_test_x") == (
        "RECUR_SECRET_KEY: a publishable key (pk_...) cannot read or update customers; "
        "use a secret key (sk_test_... or sk_live_...)"
    )


def test_a_missing_key_is_refused_where_it_is_required() -> None:
    settings = load_settings()
    with pytest.raises(ConfigError) as caught:
        settings.require_secret_key()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("RECUR_SECRET_KEY: not set")
    with pytest.raises(ConfigError, match=r"^WEBHOOK_SECRET: not set"):
        settings.require_webhook_secret()


@pytest.mark.parametrize(
    ("key", "test_mode", "label"),
    [
        ("sk_test_abc", True, "test"),
        ("sk_live_abc", False, "live"),
        (" sk_test_pad ", True, "test"),
    ],
)
def test_key_mode(monkeypatch: pytest.MonkeyPatch, key: str, test_mode: bool, label: str) -> None:
    monkeypatch.setenv("RECUR_SECRET_KEY", key)
    settings = load_settings()
    assert settings.test_mode is test_mode
    assert settings.mode_label == label
    assert settings.require_secret_key() == key.strip()


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECUR_API_URL", "http://127.0.0.1:8100")
    monkeypatch.setenv("RECUR_SECRET_KEY", "sk_live_env")
    monkeypatch.setenv("REDIS_URL", "redis://redis:6380/2")
    monkeypatch.setenv("WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("ADMIN_TOKEN", "admin-token-0123456789")
    monkeypatch.setenv("WEB_PORT", "9000")
    monkeypatch.setenv("DEBOUNCE_WINDOW_SECONDS", "0.5")
    monkeypatch.setenv("RECONCILE_TIMEZONE", "Asia/Taipei")
    monkeypatch.setenv("RECONCILE_SCHEDULE", "30 2 * * mon-fri")
    settings = load_settings()
    assert str(settings.recur_api_url).rstrip("/") == "http://127.0.0.1:8100"
    assert settings.require_secret_key() == "sk_live_env"
    assert settings.redis_url == "redis://redis:6380/2"
    assert settings.require_webhook_secret() == WEBHOOK_SECRET
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "admin-token-0123456789"
    assert settings.web_port == 9000
    assert settings.debounce_window_seconds == 0.5
    assert settings.reconcile_timezone == "Asia/Taipei"
    assert settings.reconcile_schedule == "30 2 * * mon-fri"


def test_values_from_a_dotenv_file(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "RECUR_SECRET_KEY=sk_test_from_file\n"
        "DEBOUNCE_WINDOW_SECONDS=5\n"
        "WEB_PORT=8123\n"
        "# a comment\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("WEB_PORT", "8124")
    settings = load_settings()
    assert settings.require_secret_key() == "sk_test_from_file"
    assert settings.debounce_window_seconds == 5.0
    assert settings.web_port == 8124, "the environment wins over .env"


def test_a_bad_value_in_dotenv_names_the_variable(clean_env: Path) -> None:
    (clean_env / ".env").write_text("RECUR_SECRET_KEY=pk_test_in_file\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^RECUR_SECRET_KEY: a publishable key"):
        load_settings()


def test_secrets_never_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECUR_SECRET_KEY", "sk_live_TOPSECRETKEY")
    monkeypatch.setenv("WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("ADMIN_TOKEN", "admin-TOPSECRET-0123")
    monkeypatch.setenv("REDIS_URL", "redis://:redis-TOPSECRET@redis:6379/0")
    settings = load_settings()
    for text in (repr(settings), str(settings)):
        assert "TOPSECRET" not in text
        assert WEBHOOK_SECRET not in text
        assert WEBHOOK_SECRET.removeprefix("whsec_") not in text


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.web_port = 1  # type: ignore[misc]


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_PORT", "9000")
    assert load_settings(web_port=9001).web_port == 9001


def test_the_cli_refuses_a_publishable_key_in_one_line(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in Settings.model_fields and not key.startswith("CELERY")
    }
    env |= {
        "RECUR_SECRET_KEY": "pk_test_x",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "sync_worker", "worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "RECUR_SECRET_KEY" in lines[0]
    assert "publishable" in lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    "given",
    [
        "https://api.recur.tw",
        "https://api.recur.tw/",
        "https://api.recur.tw/v1",
        "https://api.recur.tw/v1/",
        " https://api.recur.tw/v1 ",
    ],
)
def test_recur_api_url_with_or_without_v1(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    # The seed's examples write the base with /v1; paths add /v1 themselves: never /v1/v1.
    monkeypatch.setenv("RECUR_API_URL", given)
    assert str(load_settings().recur_api_url).rstrip("/") == "https://api.recur.tw"


def test_recur_api_url_keeps_a_path_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECUR_API_URL", "https://gateway.example/recur/v1")
    assert str(load_settings().recur_api_url) == "https://gateway.example/recur"


def test_web_refuses_a_short_admin_token_in_one_line_without_echoing_it(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in Settings.model_fields and not key.startswith("CELERY")
    }
    env |= {
        "ADMIN_TOKEN": "short-secret-15",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "sync_worker", "web", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ADMIN_TOKEN: is too short: use at least 16 characters")
    assert "short-secret-15" not in done.stderr + done.stdout


def test_lease_must_be_twice_the_longest_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    # The longest attempt: the longest rate-limit wait + the attempt's total deadline.
    monkeypatch.setenv("RETRY_FAST_MAX_SECONDS", "5")
    monkeypatch.setenv("RECUR_ATTEMPT_DEADLINE_SECONDS", "20")
    monkeypatch.setenv("LEASE_SECONDS", "50")
    settings = load_settings()
    assert settings.attempt_deadline_seconds == 20
    monkeypatch.setenv("LEASE_SECONDS", "49.9")
    message = config_error(monkeypatch)
    assert message.startswith("LEASE_SECONDS must be at least twice the longest sync attempt")
    assert "RECUR_ATTEMPT_DEADLINE_SECONDS" in message


def test_the_attempt_deadline_defaults_to_connect_plus_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECUR_CONNECT_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("RECUR_READ_TIMEOUT_SECONDS", "7")
    assert load_settings().attempt_deadline_seconds == 9


@pytest.mark.parametrize(
    ("url", "given", "replicas"),
    [
        ("redis://localhost:6379/0", None, 0),
        ("sentinel://a:26379;sentinel://b:26379", None, 1),
        ("sentinel://a:26379", "auto", 1),
        ("sentinel://a:26379", "0", 0),
        ("redis://localhost:6379/0", "2", 2),
    ],
)
def test_min_replicas_is_one_behind_sentinel_unless_set(
    monkeypatch: pytest.MonkeyPatch, url: str, given: str | None, replicas: int
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    if given is not None:
        monkeypatch.setenv("REDIS_MIN_REPLICAS", given)
    assert load_settings().min_replicas == replicas
