"""`sync-worker dlq ...`: list, inspect, replay, delete, purge and export dead letters.

Thin over `DeadLetterQueue`: a replay puts the entry's change back into the pending store, and
the workers send it through the normal sync path; the entry disappears once that succeeds.
`replay ID --set name=...` edits the queued change first (replay_edit.py), recorded in the
entry's history under the OS user who ran it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

import redis
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from sync_worker.cli.errors import redis_error_line
from sync_worker.deadletters.dlq import REASONS, Edit
from sync_worker.deadletters.replay_edit import EditError, FieldEdits, build_edit, parse_assignments
from sync_worker.deadletters.triage import Triage, triage
from sync_worker.ops.status import format_age
from sync_worker.replication import acknowledged
from sync_worker.runtime import Runtime
from sync_worker.settings import ConfigError, load_settings

app = typer.Typer(
    rich_markup_mode="markdown",
    help="Inspect and act on dead letters (changes Recur refused for good).",
    no_args_is_help=True,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
PIPED_WIDTH = 240
FAILED_OUTCOMES = ("busy", "missing")
"""Replay outcomes that count as a failure (exit 1); `stale` is a deliberate skip."""

ReasonOption = Annotated[
    str | None,
    typer.Option("--reason", "-r", help=f"Only entries of this reason: {', '.join(REASONS)}."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `15m`, `1h`, `2d` or `1w`."""
    match = _DURATION.match(text)
    if match is None:
        raise typer.BadParameter("use a number with an optional unit s, m, h, d or w (e.g. 1h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def console() -> Console:
    """stdout; wide when piped, so a table sent to a file or `less` is not cut at 80 columns."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)


@contextlib.contextmanager
def open_runtime() -> Iterator[Runtime]:
    """A runtime from the environment; a Redis failure becomes one line and exit status 1."""
    runtime = Runtime(load_settings())
    try:
        yield runtime
    except (redis.RedisError, OSError) as error:
        typer.secho(redis_error_line(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    finally:
        runtime.close()


def _check_reason(reason: str | None) -> None:
    if reason is not None and reason not in REASONS:
        raise typer.BadParameter(f"must be one of {', '.join(REASONS)}", param_hint="--reason")


@app.command("list")
def list_entries(
    reason: ReasonOption = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user id.")] = None,
    older_than: Annotated[
        str | None,
        typer.Option(help="Only entries whose last failure is older than this (e.g. 1h, 2d)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Show at most this many.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List dead letters, newest failure first."""
    _check_reason(reason)
    age = parse_duration(older_than) if older_than is not None else None
    with open_runtime() as runtime:
        entries = runtime.dlq.find(reason=reason, user_id=user, older_than_seconds=age, limit=limit)
    if as_json:
        typer.echo(json.dumps([e.to_dict() for e in entries], ensure_ascii=False, indent=2))
        return
    out = console()
    if not entries:
        out.print("No dead letters match.")
        return
    now = time.time()
    table = Table(title=f"{len(entries)} dead letter(s)")
    for column in ("id", "reason", "user", "status", "error", "age", "replays"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            entry.id,
            f"[bold red]{entry.reason}[/]",
            entry.user_id,
            str(entry.http_status or "-"),
            f"{entry.error_code}: {entry.error_message}"[:120],
            format_age(now - entry.last_failure),
            str(entry.replay_count),
        )
    out.print(table)


def _cell(value: object, present: bool, absent: str) -> str:
    return json.dumps(value, ensure_ascii=False) if present else f"[dim]{absent}[/]"


def _history_table(history: list[dict[str, Any]]) -> Table:
    table = Table(title="edits before replay")
    for column in ("when", "who", "field", "from", "to"):
        table.add_column(column, overflow="fold")
    for record in history:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("at", 0)))
        who = f"{record.get('by')} ({record.get('via')})"
        for change in record.get("changes", []):
            removed = change.get("action") == "unset"
            table.add_row(
                stamp,
                who,
                str(change.get("field")),
                json.dumps(change.get("from"), ensure_ascii=False),
                "(removed)" if removed else json.dumps(change.get("to"), ensure_ascii=False),
            )
    return table


