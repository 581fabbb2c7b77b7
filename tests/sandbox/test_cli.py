"""`sync-worker sandbox`: its options reach the app it serves."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import typer
from typer.testing import CliRunner

from sync_worker.cli import app as cli_app
from sync_worker.cli.sandbox import sandbox
from sync_worker.sandbox import DEFAULT_SECRET_KEY, SandboxControl
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
        "--rate-limit-rps", "--checkout-customers", "--echo-metadata", "SANDBOX_PORT",
        "SANDBOX_SECRET_KEY", "SANDBOX_ECHO_METADATA",
    ]:  # fmt: skip
        assert option in result.output


@contextlib.contextmanager
def serving(*args: str, env: dict[str, str]) -> Iterator[str]:
    """`sync-worker sandbox ARGS` with `env` added, on a free port; yields its base URL."""
    port = free_port()
    # typer.run() serves the command alone, whatever else the CLI registers.
    script = "import typer; from sync_worker.cli.sandbox import sandbox; typer.run(sandbox)"
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env={**os.environ, "SANDBOX_PORT": str(port), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/_sandbox/health")
                break
            except httpx.TransportError:
                assert process.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_options_and_environment_configure_the_server() -> None:
    env = {"SANDBOX_SECRET_KEY": "sk_live_cli"}
    with serving(
        "--customers", "4", "--checkout-customers", "2", "--error-rate", "0", env=env
    ) as url:
        health = httpx.get(url + "/_sandbox/health").json()
        assert health == {"status": "ok", "customers": 6, "requests_logged": 0, "livemode": True}
        headers = {"Authorization": "Bearer sk_live_cli"}
        assert httpx.get(url + "/v1/customers/external/user_4", headers=headers).status_code == 200
        # Checkout customers: no external id, found by their email only; no metadata answered.
        listed = httpx.get(
            url + "/v1/customers", params={"email": "checkout_2@example.com"}, headers=headers
        ).json()["data"]
        assert [(c["external_id"], "metadata" in c) for c in listed] == [(None, False)]


def test_echo_metadata_from_the_environment_returns_it() -> None:
    with serving(env={"SANDBOX_ECHO_METADATA": "true"}) as url:
        with SandboxControl(url) as control:
            control.create_customer("a@x.tw", external_id="u1", metadata={"plan": "pro"})
        headers = {"Authorization": f"Bearer {DEFAULT_SECRET_KEY}"}
        got = httpx.get(url + "/v1/customers/external/u1", headers=headers).json()
        assert got["metadata"] == {"plan": "pro"}
