"""An orders/create webhook becomes a sent confirmation within seconds, on the running stack:
the edge stores it, asks for real-time intake, the task worker drains, verifies, packs,
confirms and sends — no sweep involved."""

from __future__ import annotations

import json
import statistics
import time

import httpx
from sqlalchemy import select

from tasks.demo_data import demo_catalog
from tasks.intake import ingest_products, read_products
from tasks.store.db import session_scope
from tasks.store.models import Message, Order
from tests.conftest import FIXTURES, NOW
from tests.edge_process import shopify_headers

ORDERS = (FIXTURES / "orders_shopify.jsonl").read_text().splitlines()


def sent_confirmations(app, external_ids: list[str]) -> dict[str, object]:
    query = (select(Order.external_id, Message.sent_at).join(Message, Message.order_id == Order.id)
             .where(Order.external_id.in_(external_ids), Message.template == "confirmation",
                    Message.status == "sent"))
    with session_scope(app) as session:
        return dict(session.execute(query).tuples().all())


def test_an_order_webhook_is_a_sent_confirmation_within_seconds(stack, app, tmp_path, figure):
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(p) + "\n" for p in demo_catalog(7)))
    with session_scope(app) as session:
        ingest_products(session, list(read_products(catalog)), NOW)
    posted: dict[str, float] = {}
    for n, line in enumerate(ORDERS * 2):
        order = json.loads(line) | {"id": 7_700_000 + n, "name": f"#RT{n}"}
        body = json.dumps(order).encode()
        answer = httpx.post(f"{stack.edge_url}/webhooks/shopify", content=body, timeout=10,
                            headers=shopify_headers(body, "orders/create", f"rt-{n}"))
        assert answer.status_code == 200, answer.text
        posted[str(order["id"])] = time.monotonic()
        time.sleep(1.0)  # one order at a time, as a store's checkouts arrive
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 90
    while len(seen) < len(posted) and time.monotonic() < deadline:
        for external_id in sent_confirmations(app, list(posted)):
            seen.setdefault(external_id, time.monotonic())
        time.sleep(0.2)
    assert set(seen) == set(posted), f"no confirmation for {set(posted) - set(seen)}"
    latencies = sorted(seen[k] - posted[k] for k in posted)
    figure(f"real time: {len(latencies)} orders/create webhooks → confirmation sent: "
           f"p50 {statistics.median(latencies):.1f} s, max {latencies[-1]:.1f} s "
           "(edge → Prefect background task → task worker; polled every 0.2 s)")
