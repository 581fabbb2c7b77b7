"""`sync-worker sandbox`: its options reach the app it serves."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import typer
from typer.testing import CliRunner

from sync_worker.cli import app as cli_app
from sync_worker.cli.sandbox import sandbox
from tests.fixtures.redis_server import free_port


def test_sandbox_is_registered_on_the_cli() -> None:
    names = [command.name for command in cli_app.registered_commands]
    assert "sandbox" in names


def test_help_lists_every_option() -> None:
    single = typer.Typer()
    single.command()(sandbox)
    result = CliRunner().invoke(single, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in [
        "--host", "--port", "--customers", "--secret-key", "--error-rate", "--latency-ms",
        "--rate-limit-rps", "SANDBOX_PORT", "SANDBOX_SECRET_KEY",
    ]:  # fmt: skip
        assert option in result.output


def test_options_and_environment_configure_the_server() -> None:
    port = free_port()
    # typer.run() serves the command alone, whatever else the CLI registers.
    script = "import typer; from sync_worker.cli.sandbox import sandbox; typer.run(sandbox)"
    env = {**os.environ, "SANDBOX_PORT": str(port), "SANDBOX_SECRET_KEY": "sk_live_cli"}
    process = subprocess.Popen(
        [sys.executable, "-c", script, "--customers", "4", "--error-rate", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(url + "/_sandbox/health").json()
                break
            except httpx.TransportError:
                assert process.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert health == {"status": "ok", "customers": 4, "requests_logged": 0, "livemode": True}
        headers = {"Authorization": "Bearer sk_live_cli"}
        assert httpx.get(url + "/v1/customers/external/user_4", headers=headers).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
