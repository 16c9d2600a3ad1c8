"""An order changed at the source before confirmation is re-verified and re-packed afresh."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from infra.tooling.demo_data import demo_catalog
from tasks.confirm import confirm
from tasks.intake import ingest_orders, ingest_products, read_orders, read_products
from tasks.pack import pack
from tasks.store.db import session_scope
from tasks.store.models import Artifact, Message, Order, Product
from tasks.verify import verify
from tests.conftest import FIXTURES

SKU = "NW-APP-001-M"  # the first line of the first Shopify fixture order


def _ingest(engine, path, now):
    with session_scope(engine) as session:
        return ingest_orders(session, list(read_orders(path)), now)


def _stage(engine, stage, now, runtime):
    with session_scope(engine) as session:
        ids = list(session.scalars(select(Order.id)))
        return stage(session, ids, now, runtime)


def test_change_before_confirmation_repacks_with_new_documents(engine, runtime, now, tmp_path):
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(p) + "\n" for p in demo_catalog(7)))
    with session_scope(engine) as session:
        ingest_products(session, list(read_products(catalog)), now)
    original = json.loads((FIXTURES / "orders_shopify.jsonl").read_text().splitlines()[0])
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps(original) + "\n")
    _ingest(engine, first, now)
    _stage(engine, verify, now, runtime)
    _stage(engine, pack, now, runtime)
    with session_scope(engine) as session:
        reserved_after_first = session.scalar(select(Product.reserved).where(Product.sku == SKU))

    changed = dict(original, line_items=[dict(original["line_items"][0], quantity=3)])
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps(changed) + "\n")
    later = now + timedelta(minutes=10)
    assert _ingest(engine, second, later).updated == 1
    for stage in (verify, pack, confirm):
        assert _stage(engine, stage, later, runtime).advanced == 1

    with session_scope(engine) as session:
        order = session.scalars(select(Order)).one()
        slips = session.scalars(select(Artifact).where(Artifact.kind == "packing_slip")
                                .order_by(Artifact.id)).all()
        message = session.scalars(select(Message)).one()
        reserved = session.scalar(select(Product.reserved).where(Product.sku == SKU))
    assert order.state == "confirmed"
    assert len(slips) == 2 and order.packing["documents"]["packing_slip"] == slips[1].ref
    assert reserved == reserved_after_first - 1 + 3  # the old reservation released, new one taken
    assert [line["quantity"] for line in message.context["order"]["lines"]] == [3]
    new_slip = runtime.archive.get(slips[1].ref).decode()
    assert "Stoneware" not in new_slip and "Stoneware" in runtime.archive.get(slips[0].ref).decode()
