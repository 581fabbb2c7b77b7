"""`sync-worker reconcile` and `sync-worker ledger import`, through the real command."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import structlog
from typer.testing import CliRunner

from sync_worker import redis_keys as keys
from sync_worker.cli import app
from sync_worker.pipeline.ledger import Ledger
from tests.fixtures.sandbox import SandboxHandle
from tests.reconcile.conftest import seed_both, seed_ledger


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The command configures logging onto the runner's stream; undo it for the next test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


@pytest.fixture
def env(redis_url: str, sandbox: SandboxHandle) -> dict[str, str]:
    """The environment the command reads its settings from."""
    return {
        "REDIS_URL": redis_url,
        "RECUR_API_URL": sandbox.url,
        "RECUR_SECRET_KEY": sandbox.secret_key,
        "RATE_LIMIT_PER_SECOND": "10000",
        "RATE_LIMIT_BURST": "10000",
        "LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def ledger(redis_url: str) -> Ledger:
    """The ledger on the test Redis."""
    return Ledger(redis.Redis.from_url(redis_url))


def test_reconcile_prints_a_summary_and_exits_0(
    env: dict[str, str], sandbox: SandboxHandle, ledger: Ledger, redis_client: redis.Redis
) -> None:
    seed_both(sandbox, ledger, 120)
    seed_ledger(ledger, {"user_3": {"name": "repaired"}}, ts_ms=2_000_000_000_000)

    result = CliRunner().invoke(app, ["reconcile"], env=env)

    assert result.exit_code == 0, result.output
    assert "customers scanned" in result.stdout
    assert "finished" in result.stdout
    assert "1 drifted, 1 enqueued" in result.stdout
    assert redis_client.zrange(keys.DUE, 0, -1) == ["user_3"]


def on_a_terminal(argv: list[str], env: dict[str, str], *, timeout: float = 60) -> str:
    """Run `argv` with a pseudo-terminal for stdin, stdout and stderr; all it wrote."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([leader], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=10)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
    return b"".join(chunks).decode()


def test_on_a_terminal_log_lines_print_above_the_live_counts(
    env: dict[str, str], sandbox: SandboxHandle, ledger: Ledger
) -> None:
    """The counts are a live line on a terminal: a log line is printed above it, never run on
    from it (the line is cleared first)."""
    seed_both(sandbox, ledger, 5)
    output = on_a_terminal(
        [sys.executable, "-m", "sync_worker", "reconcile"],
        {**os.environ, **env, "LOG_LEVEL": "INFO", "COLUMNS": "200"},
    )
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    assert "reconcile_finished" in text
    assert "customers scanned" in text
    for line in re.split(r"[\r\n]", text):
        assert not ("Reconciling" in line and "reconcile_" in line), line


def test_reconcile_says_which_fields_it_compared(
    env: dict[str, str], sandbox: SandboxHandle, ledger: Ledger
) -> None:
    sandbox.control.create_customer("a@x.tw", name="A", external_id="u1", metadata={"k": 1})
    sandbox.control.create_customer("b@x.tw", name="B")  # as Checkout makes them
    seed_ledger(ledger, {"u1": {"name": "A", "metadata": {"k": 2}}})

    result = CliRunner().invoke(app, ["reconcile"], env=env)

    assert result.exit_code == 0, result.output
    assert "fields compared: name; not compared: metadata" in result.stdout
    assert "without an external id (unbound)" in result.stdout
    assert "0 drifted, 0 enqueued" in result.stdout


def test_reconcile_dry_run_as_json(
    env: dict[str, str], sandbox: SandboxHandle, ledger: Ledger, redis_client: redis.Redis
) -> None:
    seed_both(sandbox, ledger, 5)
    seed_ledger(ledger, {"user_3": {"name": "x"}}, ts_ms=2_000_000_000_000)

    result = CliRunner().invoke(app, ["reconcile", "--dry-run", "--json"], env=env)

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["status"], report["drifted"], report["enqueued"]) == ("dry_run", 1, 1)
    assert redis_client.zcard(keys.DUE) == 0
    assert sandbox.control.requests(method="PATCH") == []


