"""An order webhook to its sent confirmation, on a running stack: how many seconds it takes.

A fresh workspace (SQLite app database, file archive, file mail transport) and a LocalStack with
the edge and the real-time task worker (no scheduler, so no sweep does the work instead). Once
the task worker listens, seeded Shopify `orders/create` bodies are posted to the edge one per
second, as a store's checkouts arrive; each is timed from the edge's 200 to the wall-clock
mtime of its confirmation's .eml bundle (written a few milliseconds before the outbox row is
committed). Orders the journey holds (address check, high value) are reported, not timed.

    python -m infra.tooling.bench.realtime [ORDERS]     # prints the JSON result
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from infra.tooling.bench.latency import (
    bench_server_settings,
    percentiles,
    pointed_at,
    sqlite_prefect_db,
)
from infra.tooling.bench.story import Workspace, bench_catalog, using, write_jsonl

DEFAULT_WORKDIR = Path("var/bench-realtime")
SECRET = "bench-realtime-secret"
EXTRA_ORDERS = 5  # some seeded orders are edge cases the journey holds
SPACING = 1.0  # seconds between two webhooks
SETTLE = 60.0  # seconds to wait for the last confirmations
log = logging.getLogger("journeys.bench.realtime")


def measure_realtime(orders: int = 20, workdir: Path = DEFAULT_WORKDIR, seed: int = 7
                     ) -> dict[str, Any]:
    """Start a stack with its edge, post `orders` (+ a few) order webhooks, time each one."""
    from infra.stack import LocalStack, free_port

    workspace = Workspace.fresh(workdir, None)
    load_catalog(workspace, orders + EXTRA_ORDERS, seed)
    env = workspace.environment() | {"JOURNEYS_SHOPIFY_WEBHOOK_SECRET": SECRET}
    stack = LocalStack(port=free_port(), prefect_db_url=sqlite_prefect_db(workspace), workers=0,
                       env=env, log_dir=workspace.root, report=log.info, edge_port=free_port())
    with bench_server_settings(), stack, pointed_at(stack.api_url):
        stack.wait_for_realtime()
        posted = post_orders(f"http://127.0.0.1:{stack.edge_port}/webhooks/shopify",
                             order_bodies(orders + EXTRA_ORDERS, seed))
        sent = wait_for_confirmations(workspace, posted)
    return summarize(posted, sent, workspace)


def load_catalog(workspace: Workspace, orders: int, seed: int) -> None:
    """The bench's catalog (stock for `orders`), straight into the app database."""
    from flows.common import app_engine
    from tasks.intake import ingest_products, read_products
    from tasks.store.db import session_scope

    path = write_jsonl(workspace.root / "products.jsonl", bench_catalog(orders, seed))
    with using(workspace), session_scope(app_engine()) as session:
        ingest_products(session, list(read_products(path)), datetime.now(UTC))


def order_bodies(count: int, seed: int) -> list[bytes]:
    """Seeded Shopify order objects placed just now (the task worker runs on the real clock)."""
    from infra.tooling.demo_data import demo_orders

    return [json.dumps(order, default=str).encode()
            for order in demo_orders(count, seed, datetime.now(UTC))]


def post_orders(url: str, bodies: list[bytes]) -> dict[str, datetime]:
    """Each body as Shopify sends it, one per SPACING; when the edge acknowledged each order."""
    from tasks.webhooks import signature

    acknowledged = {}
    for number, body in enumerate(bodies):
        headers = {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create",
                   "X-Shopify-Hmac-Sha256": signature(body, SECRET),
                   "X-Shopify-Webhook-Id": f"bench-realtime-{number}"}
        answer = httpx.post(url, content=body, headers=headers, timeout=30)
        answer.raise_for_status()
        acknowledged[str(json.loads(body)["id"])] = datetime.now(UTC)
        time.sleep(SPACING)
    return acknowledged


def wait_for_confirmations(workspace: Workspace, posted: dict[str, datetime]
                           ) -> dict[str, datetime]:
    """Until every posted order is confirmed or stopped (held, cancelled), or SETTLE seconds
    pass without progress."""
    from flows.common import app_engine
    from tasks.store.journal import CANCELLED, ON_HOLD

    sent: dict[str, datetime] = {}
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        with using(workspace):
            found = confirmations_sent(app_engine(), list(posted))
        if len(found) > len(sent):
            deadline = time.monotonic() + SETTLE
        sent = found
        states = order_states(workspace, [order for order in posted if order not in sent])
        if all(states.get(order) in (ON_HOLD, CANCELLED) for order in posted
               if order not in sent):
            break
        time.sleep(0.2)
    return sent


def confirmations_sent(engine, external_ids: list[str]) -> dict[str, datetime]:
    """When each order's confirmation was written by the file transport (its bundle's mtime:
    the message's sent_at is the business clock the run started with)."""
    from sqlalchemy import select

    from tasks.archive import split_member_ref
    from tasks.confirm import TEMPLATE
    from tasks.store.db import session_scope
    from tasks.store.models import Message, Order

    query = (select(Order.external_id, Message.artifact_ref)
             .join(Message, Message.order_id == Order.id)
             .where(Order.external_id.in_(external_ids), Message.template == TEMPLATE,
                    Message.status == "sent"))
    with session_scope(engine) as session:
        refs = dict(session.execute(query).tuples().all())
    return {order: datetime.fromtimestamp(
        Path(urlparse(split_member_ref(ref)[0]).path).stat().st_mtime, UTC)
        for order, ref in refs.items() if ref}


def order_states(workspace: Workspace, external_ids: list[str]) -> dict[str, str]:
    from sqlalchemy import select

    from flows.common import app_engine
    from tasks.store.db import session_scope
    from tasks.store.models import Order

    query = select(Order.external_id, Order.state).where(Order.external_id.in_(external_ids))
    with using(workspace), session_scope(app_engine()) as session:
        return dict(session.execute(query).tuples().all())


def summarize(posted: dict[str, datetime], sent: dict[str, datetime], workspace: Workspace
              ) -> dict[str, Any]:
    seconds = {order: round((sent[order] - posted[order]).total_seconds(), 3) for order in sent}
    unconfirmed = [order for order in posted if order not in sent]
    return {
        "posted": len(posted), "confirmed": len(sent),
        "not_confirmed": order_states(workspace, unconfirmed),
        "spacing_s": SPACING, "measured": "edge's 200 → confirmation's .eml bundle written",
        "webhook_to_confirmation_s": percentiles(sorted(seconds.values())),
        "raw": seconds, "workspace": str(workspace.root),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    print(json.dumps(measure_realtime(int(sys.argv[1]) if len(sys.argv) > 1 else 20),
                     indent=2, default=str))