def _show_text(out: Console, found: Triage) -> None:
    entry = found.entry
    details = Table.grid(padding=(0, 2))
    for name, value in entry.to_dict().items():
        if name in ("fields", "extra", "history"):
            continue
        if name in ("first_failure", "last_failure", "created_at") and value:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
            value = f"{stamp} ({format_age(time.time() - value)} ago)"
        elif isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False)
        details.add_row(f"[bold]{name}[/]", str(value))
    out.print(details)
    if entry.history:
        out.print(_history_table(entry.history))
    rows = found.rows()
    upstream = entry.reason in ("not_found", "conflict")
    if rows:
        table = Table(
            title="queued change vs. last applied" + (" vs. Recur now" if upstream else "")
        )
        table.add_column("field")
        table.add_column("queued change")
        table.add_column("last applied")
        if upstream:
            table.add_column("Recur now")
        for name, queued, applied, now in rows:
            cells = [
                _cell(queued, name in entry.fields, "(not in this change)"),
                _cell(applied, name in found.applied, "(never applied)"),
                _cell(
                    now,
                    found.recur is not None,
                    "(no customer)" if found.recur_missing else "(not fetched)",
                ),
            ]
            table.add_row(name, *(cells if upstream else cells[:2]))
        out.print(table)
    if found.recur_error:
        out.print(f"[yellow]{found.recur_error}[/]")
    if found.holder is not None:
        out.print(
            f"external_id {entry.request.get('external_id')!r} is held by customer "
            f"{found.holder.get('id')} ({found.holder.get('email')})"
        )


