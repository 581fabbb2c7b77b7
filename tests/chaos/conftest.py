"""Chaos scenarios: the results table at the end of the run, and no secret in any log.

`make chaos` runs every scenario (CHAOS_FULL=1), and CI runs it after `make test`. `make test`
skips those marked `chaos_full`, to stay under five minutes on two cores: the kill -9 and
Redis-restart variants, whose plain cases tests/pipeline/test_faults.py runs there, Redis down
during intake (tests/intake/test_intake.py covers its 503s) and the late-applied PATCHes
(tests/pipeline/test_fencing.py covers the hold and the read-back).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.chaos.harness import RESULTS, table
from tests.hostile.leaks import leaked_secrets

FULL_MARKER = "chaos_full"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{FULL_MARKER}: a chaos scenario only `make chaos` runs (CHAOS_FULL=1)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("CHAOS_FULL") == "1":
        return
    skip = pytest.mark.skip(reason="a long chaos variant: run it with make chaos")
    for item in items:
        if item.get_closest_marker(FULL_MARKER) is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every scenario's row (also when one failed: its row says why)."""
    if not RESULTS:
        return
    terminalreporter.section("chaos: nothing lost, nothing stale")
    for line in table(RESULTS).splitlines():
        terminalreporter.write_line(line)


@pytest.fixture
def stack_env(stack_env: dict[str, str]) -> dict[str, str]:
    """The stack's environment with a short circuit-breaker cool-down: scenarios that inject
    failures open the breaker, and its default (30 s, doubling) would only make them slow.
    Holding sends while it is open is tested in tests/pipeline/breaker."""
    return {
        **stack_env,
        "BREAKER_COOL_DOWN_SECONDS": "1",
        "BREAKER_MAX_COOL_DOWN_SECONDS": "2",
        # Users whose PATCH failed ambiguously are read back once the hold is over; the
        # scenarios wait for that, and the late writes they inject land within the hold.
        "FENCE_VERIFY_DELAY_SECONDS": "1",
    }


@pytest.fixture(autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """After each scenario, no process of the stack has logged a secret."""
    yield
    assert leaked_secrets() == []
