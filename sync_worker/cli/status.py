"""`sync-worker status` (what the system is doing now) and `sync-worker resume` (lift a pause)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sync_worker.cli.dlq import console, open_runtime
from sync_worker.ops.status import StatusSnapshot, format_age, gather_status
from sync_worker.write_refusal import MESSAGES


def _report_line(report: dict[str, Any] | None) -> str:
    if report is None:
        return "none yet"
    counts = ", ".join(
        f"{key} {value}" for key, value in report.items() if isinstance(value, int | float)
    )
    if counts and "fields_compared" in report:
        counts += f"; fields compared: {', '.join(report['fields_compared']) or 'none'}"
    return counts or json.dumps(report, ensure_ascii=False)


def _breaker_line(breaker: dict[str, Any]) -> str:
    window = f"{breaker.get('window_failures', 0)}/{breaker.get('window_calls', 0)} failed"
    state = breaker.get("state", "closed")
    if state == "closed":
        return f"[green]closed[/] ({window} in the window)"
    left = breaker.get("open_seconds_left", 0)
    return (
        f"[bold red]{state.upper()}[/]: sends held, intake still accepts; probe in {left:.0f} s "
        f"(cool-down {breaker.get('cool_down_seconds', 0):.0f} s, trips {breaker.get('trips', 0)})"
    )


def _culprit(paused: dict[str, Any]) -> str:
    """The setting a pause asks the operator to fix."""
    return "RECUR_API_URL" if paused.get("reason") == "endpoint_not_found" else "RECUR_SECRET_KEY"


def _worker_line(worker: dict[str, Any]) -> str:
    line = f"{worker.get('hostname')} ({worker['seen_seconds_ago']} s ago)"
    if worker.get("stalled"):
        error = worker.get("last_error") or "no round finished"
        age = format_age(float(worker.get("dispatcher_seconds_ago", 0)))
        line += f" [bold red]dispatcher stalled {age} ({error})[/]"
    return line


def _replicas_line(snapshot: StatusSnapshot) -> str:
    wanted = f"REDIS_MIN_REPLICAS {snapshot.min_replicas}"
    if not snapshot.replicas_missing:
        return f"{snapshot.replicas_online} in sync ({wanted})"
    return (
        f"[bold red]{snapshot.replicas_online} in sync, {wanted}[/]: intake answers 503 to every "
        "event and operator actions fail; bring a replica back (INFO replication on the primary) "
        "or lower REDIS_MIN_REPLICAS"
    )


def _print(out: Console, snapshot: StatusSnapshot) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    if snapshot.paused is None:
        state = "[green]running[/]"
    else:
        since = float(snapshot.paused.get("since", time.time()))
        state = (
            f"[bold red]PAUSED[/] since {format_age(time.time() - since)} ago: "
            f"{snapshot.paused.get('reason')} (HTTP {snapshot.paused.get('status')}) "
            f"{snapshot.paused.get('message', '')}; fix {_culprit(snapshot.paused)}, it resumes "
            "by itself (or run `sync-worker resume`)"
        )
    grid.add_row("sync", state)
    grid.add_row("mode", snapshot.mode)
    if snapshot.redis_refusal is not None:
        grid.add_row("redis writes", f"[bold red]refused[/]: {MESSAGES[snapshot.redis_refusal]}")
    if snapshot.min_replicas or snapshot.replicas_online:  # a lone Redis has nothing to say
        grid.add_row("redis replicas", _replicas_line(snapshot))
    grid.add_row("circuit breaker", _breaker_line(snapshot.breaker))
    if snapshot.cooldown_seconds > 0:
        grid.add_row("cool-down", f"[yellow]{snapshot.cooldown_seconds:.1f} s left (429)[/]")
    grid.add_row(
        "celery queues", ", ".join(f"{name} {depth}" for name, depth in snapshot.queues.items())
    )
    grid.add_row(
        "pending users",
        f"{snapshot.pending_users} waiting ({snapshot.due_now} due now), "
        f"{snapshot.inflight} being sent",
    )
    grid.add_row("scheduled retries", f"{snapshot.retrying_users} user(s)")
    by_reason = ", ".join(f"{reason} {n}" for reason, n in snapshot.dead_letters.items())
    style = "red" if snapshot.dead_letters_total else "green"
    grid.add_row("dead letters", f"[{style}]{snapshot.dead_letters_total}[/] ({by_reason})")
    workers = ", ".join(_worker_line(w) for w in snapshot.workers)
    alive = f"{len(snapshot.workers)}" + (f": {workers}" if workers else "")
    grid.add_row("workers alive", alive if snapshot.workers else "[bold red]0[/]")
    if snapshot.stalled_workers:
        grid.add_row(
            "dispatchers",
            f"[bold red]{len(snapshot.stalled_workers)} STALLED[/] "
            f"({', '.join(snapshot.stalled_workers)}): their workers claim nothing; read their "
            "`dispatcher_error` log lines, restart them if it goes on",
        )
    grid.add_row("last reconciliation", _report_line(snapshot.last_reconciliation))
    out.print(grid)


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Queue depths, pending debounces, scheduled retries, dead letters, workers, pause, mode."""
    with open_runtime() as runtime:
        snapshot = gather_status(runtime)
    if as_json:
        typer.echo(json.dumps(snapshot.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print(console(), snapshot)


def resume() -> None:
    """Lift the auth pause now instead of waiting for the workers' next successful probe.

    Use it after fixing RECUR_SECRET_KEY; if the key is still wrong the next call pauses again.
    """
    with open_runtime() as runtime:
        was_paused = runtime.flow.resume()
    typer.echo("resumed" if was_paused else "was not paused")
