"""An orders/create webhook becomes a sent confirmation within seconds, on the running stack:
the edge stores it, asks for real-time intake, the task worker drains, verifies, packs,
confirms and sends — no sweep involved."""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime

import httpx

from infra.tooling.bench.realtime import confirmations_sent
from infra.tooling.demo_data import demo_catalog
from tasks.intake import ingest_products, read_products
from tasks.store.db import session_scope
from tests.conftest import FIXTURES, NOW
from tests.edge_process import shopify_headers

ORDERS = (FIXTURES / "orders_shopify.jsonl").read_text().splitlines()


def test_an_order_webhook_is_a_sent_confirmation_within_seconds(stack, app, tmp_path, figure):
    stack.local.wait_for_realtime()
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
        posted[str(order["id"])] = datetime.now(UTC)  # the task sends on the same real clock
        time.sleep(1.0)  # one order at a time, as a store's checkouts arrive
    sent: dict[str, datetime] = {}
    deadline = time.monotonic() + 90
    while len(sent) < len(posted) and time.monotonic() < deadline:
        sent = confirmations_sent(app, list(posted))
        time.sleep(0.2)
    assert set(sent) == set(posted), f"no confirmation for {set(posted) - set(sent)}"
    latencies = sorted((sent[k] - posted[k]).total_seconds() for k in posted)
    figure(f"real time: {len(latencies)} orders/create webhooks → confirmation sent: "
           f"p50 {statistics.median(latencies):.1f} s, max {latencies[-1]:.1f} s "
           "(warm task worker: edge → Prefect background task → drain, verify, pack, confirm, "
           "send; from the webhook's answer to the mail written)")
