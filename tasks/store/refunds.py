"""Refunds as recorded in the timeline, and the line quantities they give back.

Used by the topic actions (tasks/lifecycle.py) and by intake, which re-inserts an order's lines
and must give them their refunded quantities back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from tasks.store.models import OrderEvent, OrderLine

REFUND_EVENT = "refund"  # the timeline kind of a recorded refund, one per Shopify refund id


def refund_events(session: Session, order_ids: Iterable[int]) -> dict[int, dict[str, dict]]:
    """Each order's recorded refunds: order id → refund id → event detail (first one wins)."""
    ids = sorted(set(order_ids))
    found: dict[int, dict[str, dict]] = {oid: {} for oid in ids}
    if not ids:
        return found
    query = (select(OrderEvent.order_id, OrderEvent.detail)
             .where(OrderEvent.order_id.in_(ids), OrderEvent.kind == REFUND_EVENT)
             .order_by(OrderEvent.id))
    for order_id, detail in session.execute(query):
        found[order_id].setdefault(str(detail.get("refund_id")), detail)
    return found


def refresh_refunded_quantities(session: Session, order_ids: Sequence[int]) -> dict[int, int]:
    """Set each line's `refunded_quantity` from the recorded refunds (each refund once, capped
    at the line's quantity): a recompute, so lines intake re-inserted get theirs back.
    Returns line id → refunded units for every line of these orders."""
    by_line: Counter[tuple[int, str]] = Counter()
    for order_id, refunds in refund_events(session, order_ids).items():
        for detail in refunds.values():
            for line_id, quantity in (detail.get("lines") or {}).items():
                by_line[(order_id, str(line_id))] += int(quantity)
    table = OrderLine.__table__
    lines = session.execute(select(table.c.id, table.c.order_id, table.c.external_id,
                                   table.c.quantity, table.c.refunded_quantity)
                            .where(table.c.order_id.in_(sorted(set(order_ids))))).all()
    values = {ln.id: min(by_line[(ln.order_id, ln.external_id)], ln.quantity) for ln in lines}
    changed = [{"b_id": ln.id, "b_qty": values[ln.id]} for ln in lines
               if ln.refunded_quantity != values[ln.id]]
    if changed:
        session.connection().execute(
            update(table).where(table.c.id == bindparam("b_id"))
            .values(refunded_quantity=bindparam("b_qty")), changed)
    return values
