"""Fixtures of the trace and history tests: the operator tests' runtime and web app, with a
scheduled retry that comes due in a fraction of a second (a 503-then-200 sync in one test), and
so does a change a pause handed back (a pause, then a resume, in another)."""

from __future__ import annotations

import pytest

from tests.operators.conftest import operator_env, runtime, web

__all__ = ["operator_env", "quick_retries", "runtime", "web"]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short retry backoff (autouse: set before `runtime` reads the settings)."""
    monkeypatch.setenv("RETRY_BACKOFF_BASE_SECONDS", "0.05")
    monkeypatch.setenv("RETRY_BACKOFF_MAX_SECONDS", "0.1")
    # A paused sync hands its claims back for the probe interval (30 s by default), which the
    # resumed sync would otherwise wait out.
    monkeypatch.setenv("AUTH_PROBE_INTERVAL_SECONDS", "0.2")
