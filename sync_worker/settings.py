"""Settings: the one place that reads the environment (and `.env`).

Each entry point builds one `Settings` with `load_settings()` and passes it down; there is no
module-level instance. A bad value fails at start-up with `ConfigError`, whose message is one
line naming the variable and what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_BODY_BYTES = 64 * 1024
ADMIN_TOKEN_MIN_CHARS = 16
RECONCILE_PAGE_SIZE = 100


def api_root(url: str) -> str:
    """The Recur base URL without a trailing `/` or `/v1`: every request path starts with `/v1`,
    and the seed's own examples write the base as `https://api.recur.tw/v1`."""
    root = url.strip().rstrip("/")
    while root.endswith("/v1"):
        root = root.removesuffix("/v1").rstrip("/")
    return root


class ConfigError(Exception):
    """A setting that cannot work; `str()` is one line naming the variable."""


class Settings(BaseSettings):
    """Every knob of recur-sync, read from the environment and `.env`."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Fixed by the product contract.
    recur_api_url: AnyHttpUrl = Field(default=AnyHttpUrl("https://api.recur.tw"))
    recur_secret_key: SecretStr | None = None
    redis_url: str = Field(default="redis://localhost:6379/0", repr=False)  # may hold a password
    webhook_secret: SecretStr | None = None
    admin_token: SecretStr | None = None
    web_port: int = Field(default=8000, ge=1, le=65535)

    redis_sentinel_master: str = "mymaster"
    # Replicas that must hold a write before it is acknowledged (see min_replicas).
    redis_min_replicas: int | Literal["auto"] = "auto"
    redis_wait_timeout_ms: int = Field(default=250, ge=1, le=10_000)

    # Web.
    web_host: str = "127.0.0.1"
    webhook_tolerance_seconds: int = Field(default=300, ge=1)
    event_dedup_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    admin_login_failures_per_minute: int = Field(default=10, ge=1)

    # Debounce.
    debounce_window_seconds: float = Field(default=2.0, ge=0)
    debounce_max_wait_seconds: float = Field(default=30.0, gt=0)

    # Calls to Recur.
    recur_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    recur_read_timeout_seconds: float = Field(default=10.0, gt=0)
    # Unset: connect + read timeout. Bounds a call as a whole (httpx bounds each socket read).
    recur_attempt_deadline_seconds: float | None = Field(default=None, gt=0)
    rate_limit_per_second: float = Field(default=50.0, gt=0)
    rate_limit_burst: int = Field(default=50, ge=1)
    bind_by_email: bool = True

    # Retries: a few quick attempts inside the task, then back to the pending store.
    retry_fast_attempts: int = Field(default=3, ge=1, le=10)
    retry_fast_max_seconds: float = Field(default=10.0, gt=0)
    retry_backoff_base_seconds: float = Field(default=5.0, gt=0)
    retry_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    retry_budget_seconds: float = Field(default=24 * 3600.0, gt=0)

    # Fencing writes Recur cannot fence (sync.py): after an ambiguous outcome (timeout, reset,
    # 5xx), hold the user's next PATCH this long (unset: twice the attempt deadline), and read
    # Recur back this long after the sends that followed.
    fence_hold_seconds: float | None = Field(default=None, gt=0)
    fence_verify_delay_seconds: float = Field(default=5.0, gt=0)

    # Circuit breaker (breaker.py): stop sending while Recur is failing, for every worker.
    breaker_window_seconds: int = Field(default=60, ge=1, le=3600)
    breaker_min_calls: int = Field(default=20, ge=1)
    breaker_failure_ratio: float = Field(default=0.5, gt=0, le=1)
    breaker_cool_down_seconds: float = Field(default=30.0, gt=0)
    breaker_max_cool_down_seconds: float = Field(default=600.0, gt=0)

    # Worker.
    worker_concurrency: int = Field(default=16, ge=1, le=512)
    sync_batch_size: int = Field(default=20, ge=1, le=1000)
    dispatch_interval_seconds: float = Field(default=0.1, gt=0)
    lease_seconds: float = Field(default=120.0, gt=0)
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    visibility_timeout_seconds: int = Field(default=3600, ge=60)
    auth_probe_interval_seconds: float = Field(default=30.0, gt=0)
    dispatcher_stall_seconds: float = Field(default=60.0, ge=1)
    consumer_stall_seconds: float = Field(default=60.0, ge=5)

    # Dead letters.
    dlq_retention_days: float = Field(default=30.0, gt=0)

    # Per-user trace (trace.py): each user's history is kept this long after its last entry.
    trace_retention_days: float = Field(default=7.0, gt=0)

    # Operational webhooks (ops_webhooks.py): off unless OPS_WEBHOOK_URL is set.
    ops_webhook_url: AnyHttpUrl | None = None
    ops_webhook_secret: SecretStr | None = None
    ops_webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    ops_webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    ops_webhook_backoff_base_seconds: float = Field(default=2.0, gt=0)
    ops_webhook_backoff_max_seconds: float = Field(default=600.0, gt=0)
    ops_webhook_max_queued: int = Field(default=10_000, ge=10)

    # Reconciliation.
    reconcile_schedule: str = "0 3 * * *"
    reconcile_timezone: str = "UTC"
    reconcile_reports_kept: int = Field(default=30, ge=1)

    # Logs.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("recur_secret_key")
    @classmethod
    def _secret_key_is_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().strip()
        if raw.startswith("pk_"):
            raise ValueError(
                "a publishable key (pk_...) cannot read or update customers; "
                "use a secret key (sk_test_... or sk_live_...)"
            )
        if not raw.startswith("sk_"):
            raise ValueError("must be a Recur secret key starting with sk_test_ or sk_live_")
        return SecretStr(raw)

    @field_validator("recur_api_url")
    @classmethod
    def _api_url_without_version(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        return AnyHttpUrl(api_root(str(value)))

    @field_validator("webhook_secret", "ops_webhook_secret")
    @classmethod
    def _webhook_secret_is_standard(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().strip()
        encoded = raw.removeprefix("whsec_")
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be whsec_ followed by base64") from None
        if len(decoded) < 16:
            raise ValueError("is too short: use at least 16 random bytes")
        return SecretStr(raw)

    @field_validator("admin_token")
    @classmethod
    def _admin_token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # Empty means unset (the operator routes are off). A short token falls to guessing:
        # the login throttle slows that down, it does not make a 6-character token safe.
        if value is not None and 0 < len(value.get_secret_value()) < ADMIN_TOKEN_MIN_CHARS:
            raise ValueError(
                f"is too short: use at least {ADMIN_TOKEN_MIN_CHARS} characters "
                "(e.g. `openssl rand -hex 24`)"
            )
        return value

    @field_validator("redis_min_replicas", mode="before")
    @classmethod
    def _replicas_count_or_auto(cls, value: object) -> object:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit():
            raise ValueError("must be a number of replicas (0 or more) or auto")
        return int(text)

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str) -> str:
        # A unix socket is not offered: neither Celery's Redis transport nor our clients'
        # TCP options take `unix://`.
        schemes = ("redis://", "rediss://", "sentinel://")
        if not value.startswith(schemes):
            raise ValueError("must start with redis://, rediss:// or sentinel://")
        # redis-py would otherwise raise a bare ValueError on the first call (a port out of
        # range), or quietly use database 0 (a path that is not a number).
        for part in value.split(";"):
            parsed = urlsplit(part.strip())
            try:
                port = parsed.port
            except ValueError:
                port = 0
            if port == 0:
                raise ValueError("has a port that is not a number from 1 to 65535")
            if not re.fullmatch(r"/?\d*", parsed.path):
                raise ValueError(
                    "the database after the port must be a number, e.g. redis://localhost:6379/0"
                )
        return value

    @field_validator("reconcile_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("reconcile_schedule")
    @classmethod
    def _five_field_cron(cls, value: str) -> str:
        parts = value.split()
        if len(parts) != 5:
            raise ValueError("must be a cron expression of five fields, e.g. '0 3 * * *'")
        # Parsed here by the schedule that will run it, so that '61 3 * * *' fails at start-up
        # with one line rather than as a traceback when beat builds its schedule.
        from celery.schedules import ParseException, crontab

        minute, hour, day_of_month, month_of_year, day_of_week = parts
        try:
            crontab(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month_of_year,
                day_of_week=day_of_week,
            )
        except (ValueError, ParseException) as error:
            raise ValueError(
                f"is not a valid cron expression (minute hour day month weekday): {error}"
            ) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.debounce_window_seconds > self.debounce_max_wait_seconds:
            raise ValueError("DEBOUNCE_WINDOW_SECONDS must not exceed DEBOUNCE_MAX_WAIT_SECONDS")
        # The lease is renewed before each attempt whenever less than one attempt is left of it
        # (sync.py); twice that leaves room for the settle after the last one.
        longest_attempt = self.retry_fast_max_seconds + self.attempt_deadline_seconds
        if self.lease_seconds < 2 * longest_attempt:
            raise ValueError(
                f"LEASE_SECONDS must be at least twice the longest sync attempt "
                f"({2 * longest_attempt:g} s: 2 x (RETRY_FAST_MAX_SECONDS, the longest wait for "
                "the rate limit, + RECUR_ATTEMPT_DEADLINE_SECONDS)), or a slow request could "
                "race a newer one"
            )
        deadline = self.attempt_deadline_seconds
        if self.fence_hold_seconds is not None and self.fence_hold_seconds <= deadline:
            raise ValueError(
                f"FENCE_HOLD_SECONDS must exceed the attempt deadline ({deadline:g} s, "
                "RECUR_ATTEMPT_DEADLINE_SECONDS): a PATCH that timed out may still land until then"
            )
        if self.visibility_timeout_seconds <= self.lease_seconds:
            raise ValueError("VISIBILITY_TIMEOUT_SECONDS must exceed LEASE_SECONDS")
        if self.retry_backoff_base_seconds > self.retry_backoff_max_seconds:
            raise ValueError("RETRY_BACKOFF_BASE_SECONDS must not exceed RETRY_BACKOFF_MAX_SECONDS")
        if self.breaker_cool_down_seconds > self.breaker_max_cool_down_seconds:
            raise ValueError(
                "BREAKER_COOL_DOWN_SECONDS must not exceed BREAKER_MAX_COOL_DOWN_SECONDS"
            )
        if self.ops_webhook_url is not None and self.ops_webhook_secret is None:
            raise ValueError(
                "OPS_WEBHOOK_SECRET: not set; OPS_WEBHOOK_URL needs it to sign its deliveries "
                "(whsec_ followed by base64)"
            )
        if self.ops_webhook_backoff_base_seconds > self.ops_webhook_backoff_max_seconds:
            raise ValueError(
                "OPS_WEBHOOK_BACKOFF_BASE_SECONDS must not exceed OPS_WEBHOOK_BACKOFF_MAX_SECONDS"
            )
        return self

    @property
    def attempt_deadline_seconds(self) -> float:
        """The longest one call to Recur may take, connect to last byte."""
        if self.recur_attempt_deadline_seconds is not None:
            return self.recur_attempt_deadline_seconds
        return self.recur_connect_timeout_seconds + self.recur_read_timeout_seconds

    @property
    def min_replicas(self) -> int:
        """Replica acknowledgements a write needs before intake answers 202 (or an operator
        action reports success): REDIS_MIN_REPLICAS, where `auto` is 1 behind Sentinel (a
        failover promotes a replica, so only what a replica holds survives it) and 0 for one
        Redis (nothing to wait for; AOF keeps the writes)."""
        if self.redis_min_replicas == "auto":
            return 1 if self.redis_url.startswith("sentinel://") else 0
        return self.redis_min_replicas

    @property
    def fence_hold(self) -> float:
        """Seconds a PATCH that ended ambiguously may still land: `FENCE_HOLD_SECONDS`, or twice
        the attempt deadline (the longest our side of a request lasts) when unset."""
        if self.fence_hold_seconds is not None:
            return self.fence_hold_seconds
        return 2 * self.attempt_deadline_seconds

    @property
    def test_mode(self) -> bool:
        """True for an `sk_test_` key: the sync talks to Recur's test environment."""
        key = self.recur_secret_key
        return key is not None and key.get_secret_value().startswith("sk_test_")

    @property
    def mode_label(self) -> str:
        """`test`, `live` or `unset`, for logs and `status`."""
        if self.recur_secret_key is None:
            return "unset"
        return "test" if self.test_mode else "live"

    def require_secret_key(self) -> str:
        """The Recur secret key, or `ConfigError` when it is not set."""
        if self.recur_secret_key is None:
            raise ConfigError(
                "RECUR_SECRET_KEY: not set; it must be a Recur secret key "
                "(sk_test_... or sk_live_...)"
            )
        return self.recur_secret_key.get_secret_value()

    def require_webhook_secret(self) -> str:
        """The Standard Webhooks secret, or `ConfigError` when it is not set."""
        if self.webhook_secret is None:
            raise ConfigError("WEBHOOK_SECRET: not set; it must be whsec_ followed by base64")
        return self.webhook_secret.get_secret_value()


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    location = [str(part) for part in first["loc"]]
    message = str(first["msg"]).removeprefix("Value error, ")
    if not location:
        return message
    variable = "_".join(location).upper()
    return f"{variable}: {message}"


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; raise `ConfigError` with one line if one is bad."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None
