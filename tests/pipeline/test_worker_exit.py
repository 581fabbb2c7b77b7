"""A worker that Celery gives up on exits non-zero at once, so a supervisor restarts it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

# The real `sync-worker worker` command, with one extra bootstep that fails the way the
# Redis-crash bug does (kombu's AttributeError on a closed transport) while the worker starts.
CRASHING_WORKER = """
from celery import bootsteps

from sync_worker.celery_app import app
from sync_worker.cli import app as cli


class Crash(bootsteps.StartStopStep):
    requires = ("celery.worker.components:Pool",)

    def start(self, worker):
        raise AttributeError("'NoneType' object has no attribute 'hostname'")


app.steps["worker"].add(Crash)
cli(["worker", "--hostname", "crash@%h"])
"""


def test_an_unrecoverable_error_exits_non_zero(stack_env: dict[str, str]) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_WORKER],
        env={**os.environ, **stack_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "Unrecoverable error" in output, output
    assert done.returncode == 1, output
    assert time.monotonic() - started < 30, "the worker lingered after giving up"
