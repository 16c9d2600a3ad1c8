"""Batch loaders the stages share: one query each, whatever the batch size.

Only the store below this module (models, db, journal): the domain modules call these, never
the other way round. Loaders that lock rows for a state change stay with the stage that
changes them (journal.claim_orders, verify's stock reservation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from tasks.store.db import is_postgres
from tasks.store.journal import CANCELLED
from tasks.store.models import Order, OrderLine, Product


def products_by_sku(session: Session, skus: Iterable[str | None]) -> dict[str, Product]:
    """The catalog entries of these SKUs (empty and unknown ones are left out), by SKU."""
    wanted = {sku for sku in skus if sku}
    if not wanted:
        return {}
    return {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(wanted)))}


def products_of(session: Session, orders: Sequence[Order]) -> dict[str, Product]:
    """The catalog entries of the batch's lines, by SKU: one query."""
    return products_by_sku(session, (line.sku for order in orders for line in order.lines))


def products_ordered_by(session: Session, customer_ids: Iterable[int]) -> dict[int, list[Product]]:
    """customer id → the catalog entries of every SKU they ordered, in any order: one query."""
    wanted = sorted(set(customer_ids))
    if not wanted:
        return {}
    query = (
        select(Order.customer_id, Product)
        .join(OrderLine, OrderLine.order_id == Order.id)
        .join(Product, Product.sku == OrderLine.sku)
        .where(Order.customer_id.in_(wanted))
    )
    found: dict[int, dict[str, Product]] = {}
    for customer_id, product in session.execute(query):
        found.setdefault(customer_id, {})[product.sku] = product
    return {customer_id: list(products.values()) for customer_id, products in found.items()}


def delivered_orders(
    session: Session, order_ids: Sequence[int], *, skip_cancelled: bool = True, lock: bool = True
) -> list[Order]:
    """The batch's delivered orders with lines and customer, by id.

    By default a cancelled order is left out and the rows are locked (SKIP LOCKED on
    PostgreSQL), so a concurrent worker cannot take the same orders.
    """
    if not order_ids:
        return []
    query = (
        select(Order)
        .where(Order.id.in_(order_ids), Order.delivered_at.is_not(None))
        .order_by(Order.id)
        .options(selectinload(Order.lines), selectinload(Order.customer))
    )
    if skip_cancelled:
        query = query.where(Order.state != CANCELLED)
    if lock and is_postgres(session):
        query = query.with_for_update(skip_locked=True, of=Order)
    return list(session.scalars(query))
