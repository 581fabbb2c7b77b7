"""The dev stack's `WEBHOOK_SECRET` and `ADMIN_TOKEN`: from the settings when set, else generated
once and kept in the state directory (`.dev/secrets.json`, mode 0600), so a restart of
`sync-worker dev` keeps the secret a merchant's test setup already signs with.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sync_worker.intake.signatures import SECRET_PREFIX

SECRETS_FILE = "secrets.json"


class StateError(Exception):
    """The state directory holds something unusable; `str()` says what and how to fix it."""


@dataclass(frozen=True)
class DevSecrets:
    """The secrets the dev stack runs with, and which of them were generated just now."""

    webhook_secret: str
    admin_token: str
    generated: tuple[str, ...] = ()


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_admin_token() -> str:
    """A bearer token for the operator API."""
    return secrets.token_urlsafe(32)


def kept_secrets(state_dir: Path) -> dict[str, str]:
    """What an earlier run kept in `state_dir` (empty when nothing was kept)."""
    path = state_dir / SECRETS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise StateError(f"cannot read {path}: {error}; delete it to generate new ones") from None
    if not isinstance(data, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in data.items()
    ):
        raise StateError(f"{path} is not a JSON object of strings; delete it to generate new ones")
    return data


def resolve_secrets(
    state_dir: Path, *, webhook_secret: str | None, admin_token: str | None
) -> DevSecrets:
    """The given values win; else those kept in `state_dir`; else new ones, kept for next time."""
    kept = kept_secrets(state_dir)
    generated: list[str] = []
    if webhook_secret is None and "WEBHOOK_SECRET" not in kept:
        kept["WEBHOOK_SECRET"] = new_webhook_secret()
        generated.append("WEBHOOK_SECRET")
    if admin_token is None and "ADMIN_TOKEN" not in kept:
        kept["ADMIN_TOKEN"] = new_admin_token()
        generated.append("ADMIN_TOKEN")
    if generated:
        _write_private(state_dir / SECRETS_FILE, json.dumps(kept, indent=2) + "\n")
    return DevSecrets(
        webhook_secret=webhook_secret or kept["WEBHOOK_SECRET"],
        admin_token=admin_token or kept["ADMIN_TOKEN"],
        generated=tuple(generated),
    )


def _write_private(path: Path, text: str) -> None:
    # Created 0600 from the start (no window where another user can read it), and renamed into
    # place so an interrupted write never leaves half a file that the next start cannot parse.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)
