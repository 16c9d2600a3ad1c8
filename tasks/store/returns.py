"""Units customers are sending or have sent back, per order line (SQL only).

Read by everything that must not talk about goods the customer no longer has: cross-sell and
replenishment (no offer built on a returned item), review requests (none for an item already
returned: the customer does not have it) and the returns policy (what is still returnable).
A return counts from the moment it is requested until it is rejected; kept-with-credit goods
stay with the customer, so they count as kept.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.states import ReturnStatus
from tasks.store.models import OrderLine, Return, ReturnLine

# A rejected return never left; kept-with-credit goods stay with the customer.
NOT_GOING_BACK = (ReturnStatus.REJECTED, ReturnStatus.KEPT_WITH_CREDIT)


def returned_units(session: Session, order_ids: Iterable[int]) -> dict[int, dict[int, int]]:
    """order id → order line id → units in returns not rejected (requested up to refunded)."""
    ids = sorted(set(order_ids))
    found: dict[int, dict[int, int]] = defaultdict(dict)
    if not ids:
        return found
    query = (select(Return.order_id, ReturnLine.order_line_id, func.sum(ReturnLine.quantity))
             .join(ReturnLine, ReturnLine.return_id == Return.id)
             .where(Return.order_id.in_(ids), Return.status.not_in(NOT_GOING_BACK))
             .group_by(Return.order_id, ReturnLine.order_line_id))
    for order_id, line_id, units in session.execute(query):
        found[order_id][line_id] = int(units)
    return found


def units_not_kept(session: Session, order_ids: Iterable[int]) -> dict[int, dict[int, int]]:
    """order id → order line id → units in returns not rejected, less the units a refunded
    return and the source's refunds (`refunded_quantity`) both count: a return refunded here
    and then refunded by the store at Shopify is the same units twice. What the returns policy
    subtracts besides `refunded_quantity`, so each unit that left is counted once."""
    units = returned_units(session, order_ids)
    if not units:
        return units
    query = (select(ReturnLine.order_line_id, func.sum(ReturnLine.quantity),
                    OrderLine.refunded_quantity)
             .join(Return, Return.id == ReturnLine.return_id)
             .join(OrderLine, OrderLine.id == ReturnLine.order_line_id)
             .where(Return.order_id.in_(list(units)), Return.status == ReturnStatus.REFUNDED)
             .group_by(ReturnLine.order_line_id, OrderLine.refunded_quantity))
    both = {line_id: min(int(n), refunded or 0) for line_id, n, refunded in session.execute(query)}
    return {order_id: {line_id: n - both.get(line_id, 0) for line_id, n in lines.items()}
            for order_id, lines in units.items()}


def returned_skus(session: Session, order_ids: Iterable[int]) -> dict[int, set[str]]:
    """order id → SKUs of which every unit bought (less refunds) is in a return."""
    units = returned_units(session, order_ids)
    if not units:
        return {}
    query = select(OrderLine.order_id, OrderLine.id, OrderLine.sku, OrderLine.quantity,
                   OrderLine.refunded_quantity).where(OrderLine.order_id.in_(list(units)))
    bought: dict[tuple[int, str], int] = defaultdict(int)
    back: dict[tuple[int, str], int] = defaultdict(int)
    for order_id, line_id, sku, quantity, refunded in session.execute(query):
        if sku:
            bought[(order_id, sku)] += quantity - (refunded or 0)
            back[(order_id, sku)] += units[order_id].get(line_id, 0)
    gone: dict[int, set[str]] = defaultdict(set)
    for (order_id, sku), kept in bought.items():
        if back[(order_id, sku)] > 0 and back[(order_id, sku)] >= kept:
            gone[order_id].add(sku)
    return dict(gone)
