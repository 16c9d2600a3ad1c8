"""The reconcile-shopify flow: what webhooks missed, pulled from the Admin API into the inbox.

Shopify retries a webhook 8 times over 4 hours and then deletes the subscription, so webhooks
alone lose orders. Every hour this flow asks the GraphQL Admin API for the orders updated
since the watermark and stores each version as the inbox delivery a webhook would have made;
then it drains the inbox like every sweep does. A version the webhook already brought is a
duplicate in intake, and last write wins on the source's `updated_at`.

The watermark is not stored anywhere new: it is the newest `updated_at` among the order
versions reconciliation stored in the inbox (less 5 minutes of overlap). It advances in the
same transaction as the deliveries of each page, so it can never pass an order that was not
stored; a run that fails halfway resumes after its last stored page.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from flows.common import batch_size, business_now, runtime
from flows.journey import drain_inbox
from flows.parameters import ReconcileRequest
from tasks import inbox, shopify_admin
from tasks.store.db import session_scope


def admin_client() -> shopify_admin.AdminClient:
    """The Admin API client (tests replace this to inject a clock and a sleep)."""
    return shopify_admin.AdminClient.from_settings(runtime().settings)


def inbox_db():
    settings = runtime().settings
    return inbox.inbox_engine(inbox.inbox_url(settings), settings.database_url)


def current_watermark() -> datetime | None:
    with session_scope(inbox_db()) as session:
        return shopify_admin.watermark(session)


def starting_point(since: datetime | None, now: datetime) -> datetime:
    """The request's `since`, else the watermark less the overlap, else the look-back."""
    if since is not None:
        return since
    lookback = timedelta(hours=runtime().settings.shopify_reconcile_lookback_hours)
    with session_scope(inbox_db()) as session:
        return shopify_admin.since_when(session, now, lookback)


@task(cache_policy=NONE)
def pull_orders(since: datetime, page_size: int, now: datetime) -> dict[str, Any]:
    """Every page of updated orders into the inbox, one transaction per page (no task retries:
    the client retries each request, and a rerun resumes from what was stored)."""
    client, shop = admin_client(), runtime().settings.shopify_shop
    counts = {"pages": 0, "orders pulled": 0, "deliveries stored": 0, "orders too large": 0}
    for page in shopify_admin.updated_orders(client, since, page_size):
        found = [d for node in page.nodes
                 for d in shopify_admin.deliveries(shopify_admin.rest_order(node), shop)]
        with session_scope(inbox_db()) as session:
            counts["deliveries stored"] += shopify_admin.store_new(session, found, now)
        counts["pages"] += 1
        counts["orders pulled"] += len(page.nodes)
        counts["orders too large"] += len(page.incomplete)
        if page.incomplete:
            get_run_logger().warning("orders with more nested items than one request can "
                                     "hold, left to webhooks: %s", ", ".join(page.incomplete))
    stats = client.stats
    return counts | {"requests": stats.requests, "throttle waits": stats.throttle_waits,
                     "seconds waited": round(stats.waited_seconds, 3), "retries": stats.retries}


def publish_report(report: dict[str, Any]) -> None:
    create_table_artifact([{"measure": k, "value": str(v)} for k, v in report.items()
                           if k != "inbox"], key="reconcile-shopify",
                          description="Shopify orders reconciled into the webhook inbox")


@flow(name="reconcile-shopify", log_prints=True)
def reconcile_shopify(request: ReconcileRequest = ReconcileRequest()  # noqa: B008 (frozen)
                      ) -> dict[str, Any]:
    """Store the Shopify orders updated since the watermark as inbox deliveries, then drain."""
    now = business_now(None)
    before = current_watermark()
    since = starting_point(request.since, now)
    report = {"asked since": since.isoformat(), **pull_orders(since, request.page_size, now)}
    report["inbox"] = drain_inbox(now, batch_size(None))
    after = current_watermark()
    report["watermark before"] = before.isoformat() if before else "none"
    report["watermark after"] = after.isoformat() if after else "none"
    publish_report(report)
    get_run_logger().info("reconcile-shopify: %s", report)
    return report


if __name__ == "__main__":
    print(reconcile_shopify())
