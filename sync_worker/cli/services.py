"""`sync-worker web`, `worker` and `beat`: the long-running processes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

import redis
import typer

from sync_worker.cli.errors import redis_error_line
from sync_worker.logging import configure_logging, get_logger
from sync_worker.settings import Settings, load_settings

log = get_logger(__name__)


@contextlib.contextmanager
def _redis_or_exit() -> Iterator[None]:
    """Redis failing before the process is up: one line naming REDIS_URL, exit status 1.

    Once running, worker and beat ride out Redis going away; at start there is nothing to ride
    out yet, and a traceback would hide which setting to check."""
    try:
        yield
    except redis.RedisError as error:
        typer.secho(redis_error_line(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _claim_mode(settings: Settings) -> None:
    """Refuse to start (ConfigError) with a key whose mode differs from the Redis state's."""
    from sync_worker.connections import redis_client
    from sync_worker.mode import claim_mode

    client = redis_client(settings)
    try:
        claim_mode(client, settings)
    finally:
        client.close()


def _migrate_ledger(settings: Settings) -> None:
    """Move ledger entries an older version wrote (a hash per user) into the buckets (ledger.py).

    Until then every script reads them merged in, so nothing waits on this but memory."""
    from sync_worker.connections import redis_client
    from sync_worker.pipeline.ledger import Ledger

    client = redis_client(settings)
    try:
        moved = Ledger(client).migrate()
    finally:
        client.close()
    if moved:
        log.info("ledger_migrated", users=moved)


def web(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default WEB_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default WEB_PORT, 8000).")] = None,
) -> None:
    """Serve webhook intake, health, metrics, the operator API and the dashboard."""
    import uvicorn

    from sync_worker.web.app import create_app

    settings = load_settings()
    configure_logging(settings)
    app = create_app(settings)
    bind_host = host or settings.web_host
    bind_port = port or settings.web_port
    log.info("web_starting", host=bind_host, port=bind_port, mode=settings.mode_label)
    uvicorn.run(
        app,
        host=bind_host,
        port=bind_port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", help="Threads (default WORKER_CONCURRENCY)."),
    ] = None,
    hostname: Annotated[
        str | None, typer.Option("--hostname", "-n", help="Celery node name.")
    ] = None,
) -> None:
    """Run the Celery worker that syncs users to Recur (and its dispatcher thread)."""
    settings = load_settings()
    settings.require_secret_key()
    with _redis_or_exit():
        _claim_mode(settings)
        _migrate_ledger(settings)
    from sync_worker.celery_app import app

    argv = ["worker", "--loglevel", settings.log_level, "-Q", "sync,maintenance"]
    argv += ["--concurrency", str(concurrency or settings.worker_concurrency)]
    if hostname:
        argv += ["--hostname", hostname]
    app.worker_main(argv)


def beat(
    schedule: Annotated[
        str, typer.Option(help="File where beat keeps the time of the last runs.")
    ] = "celerybeat-schedule",
) -> None:
    """Run Celery beat: the sweep every SWEEP_INTERVAL_SECONDS and the nightly reconciliation."""
    settings = load_settings()
    with _redis_or_exit():
        _claim_mode(settings)
    from sync_worker.celery_app import app

    app.start(["beat", "--loglevel", settings.log_level, "--schedule", schedule])
