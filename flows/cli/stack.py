"""`journeys deploy`, `edge` and `server`: Prefect and the local stack."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from flows.cli.common import UserError, app, app_engine, console, user_errors


@app.command("deploy")
@user_errors
def deploy_cmd() -> None:
    """Bootstrap the Prefect server at PREFECT_API_URL and apply infra/prefect.yaml (rerunnable)."""
    import httpx

    from infra.stack import StackError, deploy

    try:
        deploy(report=console.print)
    except StackError as exc:
        raise UserError(str(exc)) from None
    except httpx.HTTPError as exc:  # includes a server that is not there
        raise UserError(f"Prefect API at {os.environ.get('PREFECT_API_URL')}: {exc}") from None


@app.command("edge")
@user_errors
def edge_cmd(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; put a TLS proxy "
                                      "in front before opening it beyond this machine.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    proxy_headers: Annotated[bool, typer.Option(
        "--proxy-headers", help="Trust X-Forwarded-For from --forwarded-allow-ips (behind a "
        "proxy: rate limits and logs then see the real client).")] = False,
    forwarded_allow_ips: Annotated[str | None, typer.Option(
        "--forwarded-allow-ips", help="Proxy addresses whose forwarded headers are trusted.")]
    = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Edge processes sharing "
                                         "the port (one per core is plenty).")] = 1,
) -> None:
    """The edge: POST /webhooks/shopify, /aftership, /ses into the inbox; /healthz, /readyz."""
    from flows.edge import serve

    app_engine()
    serve(host, port, proxy_headers, forwarded_allow_ips, workers)


@app.command("server")
@user_errors
def server_cmd(
    port: Annotated[int, typer.Option("--port", help="Port for the Prefect UI and API.")] = 4200,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Process workers to start.")]
    = 1,
    prefect_db: Annotated[str | None, typer.Option(
        "--prefect-db", help="PostgreSQL URL for Prefect's own database (default: SQLite; or "
        "$JOURNEYS_PREFECT_DATABASE_URL).")] = None,
    edge_port: Annotated[int, typer.Option(
        "--edge-port", help="Port of the edge (webhooks in) on 127.0.0.1; 0: no edge.")] = 8000,
) -> None:
    """Prefect server, deployments, workers and the edge on this machine, until Ctrl-C."""
    from infra.stack import StackError, run_stack

    try:
        run_stack(port=port, prefect_db_url=prefect_db, workers=workers, report=console.print,
                  edge_port=edge_port or None)
    except StackError as exc:
        raise UserError(str(exc)) from None
