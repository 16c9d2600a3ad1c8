"""Replacement orders: what an exchange or a service case's `replacement` decision sends.

A replacement is a new order (source "replacement", external id = the caller's effect key, so
the (source, external_id) unique constraint makes a rerun a no-op) named after the order it
replaces (#1001-R1, #1001-R2 ...), for the same customer, address, currency, locale and shipping
method, with `replaces_order_id` set and nothing to pay: unit prices and every total 0,
financial status "paid". It starts at "received" with its verify step due now, like an order
from intake, so verification (stock is reserved), packing (its own documents) and confirmation
run as for any order; loyalty earns nothing on it (its value is 0). Both orders' timelines get a
"replacement" event naming the other.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tasks.runtime import Runtime
from tasks.store.db import is_postgres
from tasks.store.journal import RECEIVED, record_events, schedule_step
from tasks.store.models import Order, OrderLine

SOURCE = "replacement"
EVENT = "replacement"
FIRST_STEP = "verify"
PAID = "paid"  # nothing to capture: verification's payment rule lets it through
ZERO = Decimal(0)
KEY_LENGTH = 64  # orders.external_id


class ReplacementError(ValueError):
    """A replacement that cannot be created; the message is one line for the operator."""


@dataclass(frozen=True)
class ReplacementLine:
    sku: str | None
    title: str
    variant_title: str | None
    quantity: int
    variant_id: str | None = None
    grams: int = 0


@dataclass(frozen=True)
class ReplacementRequest:
    original_order_id: int
    key: str  # effect key, e.g. "return:12:exchange", "case:7:replacement"
    lines: tuple[ReplacementLine, ...]
    reason: str


def create_replacements(
    session: Session, requests: Sequence[ReplacementRequest], now: datetime, rt: Runtime,
    actor: str,
) -> dict[str, int]:
    """key → replacement order id for every request; keys seen before return their order and
    create nothing. The caller owns the transaction."""
    wanted = list({r.key: r for r in reversed(requests)}.values())[::-1]  # first per key
    for request in wanted:
        check_request(request)
    found = replacement_ids(session, [r.key for r in wanted])
    new = [r for r in wanted if r.key not in found]
    if not new:
        return found
    originals = _originals(session, {r.original_order_id for r in new})
    names = _names(session, new, originals)
    created = _insert_orders(session, [_order_row(r, originals[r.original_order_id],
                                                  names[r.key], now) for r in new])
    made = [r for r in new if r.key in created]  # a concurrent caller may have been first
    _insert_lines(session, made, created)
    schedule_step(session, FIRST_STEP, [(created[r.key], now) for r in made], now)
    record_events(session, _events(made, created, originals, names, now, actor))
    return found | replacement_ids(session, [r.key for r in new])


def check_request(request: ReplacementRequest) -> None:
    if not request.key or len(request.key) > KEY_LENGTH:
        raise ReplacementError(f"replacement key must be 1-{KEY_LENGTH} characters")
    if not request.lines:
        raise ReplacementError(f"replacement {request.key}: no lines to send")
    bad = [line.title for line in request.lines if line.quantity < 1]
    if bad:
        raise ReplacementError(f"replacement {request.key}: quantity below 1 for {bad[0]}")


def replacement_ids(session: Session, keys: Sequence[str]) -> dict[str, int]:
    """key → id of the replacement orders already created under these keys."""
    if not keys:
        return {}
    query = select(Order.external_id, Order.id).where(
        Order.source == SOURCE, Order.external_id.in_(sorted(set(keys))))
    return dict(session.execute(query).tuples().all())


def _originals(session: Session, order_ids: set[int]) -> dict[int, Order]:
    orders = {o.id: o for o in session.scalars(
        select(Order).where(Order.id.in_(sorted(order_ids))))}
    missing = sorted(order_ids - set(orders))
    if missing:
        raise ReplacementError(f"no order {', '.join(map(str, missing))} to replace")
    return orders


def _names(
    session: Session, requests: Sequence[ReplacementRequest], originals: dict[int, Order]
) -> dict[str, str]:
    """#1001-R{n}: n counts the original's replacements, those of this call included."""
    query = (select(Order.replaces_order_id, func.count())
             .where(Order.replaces_order_id.in_(sorted(originals)))
             .group_by(Order.replaces_order_id))
    made: Counter[int] = Counter(dict(session.execute(query).tuples().all()))
    names = {}
    for request in requests:
        original = originals[request.original_order_id]
        made[original.id] += 1
        names[request.key] = f"{display_name(original)}-R{made[original.id]}"[:64]
    return names


