"""`sync-worker sandbox`: serve the Recur sandbox over HTTP."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn

from sync_worker.sandbox.app import DEFAULT_LOG_SIZE, DEFAULT_SECRET_KEY, create_app
from sync_worker.sandbox.server import uvicorn_config


def sandbox(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="SANDBOX_PORT", min=1, max=65535, help="Port to listen on.")
    ] = 8100,
    customers: Annotated[
        int,
        typer.Option(
            min=0, help="Seed this many demo customers: external ids user_1..N, emails, names."
        ),
    ] = 0,
    checkout_customers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also seed this many customers as Recur Checkout creates them: no external id, "
            "emails checkout_1..N@example.com.",
        ),
    ] = 0,
    echo_metadata: Annotated[
        bool,
        typer.Option(
            "--echo-metadata",
            envvar="SANDBOX_ECHO_METADATA",
            help="Return each customer's metadata in /v1 answers, which Recur's doc never does "
            "(for experiments only; off by default).",
        ),
    ] = False,
    secret_key: Annotated[
        str,
        typer.Option(
            envvar="SANDBOX_SECRET_KEY",
            help="The one key /v1 accepts (Authorization: Bearer ...). sk_live_... sets livemode.",
        ),
    ] = DEFAULT_SECRET_KEY,
    error_rate: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Fraction of /v1 requests answered 500 internal_error."
        ),
    ] = 0.0,
    latency_ms: Annotated[
        int, typer.Option(min=0, help="Added to every /v1 answer; large values make requests hang.")
    ] = 0,
    rate_limit_rps: Annotated[
        float,
        typer.Option(
            min=0.0, help="Requests per second above which /v1 answers 429 (0: no limit)."
        ),
    ] = 0.0,
    request_log_size: Annotated[
        int, typer.Option(min=1, help="How many /v1 requests GET /_sandbox/requests keeps.")
    ] = DEFAULT_LOG_SIZE,
) -> None:
    """Run the Recur sandbox: a stateful simulator of the Customers API with fault injection.

    Point RECUR_API_URL at it. Faults can be changed while it runs through PUT /_sandbox/faults;
    POST /_sandbox/reset, POST /_sandbox/seed and GET /_sandbox/requests drive it from tests.
    """
    app = create_app(
        secret_key=secret_key,
        customers=customers,
        error_rate=error_rate,
        latency_ms=latency_ms,
        rate_limit_rps=rate_limit_rps,
        request_log_size=request_log_size,
        echo_metadata=echo_metadata,
    )
    if checkout_customers:
        app.state.sandbox.store.seed(checkout_customers, prefix="checkout_", bound=False)
    total = customers + checkout_customers
    echo = ", metadata echoed" if echo_metadata else ""
    typer.echo(f"Recur sandbox on http://{host}:{port} ({total} customers{echo})", err=True)
    uvicorn.Server(uvicorn_config(app, host=host, port=port)).run()