def test_reconcile_while_another_runs_prints_its_progress_and_exits_1(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    redis_client.set(keys.RECONCILE_LOCK, "someone-else", ex=60)
    running = {"run_id": "rc_1", "started_at": "2026-11-25T03:00:00", "pages": 7, "scanned": 700}
    redis_client.set(keys.RECONCILE_PROGRESS, json.dumps({**running, "drifted": 2, "enqueued": 2}))

    result = CliRunner().invoke(app, ["reconcile"], env=env)

    assert result.exit_code == 1
    assert "already running" in result.stdout
    assert "page 7, 700 scanned, 2 drifted, 2 enqueued" in result.stdout
    assert redis_client.get(keys.RECONCILE_LOCK) == "someone-else"


def test_reconcile_that_fails_exits_1(env: dict[str, str], sandbox: SandboxHandle) -> None:
    wrong_key = {**env, "RECUR_SECRET_KEY": "sk_test_wrong", "LOG_LEVEL": "ERROR"}
    result = CliRunner().invoke(app, ["reconcile"], env=wrong_key)
    assert result.exit_code == 1
    assert "failed" in result.stdout
    assert "401 unauthorized" in result.stdout


CSV = """user_id,name,email,metadata,plan,region
u1,王大明,a@b.tw,"{""tier"": 2}",pro,tw
u2,Bob,,,,
bad id,Nope,,,,
u3,,,,,
u4,Multi,,,"free
plan",
u5,Ok,,{not json},,
u6,Ok,,,,,extra
u7,"""

CSV_BAD_LINES = {4: "user_id", 5: "at least one of name, metadata", 8: "metadata", 9: "more cells"}


def test_ledger_import_csv(env: dict[str, str], ledger: Ledger, tmp_path: Path) -> None:
    export = tmp_path / "users.csv"
    export.write_text(CSV + "\n" + "u8," + "x" * 256 + "\n", encoding="utf-8")

    result = CliRunner().invoke(app, ["ledger", "import", str(export)], env=env)

    assert result.exit_code == 1, result.output
    assert "3 rows imported, 6 rejected." in result.stdout
    for line, why in {**CSV_BAD_LINES, 10: "at least one", 11: "at most 255"}.items():
        assert f"line {line}: " in result.stdout
        assert why in _line(result.stdout, line)
    first = ledger.get("u1")
    assert first is not None
    assert {k: v.value for k, v in first.fields.items()} == {
        "name": "王大明",
        "email": "a@b.tw",
        "metadata": {"tier": 2, "plan": "pro", "region": "tw"},
    }
    multi = ledger.get("u4")
    assert multi is not None
    assert multi.fields["metadata"].value == {"plan": "free\nplan"}
    assert ledger.get("bad id") is None
    assert ledger.count() == 3


def test_ledger_import_jsonl(env: dict[str, str], ledger: Ledger, tmp_path: Path) -> None:
    rows = [
        json.dumps({"user_id": "u1", "name": "A", "metadata": {"plan": "pro"}}),
        "",
        "{not json",
        json.dumps(["not", "an", "object"]),
        json.dumps({"user_id": "u2", "name": "n" * 256}),
        json.dumps({"user_id": "u3", "email": "c@d.tw", "metadata": {}}),
        json.dumps({"user_id": "ü", "name": "B"}),
    ]
    export = tmp_path / "users.jsonl"
    export.write_text("\n".join(rows) + "\n", encoding="utf-8")

    result = CliRunner().invoke(app, ["ledger", "import", str(export)], env=env)

    assert result.exit_code == 1, result.output
    assert "2 rows imported, 4 rejected." in result.stdout
    assert "not JSON" in _line(result.stdout, 3)
    assert "not a JSON object" in _line(result.stdout, 4)
    assert "name: must be at most 255 characters" in _line(result.stdout, 5)
    assert "user_id" in _line(result.stdout, 7)
    assert ledger.count() == 2
    entry = ledger.get("u3")
    assert entry is not None
    assert entry.fields["email"].value == "c@d.tw"


def test_ledger_import_dry_run_writes_nothing(
    env: dict[str, str], ledger: Ledger, tmp_path: Path
) -> None:
    export = tmp_path / "users.csv"
    export.write_text("user_id,name\nu1,A\nu2,B\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["ledger", "import", "--dry-run", str(export)], env=env)
    assert result.exit_code == 0, result.output
    assert "2 rows valid" in result.stdout
    assert ledger.count() == 0


def test_ledger_import_csv_needs_a_user_id_column(env: dict[str, str], tmp_path: Path) -> None:
    export = tmp_path / "users.csv"
    export.write_text("id,name\nu1,A\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["ledger", "import", str(export)], env=env)
    assert result.exit_code == 2
    assert "user_id" in result.output


def _line(output: str, number: int) -> str:
    prefix = f"line {number}: "
    return next(line for line in output.splitlines() if line.strip().startswith(prefix))
