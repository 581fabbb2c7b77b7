"""Run child processes in one terminal: prefixed, coloured output, and no orphans.

Each child runs in its own session, so the terminal's Ctrl-C reaches only the supervisor, which
then stops the children in order (apps first, Redis last) instead of all at once. On Linux each
child also asks the kernel, before it execs its program, for SIGTERM when the supervisor dies
(`PR_SET_PDEATHSIG`), so a `kill -9` of the supervisor leaves nothing behind either.

Children are started from the main thread: the parent-death signal fires when the *thread* that
forked the child exits, not only when the process does. The same goes for `respawn`, which starts
a child that exited again with the same command (the dev stack does it for the worker).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TextIO

# ANSI colours given to children in start order; the supervisor's own lines are bold.
_COLOURS = ("36", "33", "32", "35", "34", "96", "93")
_PREFIX_WIDTH = 7

# Runs in the child between fork and the real program: ask for SIGTERM when the parent dies
# (1 is PR_SET_PDEATHSIG), then check the parent did not die before that, or the signal would
# never come. exec keeps the pid, so the supervisor's pid is the program's pid.
_LAUNCHER = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def describe_exit(returncode: int) -> str:
    """`code 3`, or `signal SIGKILL` for a child killed by a signal."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"code {returncode}"


@dataclass
class Child:
    """One child process, the thread that copies its output, and its readiness."""

    name: str
    tier: int
    process: subprocess.Popen[bytes]
    ready_marker: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None
    argv: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    colour: str = "0"
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        """The pid of the program (the launcher execs it, keeping its pid)."""
        return self.process.pid

    def alive(self) -> bool:
        """Not exited yet."""
        return self.process.poll() is None


class Supervisor:
    """Starts children, prints their output line by line with a prefix, and stops them."""

    def __init__(self, output: TextIO, *, colour: bool) -> None:
        """Write everything to `output`; use ANSI colours when `colour`."""
        self.children: list[Child] = []
        self._output = output
        self._colour = colour
        self._lock = threading.Lock()
        self._hurry = threading.Event()

    def say(self, text: str) -> None:
        """Print the supervisor's own lines, prefixed `dev` in bold."""
        for line in text.splitlines() or [""]:
            self._write("dev", "1", line)

    def _write(self, name: str, code: str, line: str) -> None:
        label = f"{name:<{_PREFIX_WIDTH}}|"
        prefix = f"\x1b[{code}m{label}\x1b[0m" if self._colour else label
        with self._lock:
            try:
                self._output.write(f"{prefix} {line}\n")
                self._output.flush()
            except (OSError, ValueError):
                # The terminal went away (closed pipe or stream): the children still need
                # their output drained, so drop the line rather than stop reading.
                pass

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        tier: int,
        ready_marker: str | None = None,
    ) -> Child:
        """Start `argv` (argv[0] a path) in a new session; `ready_marker` in a line sets `ready`.

        Children of a higher `tier` are stopped before those of a lower one.
        """
        colour = _COLOURS[len(self.children) % len(_COLOURS)]
        child = self._launch(name, argv, env=env, tier=tier, ready_marker=ready_marker)
        child.colour = colour
        self.children.append(child)
        self._read(child)
        return child

    def respawn(self, old: Child) -> Child:
        """Start an exited child again with the same command, environment, tier and colour;
        it takes the old one's place in `children`."""
        child = self._launch(
            old.name, old.argv, env=old.env, tier=old.tier, ready_marker=old.ready_marker
        )
        child.colour = old.colour
        self.children[self.children.index(old)] = child
        if old.reader is not None:
            old.reader.join(timeout=2)  # its last lines first
        self._read(child)
        return child

    def _launch(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        tier: int,
        ready_marker: str | None,
    ) -> Child:
        process = subprocess.Popen(  # noqa: S603 - argv is built by the dev stack, not user input
            _wrap(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return Child(
            name=name,
            tier=tier,
            process=process,
            ready_marker=ready_marker,
            argv=list(argv),
            env=dict(env),
        )

    def _read(self, child: Child) -> None:
        stream = child.process.stdout
        assert stream is not None  # noqa: S101 - set by stdout=PIPE
        child.reader = threading.Thread(
            target=self._pump,
            args=(child, child.colour, stream),
            name=f"dev-{child.name}",
            daemon=True,
        )
        child.reader.start()

    def _pump(self, child: Child, code: str, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self._write(child.name, code, line)
                if child.ready_marker is not None and child.ready_marker in line:
                    child.ready.set()

    def first_exited(self) -> Child | None:
        """A child that has exited, if any."""
        for child in self.children:
            if not child.alive():
                return child
        return None

    def hurry(self) -> None:
        """Kill instead of waiting for a graceful stop (a second Ctrl-C)."""
        self._hurry.set()

    def stop_all(self, *, timeout: float = 15.0) -> None:
        """Stop every child, highest tier first; SIGKILL what has not exited within `timeout`."""
        for tier in sorted({child.tier for child in self.children}, reverse=True):
            self._stop([child for child in self.children if child.tier == tier], timeout)
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=2)

    def _stop(self, children: list[Child], timeout: float) -> None:
        for child in children:
            if child.alive():
                _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(child.alive() for child in children):
            if self._hurry.is_set() or time.monotonic() > deadline:
                for child in children:
                    if child.alive():
                        self.say(f"{child.name} did not stop in time: killing it")
                        _signal_group(child, signal.SIGKILL)
                for child in children:
                    child.process.wait(timeout=10)
                break
            time.sleep(0.05)


def _signal_group(child: Child, signum: signal.Signals) -> None:
    # The child leads its own process group (new session), so this also reaches anything it
    # spawned. It has not been reaped (poll() said alive), so its pid cannot have been reused.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signum)


def _wrap(argv: Sequence[str]) -> list[str]:
    if sys.platform.startswith("linux"):
        return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]
    # Elsewhere there is no parent-death signal: the children are stopped on every exit path of
    # the supervisor except a kill -9 of it.
    return list(argv)
