"""The seeded demo data: deterministic, realistic, and every order either parses or quarantines."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from infra.tooling.demo_data import (
    EDGE_KINDS,
    INVALID_KINDS,
    UNKNOWN_SKU,
    demo_catalog,
    demo_orders,
)
from tasks.intake import OrderIn, ProductIn, Rejected, ingest_orders, ingest_products
from tasks.intake.formats import order_from_json, products_from_shopify
from tasks.store.db import session_factory


def _kind(order: dict[str, Any]) -> str | None:
    cases = [a["value"] for a in order["note_attributes"] if a["name"] == "demo_case"]
    return cases[0] if cases else None


def _parse(order: dict[str, Any]) -> OrderIn | Rejected:
    raw = json.dumps(order)
    return order_from_json(json.loads(raw), "shopify", raw, f"demo:{order['name']}")


def test_same_seed_same_data_and_another_seed_differs(now):
    assert demo_catalog(3) == demo_catalog(3)
    assert demo_orders(120, 3, now) == demo_orders(120, 3, now)
    assert demo_orders(120, 3, now) != demo_orders(120, 4, now)
    assert demo_catalog(3) != demo_catalog(4)  # stock levels are drawn from the seed


def test_order_ids_are_stable_for_a_day_and_seed_and_new_for_another(now):
    def ids(seed: int, day: datetime) -> set[int]:
        return {o["id"] for o in demo_orders(20, seed, day)}

    assert ids(1, now) == ids(1, now)
    assert not ids(1, now) & ids(1, now + timedelta(days=1))
    assert not ids(1, now) & ids(2, now)


def test_catalog_covers_the_categories_packing_rules_care_about():
    catalog = demo_catalog(1)
    products = [p for c in catalog for p in products_from_shopify(c, json.dumps(c), "demo")]
    assert all(isinstance(p, ProductIn) for p in products)
    assert 35 <= len(catalog) <= 45
    by_category = Counter(p.category for p in products)
    assert set(by_category) >= {"apparel", "jeans", "shoes", "belts", "glassware", "ceramics",
                                "coffee", "food", "skincare", "furniture", "jewelry", "electronics"}
    assert all({"fragile", "glass"} <= set(p.tags) for p in products if p.category == "glassware")
    assert all("fragile" in p.tags for p in products if p.category == "ceramics")
    assert all("perishable" in p.tags for p in products if p.category in ("coffee", "food"))
    assert any(p.grams >= 20000 and "oversized" in p.tags for p in products)
    assert any(p.price is not None and p.price >= 500 for p in products if p.category == "jewelry")
    assert any("consumable_days" in p.attributes and "liquid" in p.tags for p in products)
    assert sum(p.stock <= 3 for p in products) >= 2
    assert len({p.sku for p in products}) == len(products)


def test_orders_are_recent_varied_and_all_parse_except_the_deliberately_invalid(now):
    orders = demo_orders(200, 11, now)
    kinds = Counter(_kind(o) for o in orders)
    assert set(EDGE_KINDS) <= set(kinds)
    assert 0.06 <= (len(orders) - kinds[None]) / len(orders) <= 0.10
    for order in orders:
        parsed = _parse(order)
        assert isinstance(parsed, Rejected) == (_kind(order) in INVALID_KINDS), order["name"]
        if isinstance(parsed, OrderIn):
            assert now - timedelta(days=2) <= parsed.placed_at <= now
    assert {o["currency"] for o in orders} == {"USD", "CAD", "GBP", "EUR"}
    assert {o["shipping_address"]["country_code"] for o in orders} == {"US", "CA", "GB", "DE"}
    emails = Counter(o["customer"]["id"] for o in orders)
    assert max(emails.values()) >= 2  # repeat customers
    assert any(o["customer"]["tags"] == "VIP" for o in orders)
    assert any(o["customer"]["orders_count"] == 1 for o in orders)


def test_edge_cases_look_like_what_verification_will_hold(now):
    orders = {_kind(o): o for o in demo_orders(200, 11, now) if _kind(o)}
    assert Decimal(orders["high_value"]["total_price"]) > 2500
    assert orders["unpaid"]["financial_status"] == "pending"
    cancelled = orders["cancelled"]
    assert cancelled["cancelled_at"] and cancelled["financial_status"] == "voided"
    assert orders["missing_zip"]["shipping_address"]["zip"] is None
    assert orders["unknown_sku"]["line_items"][0]["sku"] == UNKNOWN_SKU
    assert "fraud-suspected" in orders["risk_tagged"]["tags"]
    assert orders["gift"]["note"] and any(a["name"] == "gift_message"
                                          for a in orders["gift"]["note_attributes"])
    stock = {v["sku"]: v["inventory_quantity"] for p in demo_catalog(11) for v in p["variants"]}
    line = orders["out_of_stock"]["line_items"][0]
    assert line["quantity"] > stock[line["sku"]]


def test_demo_data_ingests_with_the_invalid_orders_quarantined(engine, now: datetime):
    catalog = demo_catalog(5)
    orders = demo_orders(150, 5, now)
    products = [p for c in catalog for p in products_from_shopify(c, json.dumps(c), "demo")]
    invalid = sum(_kind(o) in INVALID_KINDS for o in orders)
    with session_factory(engine)() as session, session.begin():
        catalog_result = ingest_products(session, products, now)
        order_result = ingest_orders(session, [_parse(o) for o in orders], now)
    assert catalog_result.accepted == len(products)
    assert invalid >= 1
    assert order_result.as_dict() == {"received": 150, "accepted": 150 - invalid, "updated": 0,
                                      "duplicates": 0, "quarantined": invalid, "deferred": 0}


def test_the_demo_hints_spell_journeys_as_this_shell_can_run_it(tmp_path, monkeypatch):
    """`journeys` is not on PATH after `infra/dev.py demo`: the hints name the venv's script,
    from the folder the command runs in (the project folder: `.venv/bin/journeys`)."""
    import sys
    from pathlib import Path

    from flows.display import journeys_command

    script = Path(sys.executable).parent / "journeys"
    assert script.exists()  # installed with the project (pyproject [project.scripts])
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(script.parent.parent.parent)
    assert journeys_command() == str(Path(script.parent.parent.name) / "bin" / "journeys")
    monkeypatch.chdir(tmp_path)
    assert journeys_command() == str(script)
    monkeypatch.setenv("PATH", str(script.parent))
    assert journeys_command() == "journeys"
