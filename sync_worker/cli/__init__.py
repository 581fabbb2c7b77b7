"""The `sync-worker` command: thin over the library.

Each sub-command lives in a module of this package named for what it does, and is registered
here. A `ConfigError` from any of them is printed as one line and exits with status 2.
"""

from __future__ import annotations

import sys

import typer

from sync_worker.cli import dlq, ledger
from sync_worker.cli.dev import dev
from sync_worker.cli.reconcile import reconcile
from sync_worker.cli.sandbox import sandbox
from sync_worker.cli.send_event import send_test_event
from sync_worker.cli.services import beat, web, worker
from sync_worker.cli.status import resume, status
from sync_worker.cli.trace import trace
from sync_worker.settings import ConfigError

app = typer.Typer(
    rich_markup_mode="markdown",
    name="sync-worker",
    help="Sync merchant user updates to the Recur billing API, reliably.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("sandbox")(sandbox)
app.command("web")(web)
app.command("worker")(worker)
app.command("beat")(beat)
app.command("dev")(dev)
app.command("send-test-event")(send_test_event)
app.add_typer(dlq.app, name="dlq")
app.command("status")(status)
app.command("resume")(resume)
app.command("reconcile")(reconcile)
app.command("trace")(trace)
app.add_typer(ledger.app, name="ledger")


def main() -> None:
    """Entry point of the console script."""
    try:
        app()
    except ConfigError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(2)
