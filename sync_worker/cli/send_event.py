"""`sync-worker send-test-event`: post a correctly signed event and show exactly what was sent.

A merchant wiring their app uses it to see a 202 before writing any code, to try their own
payload (`--body`), and, when their signer gets a 401, to compare its headers with ours for the
same id, timestamp and body. The secret is used to sign and never printed.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer

from sync_worker.cli.dev import StateDir
from sync_worker.devstack.credentials import SECRETS_FILE, StateError, kept_secrets
from sync_worker.devstack.stack import DEFAULT_STATE_DIR, INTAKE_PATH, local_url
from sync_worker.intake.events import EXTERNAL_ID_CHANGED, USER_UPDATED
from sync_worker.intake.signatures import sign
from sync_worker.settings import ConfigError, load_settings


class EventType(StrEnum):
    """The event types the intake accepts."""

    USER_UPDATED = USER_UPDATED
    EXTERNAL_ID_CHANGED = EXTERNAL_ID_CHANGED


def _refuse(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _read_body(source: str) -> bytes:
    """The bytes of `--body` (a file, or `-` for stdin), refused unless they are JSON."""
    if source == "-":
        raw = sys.stdin.buffer.read()
        where = "stdin"
    else:
        path = Path(source)
        try:
            raw = path.read_bytes()
        except OSError as error:
            _refuse(f"--body {source}: cannot read it ({error.strerror or error})")
        where = source
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        _refuse(f"--body {where}: not JSON ({error})")
    return raw


def _own_id(body: bytes) -> str | None:
    """The `id` of an envelope, which is also its webhook-id."""
    payload = json.loads(body)
    own = payload.get("id") if isinstance(payload, dict) else None
    return own if isinstance(own, str) else None


def _new_event_id() -> str:
    return f"evt_test_{uuid.uuid4().hex[:16]}"


def _event_time(timestamp: str | None) -> str:
    """The envelope's `timestamp`: `--timestamp` (ISO 8601 with a zone) or now, in UTC."""
    if timestamp is None:
        moment = datetime.now(tz=UTC)
    else:
        try:
            moment = datetime.fromisoformat(timestamp)
        except ValueError:
            _refuse(f"--timestamp {timestamp!r}: not an ISO 8601 time, e.g. 2026-11-24T10:00:00Z")
        if moment.tzinfo is None:
            _refuse(f"--timestamp {timestamp!r}: give a time zone, e.g. 2026-11-24T10:00:00Z")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _envelope(
    event_id: str,
    event_type: EventType,
    *,
    user: str,
    name: str | None,
    new_user: str | None,
    unbind: bool,
    timestamp: str | None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"user_id": user}
    if event_type is EventType.EXTERNAL_ID_CHANGED:
        if name is not None:
            _refuse("--name: a user.external_id_changed event carries no name")
        if (new_user is None) == (not unbind):
            _refuse("--type user.external_id_changed needs --new-user ID or --unbind (not both)")
        data["new_user_id"] = None if unbind else new_user
    else:
        if new_user is not None or unbind:
            _refuse("--new-user and --unbind need --type user.external_id_changed")
        when = datetime.now(tz=UTC)
        data["name"] = name or f"Test user {when:%H:%M:%S}"
    moment = _event_time(timestamp)
    return {"id": event_id, "type": str(event_type), "timestamp": moment, "data": data}


def send_test_event(
    user: Annotated[
        str | None,
        typer.Option(help="The user id: the Recur customer's external_id. [default: user_1]"),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="The new name (default: a name with the current time).")
    ] = None,
    event_type: Annotated[
        EventType | None,
        typer.Option("--type", help="The event type. [default: user.updated]"),
    ] = None,
    new_user: Annotated[
        str | None,
        typer.Option(help="With --type user.external_id_changed: the user's new id."),
    ] = None,
    unbind: Annotated[
        bool,
        typer.Option(
            "--unbind", help="With --type user.external_id_changed: send new_user_id null."
        ),
    ] = False,
    timestamp: Annotated[
        str | None,
        typer.Option(
            help="When the change happened (the envelope's timestamp, ISO 8601 with a zone). "
            "[default: now]"
        ),
    ] = None,
    body_file: Annotated[
        str | None,
        typer.Option(
            "--body",
            metavar="FILE",
            help="Send this JSON file byte for byte instead (`-` reads stdin); the event id is "
            "its `id` when it has one.",
        ),
    ] = None,
    event_id: Annotated[
        str | None,
        typer.Option("--id", help="The event id, also the webhook-id header (default: a new one)."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="The intake URL (default: this machine's WEB_PORT)."),
    ] = None,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Post a correctly signed event to the intake; print the headers sent and the answer.

    Signs with WEBHOOK_SECRET, or with the one `sync-worker dev` generated in the state dir.
    Compare the printed headers with your own signer's for the same id, timestamp and body.
    """
    settings = load_settings()
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
        signed_with = "WEBHOOK_SECRET (from the environment or .env)"
    else:
        secret = _kept_webhook_secret(state_dir)
        signed_with = f"the WEBHOOK_SECRET kept in {state_dir / SECRETS_FILE}"
    target = url or local_url(settings.web_host, settings.web_port) + INTAKE_PATH
    if body_file is not None:
        given = {
            "--user": user,
            "--name": name,
            "--type": event_type,
            "--new-user": new_user,
            "--timestamp": timestamp,
            "--unbind": unbind or None,
        }
        clashing = [option for option, value in given.items() if value is not None]
        if clashing:
            _refuse(f"--body is sent exactly as it is; {', '.join(clashing)} cannot change it")
        body = _read_body(body_file)
        msg_id = event_id or _own_id(body) or _new_event_id()
    else:
        msg_id = event_id or _new_event_id()
        envelope = _envelope(
            msg_id,
            event_type or EventType.USER_UPDATED,
            user=user or "user_1",
            name=name,
            new_user=new_user,
            unbind=unbind,
            timestamp=timestamp,
        )
        body = json.dumps(envelope, ensure_ascii=False).encode()
    sent_at = int(datetime.now(tz=UTC).timestamp())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(sent_at),
        "webhook-signature": sign(secret, msg_id=msg_id, timestamp=sent_at, body=body),
    }
    for header, value in headers.items():
        typer.echo(f"> {header}: {value}")
    if body_file is None:
        typer.echo(f"> {body.decode()}")
    try:
        response = httpx.post(target, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as error:
        typer.secho(
            f"error: POST {target} failed: {error} (is `sync-worker web` running there? "
            "--url or WEB_PORT say where)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1) from None
    typer.echo(f"POST {target} -> {response.status_code}")
    typer.echo(response.text)
    if response.status_code == 401 and _error_code(response) == "bad_signature":
        typer.secho(
            f"error: signed with {signed_with}, which is not the secret this intake verifies "
            "with: give both the same WEBHOOK_SECRET",
            fg=typer.colors.RED,
            err=True,
        )
    if response.is_error:
        raise typer.Exit(1)
    if response.status_code == 202:
        typer.echo(
            f"The worker PATCHes customer {response.json().get('user_id')} in Recur once the "
            f"debounce window ({settings.debounce_window_seconds:g} s) has passed."
        )


def _error_code(response: httpx.Response) -> str | None:
    """The `error.code` of an intake refusal, or None when the answer is not one."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


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
