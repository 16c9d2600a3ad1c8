"""Confirmation: promise a delivery date, queue the confirmation e-mail, mark orders confirmed.

The e-mail is only written to the outbox here, in the same transaction as the state change;
the dispatcher sends it afterwards (the flow runs it right after this stage). An order with
nothing to ship (gift cards, digital goods) is promised no delivery date; its confirmation says
it is complete and, once paid, it counts as delivered at confirmation (same transaction), so the
delivery-based follow-ups come as for a delivered parcel, except the delivery survey.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from tasks.config import Config
from tasks.delivery import estimate_delivery, resolve_method
from tasks.documents import replaced_order_name
from tasks.journey import StageResult
from tasks.messaging.compose import (
    customer_context,
    line_context,
    locale_of,
    order_mail,
    order_name,
    store_context,
)
from tasks.messaging.money import address_lines
from tasks.messaging.outbox import enqueue
from tasks.runtime import Runtime
from tasks.store.journal import CONFIRMED, PACKED, Transition, apply_transitions, claim_orders
from tasks.store.models import Order
from tasks.tracking.unshipped import watch_shipping
from tasks.verify import ships

STEP = "confirm"
TEMPLATE = "confirmation"
PAID = "paid"  # Shopify financial_status: fully captured (authorized or partially paid is not)
# Nothing was shipped: no delivery survey (it asks about the parcel), no fit survey (no garment).
NO_PARCEL_SKIPS = frozenset({"feedback_request", "fit_survey"})


def confirm(session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime) -> StageResult:
    """Confirm the batch's packed orders with the same few statements, whatever its size."""
    orders = claim_orders(session, order_ids, PACKED)
    cfg = rt.config
    promised = {order.id: promised_delivery(order, now, cfg) for order in orders}
    enqueue(session, [confirmation_message(o, promised[o.id], cfg, now) for o in orders], now)
    set_promised_delivery(session, promised)
    transitions = [
        Transition(oid, CONFIRMED, detail={"promised_delivery": day.isoformat() if day else None})
        for oid, day in promised.items()
    ]
    apply_transitions(session, STEP, PACKED, transitions, now)
    # flagged if no parcel by the ship date (an order with nothing to ship is delivered below)
    watch_shipping(session, [o for o in orders if ships(o)], promised, now, cfg)
    completed = complete_unshipped(session, orders, now, rt)
    return StageResult(
        stage=STEP,
        advanced=len(orders),
        skipped=len(set(order_ids)) - len(orders),  # no longer packed, or locked by a peer
        details={"messages_enqueued": len(orders), "completed_without_shipping": completed},
    )


def complete_unshipped(
    session: Session, orders: Sequence[Order], now: datetime, rt: Runtime
) -> int:
    """Paid orders with nothing to ship: confirmed → delivered now (no parcel will ever arrive),
    with the steps delivery schedules, except the delivery survey (there was no parcel)."""
    from tasks.tracking.stage import mark_delivered, tracking_config  # it imports this module

    done = {o.id: now for o in orders if not ships(o) and o.financial_status == PAID}
    settings = tracking_config(rt.config)
    mark_delivered(session, CONFIRMED, done, now, settings, skip_steps=NO_PARCEL_SKIPS)
    return len(done)


def shipping_method(order: Order, cfg: Config) -> str:
    return resolve_method(order.shipping_code, order.shipping_title, cfg.shipping)


def promised_delivery(order: Order, now: datetime, cfg: Config) -> date | None:
    """Counted from when the order was placed, or from now if it was held past that point;
    None when nothing is to be shipped."""
    if not ships(order):
        return None
    country = (order.shipping_address or {}).get("country_code")
    start = max(order.placed_at, now)
    return estimate_delivery(start, shipping_method(order, cfg), country, cfg.shipping)


def set_promised_delivery(session: Session, promised: dict[int, date | None]) -> None:
    promised = {oid: day for oid, day in promised.items() if day is not None}
    if not promised:
        return
    table = Order.__table__
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values(promised_delivery=bindparam("b_day"))
    )
    rows = [{"b_id": oid, "b_day": day} for oid, day in promised.items()]
    session.connection().execute(statement, rows)


def confirmation_message(
    order: Order, promised: date | None, cfg: Config, now: datetime
) -> dict[str, Any]:
    context = confirmation_context(order, promised, cfg)
    return order_mail(cfg, order, STEP, TEMPLATE, context, now)


def confirmation_context(order: Order, promised: date | None, cfg: Config) -> dict[str, Any]:
    """A JSON snapshot of what the e-mail shows, so a resend shows exactly the same thing."""
    locale = locale_of(order, cfg)
    method = shipping_method(order, cfg)
    return {
        "store": store_context(cfg),
        "customer": customer_context(order),
        "order": {
            "id": order.id,
            "name": order_name(order),
            "currency": order.currency,
            "locale": locale,
            "lines": [line_context(line) for line in order.lines if line.kept_quantity],
            "items_total": str(items_total(order)),
            "subtotal": str(order.subtotal),
            "discounts": str(order.discounts),
            "discount_codes": discount_codes(order.discount_codes),
            "shipping": str(order.shipping),
            "shipping_method": order.shipping_title or cfg.shipping.methods[method].title,
            "tax": str(order.tax),
            "taxes_included": order.taxes_included,
            "total": str(order.total),
            "gift_note": order.gift_note,
            "shipping_address": dict(order.shipping_address or {}),
            "address_lines": address_lines(order.shipping_address or {}, locale),
            "promised_delivery": promised.isoformat() if promised else None,  # None: no parcel
            # A replacement (no charge) names the order it replaces; other orders lack the key.
            **({"replaces": name} if (name := replaced_order_name(order)) else {}),
        },
    }


def items_total(order: Order) -> Decimal:
    """The goods before discounts (Shopify's subtotal is after them)."""
    return sum((line.unit_price * line.kept_quantity for line in order.lines), Decimal(0))


def discount_codes(entries: list[Any]) -> list[str]:
    """Shopify gives `[{code, amount, type}]`; plain strings are accepted too."""
    codes = (entry if isinstance(entry, str) else entry.get("code") for entry in entries or [])
    return [code for code in codes if code]
