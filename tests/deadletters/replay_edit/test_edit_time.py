"""An operator's edit wins over what is already stored, even an event stamped ahead of our clock
(intake accepts up to the signature tolerance ahead)."""

from __future__ import annotations

import time

from sync_worker.deadletters.replay_edit import FieldEdits, build_edit
from sync_worker.runtime import Runtime
from tests.fixtures.sandbox import SandboxHandle
from tests.operators.conftest import accept, sync_due


def test_an_edit_wins_over_an_applied_event_stamped_minutes_ahead(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    user = "user_ahead"
    sandbox.control.create_customer(f"{user}@x.tw", name="old", external_id=user)
    ahead_ms = int((time.time() + 240) * 1000)  # within the 300 s tolerance: intake takes it
    accept(runtime, user, ts_ms=ahead_ms, name="from a fast clock")
    [first] = sync_due(runtime)
    assert first.result == "applied", first
    sandbox.control.set_faults(scripts={user: [422]})
    accept(runtime, user, metadata={"plan": "refused"})
    [refused] = sync_due(runtime)
    assert refused.result == "dead_letter", refused

    edit = build_edit(
        FieldEdits({"name": "fixed by an operator"}),
        actor={"by": "test", "via": "api"},
        ledger=runtime.ledger,
    )
    result = runtime.dlq.replay(refused.dead_letter_id, edit=edit)
    assert result.outcome == "replayed", result
    entry = runtime.dlq.get(refused.dead_letter_id)
    assert entry is not None
    assert entry.fields["name"]["ts_ms"] > ahead_ms

    [outcome] = sync_due(runtime)
    assert outcome.result == "applied", outcome
    customer = sandbox.control.customer_by_external_id(user)
    assert customer is not None
    assert customer["name"] == "fixed by an operator"
    assert customer["metadata"] == {"plan": "refused"}
