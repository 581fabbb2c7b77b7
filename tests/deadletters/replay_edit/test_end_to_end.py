"""A name Recur refused (422) is edited with the real CLI and lands in Recur, on the real stack."""

from __future__ import annotations

import os
import subprocess
import sys

from sync_worker.pipeline.ledger import Ledger
from tests.fixtures.stack import Stack, user_event, wait_for


def test_a_refused_name_is_edited_replayed_and_applied(stack: Stack) -> None:
    control = stack.sandbox.control
    control.create_customer("a@b.tw", name="old", external_id="user_1")
    control.update_faults(scripts={"user_1": [422]})
    assert stack.post(user_event("evt_1", "user_1", name="Refused")).status_code == 202
    [entry] = wait_for(stack.dead_letters)
    assert (entry["reason"], entry["http_status"]) == ("rejected", "422")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sync_worker", "dlq", *args],
            env={**os.environ, **stack.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    edited = cli("replay", entry["id"], "--set", "name=Accepted")
    assert edited.returncode == 0, edited.stderr
    wait_for(lambda: control.customer_by_external_id("user_1")["name"] == "Accepted")  # type: ignore[index]
    wait_for(lambda: stack.dead_letters() == [])
    [first, replayed] = control.requests(method="PATCH", external_id="user_1")
    assert (first["body"], first["status"]) == ({"name": "Refused"}, 422)
    assert (replayed["body"], replayed["status"]) == ({"name": "Accepted"}, 200)
    applied = Ledger(stack.redis).get("user_1")
    assert applied is not None
    assert applied.fields["name"].value == "Accepted"
