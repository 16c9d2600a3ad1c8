"""One refund per unit, whichever way it came first: a return journeys refunded, or a refund
the store made at Shopify.

journeys moves no money, so after a return from our page is refunded here (points reversed,
credit note issued) the store refunds the payment at Shopify, and Shopify's refunds/create
names the same units again, without a return id. Counting both would reverse the points twice
and issue two credit notes. Per order line, units are matched in time order: a Shopify refund's
units are first matched against units journeys returns have refunded and Shopify has not
matched yet; a return's units against Shopify-refunded units earlier returns have not matched.
Only the units left over (and their value) are reversed and credited again.

Refunds naming a Shopify return (`return_id`) are matched by that id instead (lifecycle
`not_refunded_here`), and returns opened from Shopify are left to that match.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.states import ReturnStatus
from tasks.store.models import OrderLine, Return, ReturnLine
from tasks.store.refunds import refund_events

CENT = Decimal("0.01")
SHOPIFY = "shopify"


def refunded_returns(session: Session, order_ids: Iterable[int], before_id: int | None = None
                     ) -> dict[int, Counter[int]]:
    """order id → line id → units journeys refunded through returns not opened at Shopify
    (only returns with an id below `before_id` when given)."""
    ids = sorted(set(order_ids))
    found: dict[int, Counter[int]] = defaultdict(Counter)
    if not ids:
        return found
    query = (select(Return.order_id, ReturnLine.order_line_id, func.sum(ReturnLine.quantity))
             .join(ReturnLine, ReturnLine.return_id == Return.id)
             .where(Return.order_id.in_(ids), Return.status == ReturnStatus.REFUNDED,
                    Return.source != SHOPIFY)
             .group_by(Return.order_id, ReturnLine.order_line_id))
    if before_id is not None:
        query = query.where(Return.id < before_id)
    for order_id, line_id, units in session.execute(query):
        found[order_id][line_id] += int(units)
    return found


def order_lines(session: Session, order_ids: Iterable[int]) -> dict[int, list[Any]]:
    """order id → its lines (id, external id, quantity, price, discount), one query."""
    query = select(OrderLine.order_id, OrderLine.id, OrderLine.external_id, OrderLine.quantity,
                   OrderLine.unit_price, OrderLine.total_discount).where(
        OrderLine.order_id.in_(sorted(set(order_ids))))
    found: dict[int, list[Any]] = defaultdict(list)
    for row in session.execute(query):
        found[row.order_id].append(row)
    return found


def unit_value(line: Any) -> Decimal:
    """What one unit of the line cost the customer, after the line's discount."""
    if not line.quantity:
        return Decimal(0)
    return max(line.unit_price - Decimal(line.total_discount or 0) / line.quantity, Decimal(0))


def matched(units: int, before: int, other: int) -> int:
    """Of `units` refunded now, after `before` refunded the same way earlier, how many the
    `other` way's units already refunded (first come, first matched)."""
    return max(0, min(before + units, other) - min(before, other))


def shopify_refunds_left(session: Session, recorded: Mapping[int, dict[str, dict]]
                         ) -> dict[int, dict[str, dict]]:
    """The recorded Shopify refunds with the units journeys returns already refunded taken
    out: a refund's goods become the value of its units left (never more than it said); a
    refund left with no goods and no shipping is dropped."""
    ours = refunded_returns(session, [oid for oid, refunds in recorded.items() if refunds])
    if not ours:
        return dict(recorded)
    lines = order_lines(session, list(ours))
    return {oid: (refunds if oid not in ours else _left(refunds, ours[oid], lines[oid]))
            for oid, refunds in recorded.items()}


def _left(refunds: dict[str, dict], ours: Counter[int], lines: Sequence[Any]
          ) -> dict[str, dict]:
    by_external = {str(line.external_id): line for line in lines if line.external_id}
    before: Counter[int] = Counter()
    kept = {}
    for refund_id, detail in refunds.items():  # in the order they were recorded
        if detail.get("return_id"):
            kept[refund_id] = detail
            continue
        covered = Decimal(0)
        for external_id, units in (detail.get("lines") or {}).items():
            line = by_external.get(str(external_id))
            if line is not None:
                covered += matched(int(units), before[line.id], ours[line.id]) * unit_value(line)
                before[line.id] += int(units)
        goods = max(Decimal(str(detail.get("goods") or 0)) - covered, Decimal(0)).quantize(CENT)
        if goods > 0 or Decimal(str(detail.get("shipping") or 0)) > 0:
            kept[refund_id] = detail if not covered else {**detail, "goods": str(goods),
                                                          "matched_return_units": True}
    return kept


def refunded_at_source(session: Session, returns: Sequence[Return]) -> dict[int, Decimal]:
    """Return id → the value of its units Shopify refunds already refunded (refunds that name
    no Shopify return), matched after the units of earlier journeys returns."""
    ours = [r for r in returns if r.source != SHOPIFY]
    if not ours:
        return {}
    order_ids = {r.order_id for r in ours}
    source = _source_units(session, order_ids)
    if not source:
        return {}
    lines = order_lines(session, order_ids)
    earlier = refunded_returns(session, order_ids, before_id=min(r.id for r in ours))
    covered: dict[int, Decimal] = {}
    for ret in sorted(ours, key=lambda r: r.id):
        by_id = {line.id: line for line in lines[ret.order_id]}
        value = Decimal(0)
        for rl in ret.lines:
            units = matched(rl.quantity, earlier[ret.order_id][rl.order_line_id],
                            source[ret.order_id][rl.order_line_id])
            value += units * unit_value(by_id[rl.order_line_id])
            earlier[ret.order_id][rl.order_line_id] += rl.quantity
        covered[ret.id] = value.quantize(CENT)
    return covered


def _source_units(session: Session, order_ids: Iterable[int]) -> dict[int, Counter[int]]:
    """order id → line id → units refunded by recorded Shopify refunds naming no return."""
    recorded = refund_events(session, order_ids)
    lines = order_lines(session, [oid for oid, refunds in recorded.items() if refunds])
    found: dict[int, Counter[int]] = defaultdict(Counter)
    for order_id, refunds in recorded.items():
        by_external = {str(line.external_id): line.id for line in lines.get(order_id, [])
                       if line.external_id}
        for detail in refunds.values():
            if detail.get("return_id"):
                continue
            for external_id, units in (detail.get("lines") or {}).items():
                if str(external_id) in by_external:
                    found[order_id][by_external[str(external_id)]] += int(units)
    return found
