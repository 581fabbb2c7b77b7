"""Chaos scenarios: the results table at the end of the run, and no secret in any log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.harness import RESULTS, table
from tests.hostile.leaks import leaked_secrets


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
    Holding sends while it is open is tested in tests/breaker."""
    return {
        **stack_env,
        "BREAKER_COOL_DOWN_SECONDS": "1",
        "BREAKER_MAX_COOL_DOWN_SECONDS": "2",
    }


@pytest.fixture(autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """After each scenario, no process of the stack has logged a secret."""
    yield
    assert leaked_secrets() == []