def display_name(order: Order) -> str:
    return order.name or f"#{order.external_id}"


def _order_row(
    request: ReplacementRequest, original: Order, name: str, now: datetime
) -> dict[str, Any]:
    """The original's customer, address, currency, locale and method; nothing to pay."""
    return {
        "source": SOURCE, "external_id": request.key, "name": name,
        "payload_hash": hashlib.sha256(f"{SOURCE}:{request.key}".encode()).hexdigest(),
        "previous_hashes": [], "customer_id": original.customer_id, "email": original.email,
        "currency": original.currency, "locale": original.locale, "financial_status": PAID,
        "subtotal": ZERO, "discounts": ZERO, "shipping": ZERO, "tax": ZERO, "total": ZERO,
        "taxes_included": original.taxes_included, "discount_codes": [], "tax_lines": [],
        "shipping_code": original.shipping_code, "shipping_title": original.shipping_title,
        "shipping_address": dict(original.shipping_address or {}), "gift_note": None,
        "customer_note": None, "note_attributes": {}, "tags": [],
        "accepts_marketing": original.accepts_marketing, "placed_at": now, "cancelled_at": None,
        "state": RECEIVED, "hold_reason": None, "promised_delivery": None,
        "stock_reserved": False, "received_at": now, "updated_at": now,
        "replaces_order_id": original.id,
    }


def _insert_orders(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """INSERT ... ON CONFLICT (source, external_id) DO NOTHING; key → id of those inserted."""
    dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
    statement = (dialect_insert(Order).on_conflict_do_nothing(
        index_elements=["source", "external_id"]).returning(Order.external_id, Order.id))
    return dict(session.execute(statement, rows).tuples().all())


def _insert_lines(
    session: Session, requests: Sequence[ReplacementRequest], created: dict[str, int]
) -> None:
    rows = [
        {"order_id": created[r.key], "position": position, "external_id": None,
         "sku": line.sku, "title": line.title, "variant_title": line.variant_title,
         "quantity": line.quantity, "unit_price": ZERO, "total_discount": ZERO,
         "grams": line.grams, "gift_card": False, "requires_shipping": True,
         "variant_id": line.variant_id, "refunded_quantity": 0, "properties": {}}
        for r in requests for position, line in enumerate(r.lines, start=1)
    ]
    if rows:
        session.execute(OrderLine.__table__.insert(), rows)


def _events(
    requests: Sequence[ReplacementRequest], created: dict[str, int],
    originals: dict[int, Order], names: dict[str, str], now: datetime, actor: str,
) -> list[dict[str, Any]]:
    """The new order's "received", and a "replacement" event on each order naming the other."""
    rows = []
    for r in requests:
        original, new_id = originals[r.original_order_id], created[r.key]
        common = {"at": now, "from_state": None, "actor": actor}
        rows += [
            {**common, "order_id": new_id, "kind": "state", "to_state": RECEIVED,
             "detail": {"source": SOURCE, "replaces_order_id": original.id}},
            {**common, "order_id": new_id, "kind": EVENT, "to_state": None,
             "detail": {"replaces_order_id": original.id, "replaces": display_name(original),
                        "key": r.key, "reason": r.reason}},
            {**common, "order_id": original.id, "kind": EVENT, "to_state": None,
             "detail": {"replacement_order_id": new_id, "replacement": names[r.key],
                        "key": r.key, "reason": r.reason}},
        ]
    return rows


def shipped_lines(order: Order) -> tuple[ReplacementLine, ...]:
    """The units the customer kept of the lines that ship: what a lost parcel held."""
    return tuple(
        ReplacementLine(line.sku, line.title, line.variant_title, line.kept_quantity,
                        line.variant_id, line.grams or 0)
        for line in order.lines
        if line.requires_shipping is not False and not line.gift_card and line.kept_quantity
    )
