"""No secret in any log line: a scan of every log file the stack's processes wrote.

The secrets are those the test stack runs with (the Recur key, the webhook secret in both
forms, the admin token) and any extra value a test sent in an `Authorization` header. Each file
is read from where the last scan stopped, so scanning after every test stays cheap.
"""

from __future__ import annotations

import base64
from pathlib import Path

from sync_worker.intake.signatures import SECRET_PREFIX
from sync_worker.sandbox import DEFAULT_SECRET_KEY
from tests.fixtures.stack import ADMIN_TOKEN, SPAWNED_LOGS, WEBHOOK_SECRET

OVERLAP = 256  # bytes read again before the last offset, so a secret split by a scan is seen

SECRETS: dict[str, str] = {
    "RECUR_SECRET_KEY": DEFAULT_SECRET_KEY,
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    "WEBHOOK_SECRET key (base64)": WEBHOOK_SECRET.removeprefix(SECRET_PREFIX),
    "WEBHOOK_SECRET key (raw)": base64.b64decode(
        WEBHOOK_SECRET.removeprefix(SECRET_PREFIX)
    ).decode(),
    "ADMIN_TOKEN": ADMIN_TOKEN,
}
"""Name -> value of everything that must never be logged."""


def remember_secret(name: str, value: str) -> None:
    """Add a value a test sent as a credential (e.g. a forged bearer token) to the scan."""
    SECRETS[name] = value


_scanned: dict[Path, int] = {}


def leaked_secrets() -> list[str]:
    """`file: secret name` for every secret found in log text not scanned before."""
    found: list[str] = []
    for path in dict.fromkeys(SPAWNED_LOGS):
        if not path.exists():
            continue
        start = max(0, _scanned.get(path, 0) - OVERLAP)
        with path.open("rb") as log_file:
            log_file.seek(start)
            chunk = log_file.read()
        _scanned[path] = start + len(chunk)
        text = chunk.decode(errors="replace")
        found += [f"{path.name}: {name}" for name, value in SECRETS.items() if value in text]
    return found
