"""The failover runs' figures, printed at the end of the session (`make chaos`)."""

from __future__ import annotations

import pytest

from tests.ha.load import SUMMARIES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SUMMARIES:
        return
    terminalreporter.section("Redis failover under load")
    for line in SUMMARIES:
        terminalreporter.write_line(line)
