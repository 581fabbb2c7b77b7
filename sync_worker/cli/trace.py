"""`sync-worker trace USER_ID [--json] [--recur]`: what happened to one user (timeline.py).

The timeline newest first, then the change still pending, the ledger and, with `--recur`, the
customer as Recur has it now beside it, differences marked. Exit 1 when nothing at all is known
about the user (a mistyped id should not look like a quiet user).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sync_worker.cli.dlq import console, open_runtime
from sync_worker.ops.timeline import UserTrace, describe, pending_summary

VERDICT_STYLE = {"same": "green", "differs": "bold red", "not readable": "dim"}


def _stamp(moment: float | None) -> str:
    if moment is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _print(out: Console, found: UserTrace) -> None:
    table = Table(title=f"trace of {found.user_id}, newest first")
    for column in ("when", "what", "detail"):
        table.add_column(column, overflow="fold")
    for entry in found.timeline:
        table.add_row(_stamp(entry.at), entry.kind, describe(entry))
    out.print(table if found.timeline else "[dim]No trace recorded (or it expired).[/]")
    out.print(pending_summary(found.pending), markup=False)
    fields = Table(title=f"fields (last applied {_stamp(found.applied_at)})")
    for column in ("field", "pending", "applied", "applied event time"):
        fields.add_column(column, overflow="fold")
    if found.recur_fetched:
        fields.add_column("Recur now", overflow="fold")
        fields.add_column("", overflow="fold")
    for row in found.rows:
        cells = [
            row.name,
            _json(row.pending) if row.in_pending else "[dim]-[/]",
            _json(row.applied) if row.applied_ts_ms is not None else "[dim](never applied)[/]",
            _stamp(row.applied_ts_ms / 1000) if row.applied_ts_ms is not None else "-",
        ]
        if found.recur_fetched:
            readable = row.verdict != "not readable"
            cells.append(_json(row.recur) if found.recur and readable else "[dim]-[/]")
            style = VERDICT_STYLE.get(str(row.verdict), "")
            cells.append(f"[{style}]{row.verdict}[/]" if style and row.verdict else "")
        fields.add_row(*cells)
    out.print(fields)
    if found.recur_error:
        out.print(f"[yellow]{found.recur_error}[/]")
    for letter in found.dead_letters:
        out.print(
            f"[bold red]dead letter[/] {letter.id}: {letter.reason}, HTTP "
            f"{letter.http_status or '-'} {letter.error_code}: {letter.error_message} "
            f"(replayed {letter.replay_count} times) -> `sync-worker dlq show {letter.id}`"
        )


def trace(
    user_id: Annotated[str, typer.Argument(metavar="USER_ID", help="The merchant's user id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    with_recur: Annotated[
        bool, typer.Option("--recur", help="Fetch the customer from Recur and compare.")
    ] = False,
) -> None:
    """What happened to one user: events, attempts, dead letters, pending change and ledger."""
    with open_runtime() as runtime:
        found = runtime.user_trace(user_id, with_recur=with_recur)
    if as_json:
        typer.echo(json.dumps(found.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print(console(), found)
    if not found.known:
        typer.secho(f"nothing recorded about user {user_id}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(1)
