"""Two sweeps at once over the same due orders: each order is processed once, mailed once.

Two separate processes, as two workers would be, each running the journey-sweep flow against
the same app database and the same Prefect server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

from prefect.settings import PREFECT_API_URL
from sqlalchemy import func, select

from tasks.demo_data import demo_catalog, demo_orders
from tasks.intake import ingest_orders, ingest_products, read_orders, read_products
from tasks.store.db import session_scope
from tasks.store.models import Message, Order, OrderEvent
from tests.conftest import ROOT

ORDERS = 400


def seed_store(engine, now, tmp_path) -> None:
    catalog, orders = tmp_path / "catalog.jsonl", tmp_path / "orders.jsonl"
    catalog.write_text("".join(json.dumps(p) + "\n" for p in demo_catalog(11)))
    orders.write_text("".join(json.dumps(o) + "\n" for o in demo_orders(ORDERS, 11, now)))
    with session_scope(engine) as session:
        ingest_products(session, list(read_products(catalog)), now)
    with session_scope(engine) as session:
        ingest_orders(session, list(read_orders(orders)), now)


def start_sweep(db_url: str, archive: str, now) -> subprocess.Popen:
    env = {**os.environ, "JOURNEYS_DATABASE_URL": db_url, "JOURNEYS_BATCH_SIZE": "25",
           "JOURNEYS_ARTIFACTS_URL": f"file://{archive}", "JOURNEYS_MAIL_TRANSPORT": "file",
           "JOURNEYS_SECRET_KEY": "test-secret", "JOURNEYS_CONFIG_DIR": str(ROOT / "configs"),
           "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--json", "--as-of",
                             now.isoformat()], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    assert "database is locked" not in err
    return json.loads(out)


def test_two_concurrent_sweeps_process_every_order_exactly_once(engine, db_url, flow_env, now,
                                                                 tmp_path):
    seed_store(engine, now, tmp_path)
    sweeps = [start_sweep(db_url, str(tmp_path / "archive"), now) for _ in range(2)]
    reports = [finish(p) for p in sweeps]

    with session_scope(engine) as session:
        changes = Counter(session.execute(
            select(OrderEvent.order_id, OrderEvent.to_state).where(OrderEvent.kind == "state")))
        confirmed = session.scalar(select(func.count()).where(Order.state == "confirmed"))
        mails = Counter(session.scalars(select(Message.order_id).where(
            Message.template == "confirmation", Message.status == "sent")))
    advanced = {stage: sum(r["stages"][stage]["advanced"] for r in reports)
                for stage in ("verify", "pack", "confirm")}
    print(f"\nscale-out: 2 sweeps, {ORDERS} orders, confirmed {confirmed}, "
          f"by run {[r['stages']['confirm']['advanced'] for r in reports]}, "
          f"duplicate state changes {sum(n - 1 for n in changes.values())}, "
          f"duplicate mails {sum(n - 1 for n in mails.values())}")
    assert confirmed > ORDERS // 2
    assert max(changes.values()) == 1  # no order moved into the same state twice
    assert advanced["confirm"] == confirmed == len(mails)  # each confirmed by exactly one run
    assert max(mails.values()) == 1  # and mailed exactly once
    assert all(r["manifest"]["unexplained"] == 0 for r in reports)
