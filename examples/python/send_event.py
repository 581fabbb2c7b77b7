"""Send one user change from your app to recur-sync, and retry until it is stored.

    pip install standardwebhooks
    export RECUR_SYNC_URL=https://sync.example.com/webhooks/user-updated
    export WEBHOOK_SECRET=whsec_...          # the same secret recur-sync has
    python send_event.py user_123 --name "王大明" --email a@b.tw
    python send_event.py user_123 --new-user-id member_123     # the user's id changed
    python send_event.py user_123 --unbind                     # detach the Recur customer

In your app, call `user_updated(...)` (or `external_id_changed(...)`) where the change is
committed, keep the event with the change (an outbox row) and hand it to `send_event`: the
event id and timestamp are fixed once, so every retry is the same event and recur-sync stores it
at most once, and orders it by when the change happened, not by when it arrived.

Only the standard library and the `standardwebhooks` package; Python 3.9+.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from typing import Any

from standardwebhooks import Webhook

UTC = timezone.utc  # noqa: UP017 - datetime.UTC is Python 3.11+; this runs on 3.9

RETRYABLE = {408, 429, 500, 502, 503, 504}
"""Answers that mean "not stored, try again": the same event, later."""


class EventRejected(Exception):
    """recur-sync refused the event for good (400, 401, 413, 422): fix it, do not retry."""

    def __init__(self, status: int, answer: dict[str, Any]) -> None:
        super().__init__(f"{status}: {json.dumps(answer, ensure_ascii=False)}")
        self.status = status
        self.answer = answer


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def user_updated(
    user_id: str,
    *,
    name: str | None = None,
    email: str | None = None,
    metadata: dict[str, Any] | None = None,
    changed_at: str | None = None,
) -> dict[str, Any]:
    """A `user.updated` event: only the fields that changed; `changed_at` from your database."""
    data: dict[str, Any] = {"user_id": user_id}
    for field, value in (("name", name), ("email", email), ("metadata", metadata)):
        if value is not None:
            data[field] = value
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": "user.updated",
        "timestamp": changed_at or _now(),
        "data": data,
    }


def external_id_changed(
    user_id: str, new_user_id: str | None, *, changed_at: str | None = None
) -> dict[str, Any]:
    """A `user.external_id_changed` event; `new_user_id=None` unbinds the Recur customer."""
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": "user.external_id_changed",
        "timestamp": changed_at or _now(),
        "data": {"user_id": user_id, "new_user_id": new_user_id},
    }


def _post(url: str, webhook: Webhook, event_id: str, body: str) -> tuple[int, Any, str | None]:
    """One signed delivery: (status, answer, Retry-After)."""
    sent_at = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": webhook.sign(event_id, sent_at, body),
    }
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null"), None
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = raw.decode(errors="replace")
        return error.code, answer, error.headers.get("Retry-After")


def send_event(
    url: str,
    secret: str,
    event: dict[str, Any],
    *,
    attempts: int = 8,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
) -> dict[str, Any]:
    """Deliver `event` until recur-sync has stored it; return its answer (202 or 200 duplicate).

    Every attempt carries the same event id (a fresh signature, as the signed time must be
    recent), so a retry after a lost answer is answered `duplicate`, never stored twice.
    """
    webhook = Webhook(secret)
    body = json.dumps(event, ensure_ascii=False)
    for attempt in range(1, attempts + 1):
        try:
            status, answer, retry_after = _post(url, webhook, event["id"], body)
        except OSError as error:  # connection refused, reset, timed out
            status, answer, retry_after = 0, str(error), None
        if status in (200, 202):
            return dict(answer)
        if status and status not in RETRYABLE:
            raise EventRejected(status, answer)
        if attempt == attempts:
            break
        delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        print(
            f"attempt {attempt}: {status or 'no answer'} {answer}; retrying {event['id']} "
            f"in {delay:.1f} s",
            file=sys.stderr,
        )
        time.sleep(delay)
    raise TimeoutError(f"{event['id']} not stored after {attempts} attempts; send it again later")


def main() -> None:
    """The command line of this example."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("user_id")
    parser.add_argument("--name")
    parser.add_argument("--email")
    parser.add_argument("--metadata", type=json.loads, help="a JSON object")
    parser.add_argument("--new-user-id", help="send user.external_id_changed to this id")
    parser.add_argument("--unbind", action="store_true", help="user.external_id_changed to null")
    parser.add_argument("--changed-at", help="when the change happened (ISO 8601, with a zone)")
    parser.add_argument("--attempts", type=int, default=8)
    args = parser.parse_args()
    if args.new_user_id or args.unbind:
        event = external_id_changed(args.user_id, args.new_user_id, changed_at=args.changed_at)
    else:
        event = user_updated(
            args.user_id,
            name=args.name,
            email=args.email,
            metadata=args.metadata,
            changed_at=args.changed_at,
        )
    url = os.environ["RECUR_SYNC_URL"]
    try:
        answer = send_event(url, os.environ["WEBHOOK_SECRET"], event, attempts=args.attempts)
    except EventRejected as error:
        sys.exit(f"rejected {event['id']}: {error}")
    except TimeoutError as error:
        sys.exit(str(error))
    print(json.dumps(answer, ensure_ascii=False))


if __name__ == "__main__":
    main()
