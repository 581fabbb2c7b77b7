"""How `sync-worker dev` stops a child that will not stop (README, Quickstart): each is given
15 s after SIGTERM before it is killed, and a second Ctrl-C kills at once."""

from __future__ import annotations

import inspect
import io
import os
import sys
import threading
import time

from sync_worker.devstack.supervisor import Child, Supervisor

STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('up', flush=True); time.sleep(120)"
)


def stubborn(supervisor: Supervisor) -> Child:
    """A child that ignores SIGTERM, once it has said so."""
    child = supervisor.start(
        "stubborn", [sys.executable, "-c", STUBBORN], env=dict(os.environ), tier=1,
        ready_marker="up",
    )  # fmt: skip
    assert child.ready.wait(20), "the child did not start"
    return child


def test_the_grace_period_is_15_seconds() -> None:
    assert inspect.signature(Supervisor.stop_all).parameters["timeout"].default == 15.0


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    output = io.StringIO()
    supervisor = Supervisor(output, colour=False)
    child = stubborn(supervisor)
    started = time.monotonic()
    supervisor.stop_all(timeout=1.0)
    assert not child.alive()
    assert time.monotonic() - started >= 1.0, "killed before its grace period was over"
    assert "stubborn did not stop in time: killing it" in output.getvalue()


def test_a_second_ctrl_c_kills_at_once() -> None:
    output = io.StringIO()
    supervisor = Supervisor(output, colour=False)
    child = stubborn(supervisor)
    threading.Timer(0.5, supervisor.hurry).start()
    started = time.monotonic()
    supervisor.stop_all(timeout=120.0)
    assert not child.alive()
    assert time.monotonic() - started < 60, "it waited for the grace period"