@app.command("show")
def show(
    entry_id: Annotated[str, typer.Argument(metavar="ID", help="The dead letter id.")],
    as_json: JsonOption = False,
) -> None:
    """Show one dead letter in full; for not_found and conflict, beside the customer in Recur."""
    with open_runtime() as runtime:
        entry = runtime.dlq.get(entry_id)
        if entry is None:
            typer.secho(f"error: no dead letter {entry_id}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
        try:
            recur = runtime.recur
            unavailable = ""
        except ConfigError as error:
            recur, unavailable = None, f"not fetched from Recur: {error}"
        found = triage(entry, ledger=runtime.ledger, recur=recur, recur_unavailable=unavailable)
    if as_json:
        typer.echo(json.dumps(found.to_dict(), ensure_ascii=False, indent=2))
    else:
        _show_text(console(), found)


def _select(runtime: Runtime, ids: list[str], *, replay_all: bool, reason: str | None) -> list[str]:
    chosen = sum([bool(ids), replay_all, reason is not None])
    if chosen != 1:
        raise typer.BadParameter("give entry ids, or --all, or --reason (exactly one of them)")
    if ids:
        return ids
    return [entry.id for entry in runtime.dlq.find(reason=reason)]


@app.command("replay")
def replay(
    ids: Annotated[
        list[str] | None, typer.Argument(metavar="[ID]...", help="Dead letter ids to replay.")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    reason: ReasonOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the PATCH each replay would send; change nothing."),
    ] = False,
    set_values: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="PATH=VALUE",
            help="Edit the queued change first (one ID): name=..., external_id=..., "
            "metadata.KEY=... (a string) or PATH:=JSON. Repeatable.",
        ),
    ] = None,
    unset_external_id: Annotated[
        bool,
        typer.Option(
            "--unset-external-id", help="Drop the queued external-id change (no rebind is sent)."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Send dead letters back through the normal sync path (exit 1 if any could not be).

    An entry whose user already has a newer state applied or pending is skipped as stale. An
    entry stays in the queue until its sync succeeds; if it fails again its replay count rises.
    With --set or --unset-external-id, the one entry given is edited first (the edit wins over
    the queued values and is kept in the entry's history); an invalid value exits 2.
    """
    _check_reason(reason)
    out = console()
    results = []
    edits = FieldEdits(_assignments(set_values or []), unset_external_id)
    if edits and (len(ids or []) != 1 or replay_all or reason is not None):
        raise typer.BadParameter("edit one entry at a time: give exactly one ID")
    with open_runtime() as runtime:
        edit = _edit(runtime, edits) if edits else None
        selected = _select(runtime, ids or [], replay_all=replay_all, reason=reason)
        with Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=as_json or not sys.stderr.isatty(),
        ) as progress:
            task = progress.add_task("replay", total=len(selected))
            for entry_id in selected:
                try:
                    results.append(runtime.dlq.replay(entry_id, dry_run=dry_run, edit=edit))
                except EditError as error:
                    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
                    raise typer.Exit(2) from None
                progress.advance(task)
        replicated = not any(r.outcome == "replayed" for r in results) or _replicated(runtime)
    counts: Counter[str] = Counter(result.outcome for result in results)
    if as_json:
        typer.echo(
            json.dumps(
                {"counts": dict(counts), "results": [r.__dict__ for r in results]},
                ensure_ascii=False,
            )
        )
    else:
        for result in results:
            if result.outcome == "would_replay":
                body = json.dumps(result.request, ensure_ascii=False)
                out.print(
                    f"{result.id}: would PATCH /v1/customers/external/{result.user_id} {body}"
                )
            elif result.outcome != "replayed":
                out.print(f"{result.id}: [yellow]{result.outcome}[/]")
        summary = ", ".join(
            f"{counts.get(k, 0)} {k}" for k in ("replayed", "stale", "busy", "missing")
        )
        if dry_run:
            summary = f"{counts.get('would_replay', 0)} would be replayed (dry run), " + summary
        out.print(summary)
    if not replicated:
        _not_replicated(runtime)
    if any(counts.get(outcome) for outcome in FAILED_OUTCOMES):
        raise typer.Exit(1)


def _replicated(runtime: Runtime) -> bool:
    """True once REDIS_MIN_REPLICAS replicas hold what this command wrote."""
    settings = runtime.settings
    return acknowledged(
        runtime.redis,
        replicas=settings.min_replicas,
        timeout_ms=settings.redis_wait_timeout_ms,
    )


def _not_replicated(runtime: Runtime) -> NoReturn:
    """One line saying the change may not survive a failover; exit 1."""
    settings = runtime.settings
    typer.secho(
        f"error: done on the Redis primary but not yet held by {settings.min_replicas} "
        f"replica(s) (REDIS_MIN_REPLICAS) within {settings.redis_wait_timeout_ms} ms: a failover "
        "could undo it; check with `sync-worker dlq list`, then repeat if needed",
        fg=typer.colors.RED,
        err=True,
    )
    raise typer.Exit(1)


def _assignments(items: list[str]) -> dict[str, object]:
    try:
        return parse_assignments(items)
    except EditError as error:
        raise typer.BadParameter(str(error), param_hint="--set") from None


def _edit(runtime: Runtime, edits: FieldEdits) -> Edit:
    try:
        return build_edit(
            edits, actor={"by": getpass.getuser(), "via": "cli"}, ledger=runtime.ledger
        )
    except EditError as error:
        raise typer.BadParameter(str(error), param_hint="--set") from None


@app.command("delete")
def delete(
    ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Dead letter ids to delete.")],
) -> None:
    """Delete dead letters for good (exit 1 if any did not exist)."""
    with open_runtime() as runtime:
        deleted = runtime.dlq.delete(ids)
        typer.echo(f"deleted {deleted} of {len(ids)}")
        if deleted and not _replicated(runtime):
            _not_replicated(runtime)
    if deleted < len(ids):
        raise typer.Exit(1)


@app.command("purge")
def purge(
    reason: ReasonOption = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: without it nothing is deleted.")
    ] = False,
) -> None:
    """Delete every dead letter, or every one of a reason. Requires --yes."""
    _check_reason(reason)
    with open_runtime() as runtime:
        if not yes:
            count = len(runtime.dlq.find(reason=reason))
            typer.secho(
                f"refusing to delete {count} dead letter(s) without --yes",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(1)
        deleted = runtime.dlq.purge(reason=reason)
        typer.echo(f"purged {deleted}")
        if deleted and not _replicated(runtime):
            _not_replicated(runtime)


@app.command("export")
def export(reason: ReasonOption = None) -> None:
    """Write dead letters to stdout as JSON lines, newest failure first (for backups or jq)."""
    _check_reason(reason)
    with open_runtime() as runtime:
        for entry in runtime.dlq.iter_entries():
            if reason is None or entry.reason == reason:
                typer.echo(json.dumps(entry.to_dict(), ensure_ascii=False, separators=(",", ":")))
