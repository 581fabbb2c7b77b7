"""The sync benchmark's event-loop row measures what it says: each user PATCHed once, answered
200, and a refusal stops the run rather than count as a PATCH sent."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.sync_throughput import WARM, ceiling, seed
from tests.fixtures.sandbox import SandboxHandle


def test_the_event_loop_client_patches_every_user_once_and_is_answered(
    sandbox: SandboxHandle,
) -> None:
    seed(sandbox.url, 40, 0)
    assert ceiling(sandbox.url, 40, 4) > 0

    patched = Counter(
        (entry["external_id"], entry["status"])
        for entry in sandbox.control.requests(method="PATCH")
    )
    expected = [f"warm_{i}" for i in range(1, WARM + 1)] + [f"user_{i}" for i in range(1, 41)]
    assert patched == Counter({(user, 200): 1 for user in expected})
    customer = sandbox.control.customer_by_external_id("user_17")
    assert customer is not None
    assert customer["name"] == "user_17 ceiling"


def test_a_refused_patch_ends_the_run_with_its_status(sandbox: SandboxHandle) -> None:
    seed(sandbox.url, 5, 0)
    with pytest.raises(SystemExit, match="user_6 got 404"):
        ceiling(sandbox.url, 6, 2)
