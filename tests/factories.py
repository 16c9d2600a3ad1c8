"""Build orders, products and customers directly in the database for stage tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from itertools import count
from typing import Any

from sqlalchemy.orm import Session

from tasks.store.journal import schedule_steps
from tasks.store.models import Customer, Order, OrderLine, Product

_ids = count(1001)

US_ADDRESS = {
    "name": "Ada Lovelace", "address1": "1 Analytical Way", "city": "Portland",
    "province_code": "OR", "zip": "97209", "country_code": "US",
}
CATALOG = [
    ("MUG-1", "Glass mug", "glassware", ["fragile", "glass"], 10, 400, "18.00"),
    ("COF-1", "Coffee beans", "coffee", ["perishable"], 50, 250, "14.00"),
    ("RING-1", "Gold ring", "jewelry", [], 3, 10, "900.00"),
    ("TEE-1", "Cotton tee", "apparel", [], 100, 200, "25.00"),
]


def add_catalog(session: Session, now: datetime) -> dict[str, Product]:
    products = {}
    for sku, title, category, tags, stock, grams, price in CATALOG:
        products[sku] = Product(sku=sku, title=title, category=category, tags=tags, stock=stock,
                                grams=grams, price=Decimal(price), attributes={}, updated_at=now)
    session.add_all(products.values())
    session.flush()
    return products


def add_customer(session: Session, now: datetime, email: str, **fields: Any) -> Customer:
    customer = Customer(email=email, first_name=fields.pop("first_name", "Ada"),
                        last_name="Lovelace", created_at=now, updated_at=now, **fields)
    session.add(customer)
    session.flush()
    return customer


def add_order(
    session: Session,
    now: datetime,
    lines: list[tuple[str, int, str]] = (("TEE-1", 1, "25.00"),),
    state: str = "received",
    step: str | None = "verify",
    customer: Customer | None = None,
    **fields: Any,
) -> Order:
    """An order with (sku, quantity, unit price) lines, in `state`, with `step` due now."""
    number = next(_ids)
    email = fields.pop("email", f"buyer{number}@example.com")
    customer = customer or add_customer(session, now, email)
    subtotal = sum(Decimal(price) * qty for _, qty, price in lines)
    defaults: dict[str, Any] = dict(
        source="shopify", external_id=str(number), name=f"#{number}", payload_hash="x" * 64,
        email=email, currency="USD", financial_status="paid", subtotal=subtotal,
        discounts=Decimal("0"), shipping=Decimal("5.00"), tax=Decimal("0"),
        total=subtotal + Decimal("5.00"), shipping_code="standard", shipping_title="Standard",
        shipping_address=dict(US_ADDRESS), placed_at=now - timedelta(hours=1),
        received_at=now, updated_at=now, state=state,
    )
    order = Order(customer_id=customer.id, **{**defaults, **fields})
    order.lines = [
        OrderLine(position=i, sku=sku, title=sku, quantity=qty, unit_price=Decimal(price),
                  total_discount=Decimal("0"))
        for i, (sku, qty, price) in enumerate(lines)
    ]
    session.add(order)
    session.flush()
    if step:
        schedule_steps(session, [(order.id, step, now)], now)
    return order


def seed_demo_store(engine, now: datetime, folder, orders: int, seed: int) -> None:
    """The demo catalog and `orders` demo orders, ingested through intake as files would be."""
    import json

    from infra.tooling.demo_data import demo_catalog, demo_orders
    from tasks.intake import ingest_orders, ingest_products, read_orders, read_products
    from tasks.store.db import session_scope

    catalog, placed = folder / "catalog.jsonl", folder / "orders.jsonl"
    catalog.write_text("".join(json.dumps(p) + "\n" for p in demo_catalog(seed)))
    placed.write_text("".join(json.dumps(o) + "\n" for o in demo_orders(orders, seed, now)))
    with session_scope(engine) as session:
        ingest_products(session, list(read_products(catalog)), now)
    with session_scope(engine) as session:
        ingest_orders(session, list(read_orders(placed)), now)
