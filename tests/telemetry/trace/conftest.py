"""Fixtures of the trace and history tests: the operator tests' runtime and web app, with a
scheduled retry that comes due in a fraction of a second (a 503-then-200 sync in one test)."""

from __future__ import annotations

import pytest

from tests.operators.conftest import operator_env, runtime, web

__all__ = ["operator_env", "quick_retries", "runtime", "web"]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short retry backoff (autouse: set before `runtime` reads the settings)."""
    monkeypatch.setenv("RETRY_BACKOFF_BASE_SECONDS", "0.05")
    monkeypatch.setenv("RETRY_BACKOFF_MAX_SECONDS", "0.1")
