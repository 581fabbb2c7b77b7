"""`sync-worker reconcile [--dry-run]`: run the reconciliation now, in the foreground.

The same pass beat starts nightly (reconcile.py), with a live display of its counts and a
summary at the end. Exit status 1 when the pass failed or another one is running.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sync_worker.cli.errors import redis_error_line
from sync_worker.logging import configure_logging
from sync_worker.reconcile.reconciler import Reconciler, RunResult
from sync_worker.runtime import Runtime
from sync_worker.settings import load_settings

SUMMARY_ROWS = (
    ("pages", "pages"),
    ("scanned", "customers scanned"),
    ("without_external_id", "without an external id (unbound)"),
    ("bindable_by_email", "  whose email the ledger knows (bind enqueued)"),
    ("in_sync", "in sync"),
    ("drifted", "drifted"),
    ("drifted_name", "  in name"),
    ("drifted_metadata", "  in metadata"),
    ("compared_name", "names compared"),
    ("compared_metadata", "metadata compared"),
    ("enqueued", "repairs enqueued"),
    ("left_to_pending", "left to a pending update"),
    ("unknown_to_ledger", "unknown to the ledger"),
    ("missing_in_recur", "in the ledger, missing in Recur"),
    ("email_mismatches", "email mismatches (report only)"),
    ("dead_letters_replayed", "not_found dead letters replayed"),
    ("errors", "errors (retried)"),
)
_PROGRESS_COUNTS = ("pages", "scanned", "drifted", "enqueued")
_PROGRESS_TEXT = (
    "[bold]{task.description}[/] page {task.fields[pages]} · scanned {task.fields[scanned]} · "
    "drifted {task.fields[drifted]} · enqueued {task.fields[enqueued]}"
)


def reconcile(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Compare and count only: send nothing, enqueue nothing."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare every Recur customer with the ledger now and enqueue a sync for each drifted one.

    Runs in the foreground with live counts, then prints the report (also stored in Redis and
    shown by `status`). Only one pass runs at a time: if another is running, its progress is
    printed and the exit status is 1. A pass that stopped early resumes from its checkpoint.
    """
    settings = load_settings()
    runtime = Runtime(settings)
    err = Console(stderr=True, highlight=False)
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn(_PROGRESS_TEXT),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=as_json,
        ) as display:
            # Configured here, where stderr on a terminal goes through the live display: a log
            # line then prints above the counts instead of running on from them.
            configure_logging(settings)
            task = display.add_task(
                "Dry run" if dry_run else "Reconciling", total=None, **_fields({})
            )
            result = Reconciler.from_runtime(runtime).run(
                dry_run=dry_run, on_page=lambda p: display.update(task, **_fields(p))
            )
    except redis.RedisError as error:
        typer.secho(redis_error_line(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    finally:
        runtime.close()
    if as_json:
        typer.echo(json.dumps({**result.report, "status": result.status}, ensure_ascii=False))
    else:
        _print(result)
    raise typer.Exit(0 if result.ok else 1)


def _fields(progress: dict[str, Any]) -> dict[str, Any]:
    return {name: int(progress.get(name, 0)) for name in _PROGRESS_COUNTS}


def _print(result: RunResult) -> None:
    out = Console(soft_wrap=not sys.stdout.isatty(), highlight=False)
    report = result.report
    if result.status == "already_running":
        out.print(
            f"[yellow]A reconciliation is already running[/] (run {report.get('run_id', '?')}, "
            f"started {report.get('started_at', '?')}): page {report.get('pages', 0)}, "
            f"{report.get('scanned', 0)} scanned, {report.get('drifted', 0)} drifted, "
            f"{report.get('enqueued', 0)} enqueued."
        )
        return
    if result.status == "already_done":
        out.print(f"Tonight's reconciliation already finished ({report.get('day')}).")
        return
    table = Table(title=f"Reconciliation {report['run_id']}", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, label in SUMMARY_ROWS:
        table.add_row(label, str(report.get(key, 0)))
    out.print(table)
    verb = "would be enqueued" if result.status == "dry_run" else "enqueued"
    resumed = f", resumed after page {report['resumed_at_page']}" if report["resumed"] else ""
    colour = "red" if result.status == "failed" else "green"
    out.print(
        f"[{colour}]{result.status}[/] in {report['duration_seconds']} s{resumed}: "
        f"{report['drifted']} drifted, {report['enqueued']} {verb}."
    )
    if "fields_compared" in report:
        out.print(_fields_line(report))
    for kind, users in report.get("samples", {}).items():
        out.print(f"  {kind}: {', '.join(users)}")
    if report.get("error"):
        # A Recur error reads `GET /v1/customers -> 401 ...`: a refused key is the operator's
        # to fix, so the line names the setting.
        fix = "fix RECUR_SECRET_KEY; " if re.search(r" -> 40[13] ", report["error"]) else ""
        out.print(
            f"[red]error:[/] {report['error']} ({fix}the next run resumes from the checkpoint)"
        )


def _fields_line(report: dict[str, Any]) -> str:
    """Which fields could be compared: only those Recur's answers carry."""
    compared = ", ".join(report["fields_compared"]) or "none"
    line = f"fields compared: {compared}"
    if report.get("fields_not_compared"):
        line += (
            f"; not compared: {', '.join(report['fields_not_compared'])} "
            "(not in Recur's answers, or not in the ledger: drift there cannot be seen)"
        )
    return line
