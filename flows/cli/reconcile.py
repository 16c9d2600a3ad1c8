"""`journeys reconcile`: pull what webhooks missed from the source."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from flows.cli.common import JsonFlag, UserError, app_engine, print_json, show_counts, user_errors
from flows.cli.prefect_api import prefect_api

reconcile_app = typer.Typer(no_args_is_help=True, help="Pull what webhooks missed from the source.")


@reconcile_app.command("shopify")
@user_errors
def reconcile_shopify_cmd(
    since: Annotated[str | None, typer.Option(
        "--since", help="ISO 8601 instant: orders updated after it (default: the last "
        "reconciled version less 5 minutes, else 72 hours back).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Pull Shopify orders updated since the watermark (Admin API) into the webhook inbox, then
    drain it through intake, as the hourly reconcile-shopify deployment does."""
    from tasks.shopify_admin import ShopifyError

    try:
        instant = datetime.fromisoformat(since) if since else None
    except ValueError:
        raise UserError(f"--since {since!r} is not an ISO 8601 date-time") from None
    if instant is not None and instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    app_engine()
    with prefect_api("flows.reconcile"):
        from flows.parameters import ReconcileRequest
        from flows.reconcile import reconcile_shopify

        try:
            report = reconcile_shopify(ReconcileRequest(since=instant))
        except ShopifyError as exc:
            raise UserError(f"Shopify: {exc}") from None
    if as_json:
        print_json(report)
    else:
        show_counts("Shopify orders reconciled", {k: v for k, v in report.items()
                                                  if k != "inbox"}, as_json)
