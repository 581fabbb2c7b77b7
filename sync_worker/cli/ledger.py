"""`sync-worker ledger import FILE`: seed the ledger from a merchant's export.

The ledger says what Recur should hold; after an import, the reconciliation repairs every
customer that differs. Rows are validated as webhook intake validates events.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sync_worker.cli.errors import redis_error_line
from sync_worker.connections import redis_client
from sync_worker.intake.events import EventValidationError, validate_user_fields
from sync_worker.pipeline.ledger import Ledger
from sync_worker.settings import load_settings

app = typer.Typer(
    help="Manage the ledger: what Recur should hold, per user.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

Format = Literal["auto", "csv", "jsonl"]
REJECTIONS_KEPT = 100
"""Rejected rows listed in the summary; beyond that only counted (memory stays bounded)."""
KNOWN_COLUMNS = ("user_id", "name", "email", "metadata")


class RowError(Exception):
    """A row that cannot be imported; the message says why."""


@dataclass
class ImportSummary:
    """What an import did."""

    imported: int = 0
    rejected: int = 0
    rejections: list[tuple[int, str]] = field(default_factory=list)

    def reject(self, line: int, message: str) -> None:
        """Count a rejected row and keep the first REJECTIONS_KEPT reasons."""
        self.rejected += 1
        if len(self.rejections) < REJECTIONS_KEPT:
            self.rejections.append((line, message))


def _from_csv_row(row: dict[str | Any, str | Any]) -> dict[str, Any]:
    if None in row:
        raise RowError("more cells than header columns")
    data: dict[str, Any] = {"user_id": row.get("user_id") or ""}
    for column in ("name", "email"):
        if row.get(column):
            data[column] = row[column]
    metadata: dict[str, Any] = {}
    if row.get("metadata"):
        try:
            metadata = json.loads(row["metadata"])
        except ValueError:
            raise RowError("metadata: is not valid JSON") from None
        if not isinstance(metadata, dict):
            raise RowError("metadata: must be a JSON object")
    # Every other column is a metadata key; an empty cell sets nothing.
    metadata.update({k: v for k, v in row.items() if k not in KNOWN_COLUMNS and v})
    if metadata:
        data["metadata"] = metadata
    return data


def read_rows(path: Path, file_format: Format) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """`(line number, row or why it is bad)` for each data row of the file, lazily."""
    kind = file_format
    if kind == "auto":
        kind = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if kind == "jsonl":
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as error:
                    yield number, RowError(f"not JSON: {error.msg}")
                    continue
                yield number, value if isinstance(value, dict) else RowError("not a JSON object")
            return
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "user_id" not in reader.fieldnames:
            raise typer.BadParameter("the CSV header must name a user_id column", param_hint="FILE")
        line = reader.line_num + 1
        for row in reader:
            try:
                yield line, _from_csv_row(row)
            except RowError as error:
                yield line, error
            line = reader.line_num + 1


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


@app.command("import")
def import_(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The export.")
    ],
    file_format: Annotated[
        Format,
        typer.Option("--format", help="auto: a .csv file is CSV, anything else JSON lines."),
    ] = "auto",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate every row, write nothing.")
    ] = False,
) -> None:
    """Seed the ledger from a merchant's export, JSON lines or CSV.

    JSON lines: one object per line, {"user_id": "u1", "name": "...", "email": "...",
    "metadata": {...}}.

    CSV: a header row naming user_id and any of name, email, metadata; a metadata cell holds a
    JSON object, and every other column becomes a metadata key with the cell's text as its
    value (empty cells are skipped). Each row needs a name or some metadata.

    User ids must match [A-Za-z0-9_-] (at most 255 characters) and names hold 1-255
    characters, as for webhooks. Imported values are stamped now, so they win over what was
    applied before; a later webhook wins over them. Rejected rows are listed with their line
    numbers, and the exit status is then 1. Run `sync-worker reconcile` afterwards.
    """
    settings = load_settings()
    client = redis_client(settings)
    ledger = Ledger(client)
    stamp = int(time.time() * 1000)
    summary = ImportSummary()
    err = Console(stderr=True, highlight=False)
    try:
        with Progress(
            TextColumn("[bold]Importing[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("lines · {task.fields[rejected]} rejected"),
            TimeElapsedColumn(),
            console=err,
        ) as display:
            task = display.add_task("import", total=_count_lines(file), rejected=0)
            for line, row in read_rows(file, file_format):
                display.update(task, completed=line, rejected=summary.rejected)
                try:
                    if isinstance(row, RowError):
                        raise row
                    user_id, fields = validate_user_fields(row)
                except (RowError, EventValidationError) as error:
                    summary.reject(line, str(error))
                    continue
                if not dry_run:
                    ledger.seed(user_id, fields, ts_ms=stamp)
                summary.imported += 1
            display.update(task, completed=display.tasks[0].total, rejected=summary.rejected)
    except redis.RedisError as error:
        typer.secho(redis_error_line(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    finally:
        client.close()
    _print(summary, dry_run=dry_run)
    raise typer.Exit(1 if summary.rejected else 0)


def _print(summary: ImportSummary, *, dry_run: bool) -> None:
    out = Console(highlight=False, soft_wrap=True)
    verb = "valid (dry run, nothing written)" if dry_run else "imported"
    out.print(f"{summary.imported} rows {verb}, {summary.rejected} rejected.")
    for line, message in summary.rejections:
        out.print(f"  line {line}: {message}")
    if summary.rejected > len(summary.rejections):
        out.print(f"  ... and {summary.rejected - len(summary.rejections)} more")
