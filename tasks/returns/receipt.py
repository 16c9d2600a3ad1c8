"""Received goods: the refund or the exchange, at once (and the helpers decisions.py shares).

Refund: `refund_amount` = goods − restocking fee − return shipping fee (never below 0); the
order's points are reversed for exactly the goods returned (tasks/loyalty/reversal.py, key
`return:{id}:refund`); a credit note corrects the invoice (tasks/credit_notes.py, same key);
status refunded; the customer is told. journeys does not move money: the store refunds the
payment (its admin or payment provider), as the credit note and the mail say.
Stock is not touched: the catalogue feed owns `products.stock`, a restock shows up there.

Exchange: a replacement order (tasks/replacements.py, key `return:{id}:exchange`: no charge,
linked to the original, verified, packed and confirmed like any order); status exchanged; the
customer's mail links the replacement's order page.

A Shopify return that Shopify already refunded (a recorded refunds/create naming this return)
has had its points reversed and its credit note issued by that refund: not again here; nor
the units of a page return the store refunded at Shopify before receiving the parcel
(tasks/returns/overlap.py: each unit is refunded once, whichever way came first).
Every step is keyed or compare-and-set, so settling twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.attributes import set_committed_value

from tasks.credit_notes import CreditIn, issue_credit_notes
from tasks.links import Purpose, link_url
from tasks.loyalty.reversal import Refund, reverse_refunds
from tasks.messaging.outbox import enqueue
from tasks.replacements import ReplacementLine, ReplacementRequest, create_replacements
from tasks.returns.notices import return_notice
from tasks.returns.overlap import refunded_at_source
from tasks.runtime import Runtime
from tasks.states import ReturnStatus
from tasks.store.db import is_postgres
from tasks.store.journal import record_events
from tasks.store.models import Order, Product, Return
from tasks.store.refunds import refund_events

EVENT = "return"  # the timeline kind of every step of a return
SYSTEM = "journeys"
CENT = Decimal("0.01")
REFUND, EXCHANGE = "refund", "exchange"


# ---------------------------------------------------------------- shared with decisions.py


def locked_returns(session: Session, return_ids: Iterable[int]) -> list[Return]:
    """The returns with their lines, fresh, locked on PostgreSQL (SQLite: one writer), so a
    status read here is still the status when the caller changes it."""
    ids = sorted(set(return_ids))
    if not ids:
        return []
    query = (select(Return).where(Return.id.in_(ids)).order_by(Return.id)
             .options(selectinload(Return.lines)).execution_options(populate_existing=True))
    if is_postgres(session):
        query = query.with_for_update(of=Return)
    return list(session.scalars(query))


def orders_of(session: Session, returns: Sequence[Return]) -> dict[int, Order]:
    ids = sorted({r.order_id for r in returns})
    if not ids:
        return {}
    query = (select(Order).where(Order.id.in_(ids))
             .options(selectinload(Order.lines), selectinload(Order.customer)))
    return {order.id: order for order in session.scalars(query)}


def move(session: Session, moves: Sequence[tuple[Return, dict[str, Any]]], from_status: str,
         to_status: str, now: datetime) -> list[Return]:
    """Compare-and-set in one executemany: each return still `from_status` gets `to_status`
    and its values (every move of a call sets the same columns). Returns those moved."""
    moves = [(ret, values) for ret, values in moves if ret.status == from_status]
    if not moves:
        return []
    columns = sorted(moves[0][1])
    table = Return.__table__
    session.connection().execute(
        update(table).where(table.c.id == bindparam("b_id"), table.c.status == from_status)
        .values(status=to_status, updated_at=now, **{c: bindparam(f"b_{c}") for c in columns}),
        [{"b_id": ret.id, **{f"b_{c}": values[c] for c in columns}} for ret, values in moves])
    for ret, values in moves:  # the loaded rows say what the table now says
        for column, value in {**values, "status": to_status, "updated_at": now}.items():
            set_committed_value(ret, column, value)
    return [ret for ret, _ in moves]


def event(ret: Return, decision: str, actor: str, now: datetime, **detail: Any
          ) -> dict[str, Any]:
    """The order timeline's row for a step of a return."""
    return {"order_id": ret.order_id, "at": now, "kind": EVENT, "from_state": None,
            "to_state": None, "actor": actor,
            "detail": {"rma": ret.rma, "decision": decision, **detail}}


def notify(session: Session, returns: Sequence[Return], kind: str, rt: Runtime, now: datetime,
           message: str | None = None, extra: dict[int, dict[str, Any]] | None = None) -> None:
    """The customer's mail for this step (H1's `return_notice`, one per return and kind)."""
    orders = orders_of(session, returns)
    rows = []
    for ret in returns:
        row = return_notice(ret, orders[ret.order_id], kind, rt, now, message=message)
        if extra and ret.id in extra:
            row = {**row, "context": {**row["context"], **extra[ret.id]}}
        rows.append(row)
    enqueue(session, rows, now)


# ---------------------------------------------------------------- settling


def settle(session: Session, returns: Sequence[Return], now: datetime, rt: Runtime
           ) -> dict[str, int]:
    """Refund or exchange every received return given; others are left alone."""
    received = [r for r in returns if r.status == ReturnStatus.RECEIVED]
    refunded = refund(session, [r for r in received if r.resolution == REFUND], now, rt)
    exchanged = exchange(session, [r for r in received if r.resolution == EXCHANGE], now, rt)
    return {"refunded": len(refunded), "exchanged": len(exchanged)}


def refund_amount(ret: Return) -> Decimal:
    """What the customer gets back: the goods less the fees the policy keeps back."""
    amount = ret.goods_value - (ret.restocking_fee or 0) - (ret.shipping_fee or 0)
    return max(amount, Decimal(0)).quantize(CENT)


def refund_key(ret: Return) -> str:
    return f"return:{ret.id}:refund"


def refund(session: Session, returns: Sequence[Return], now: datetime, rt: Runtime
           ) -> list[Return]:
    if not returns:
        return []
    orders = orders_of(session, returns)
    covered = {r.id for r in refunded_at_shopify(session, returns)}
    left = goods_left(session, [r for r in returns if r.id not in covered])
    reverse_refunds(session, [Refund(r.order_id, goods, refund_key(r))
                              for r, goods in left], now, rt)
    issue_credit_notes(session, [credit(r, orders[r.order_id], goods) for r, goods in left],
                       now, rt)
    moved = move(session, [(r, {"refund_amount": refund_amount(r), "closed_at": now})
                           for r in returns], ReturnStatus.RECEIVED, ReturnStatus.REFUNDED, now)
    record_events(session, [event(r, "refunded", SYSTEM, now, amount=str(r.refund_amount),
                                  currency=orders[r.order_id].currency) for r in moved])
    notify(session, moved, "refunded", rt, now)
    return moved


def refunded_at_shopify(session: Session, returns: Sequence[Return]) -> list[Return]:
    """Shopify returns a recorded Shopify refund names (refunds/create `return.id`)."""
    named = {r.external_id for r in returns if r.source == "shopify" and r.external_id}
    if not named:
        return []
    recorded = refund_events(session, [r.order_id for r in returns])
    covered = {(order_id, str(detail.get("return_id"))) for order_id, refunds in recorded.items()
               for detail in refunds.values() if detail.get("return_id")}
    return [r for r in returns if (r.order_id, r.external_id) in covered]


def goods_left(session: Session, returns: Sequence[Return]) -> list[tuple[Return, Decimal]]:
    """Each return with the value of its goods not refunded at Shopify already (the store may
    refund the payment there before the parcel is received here: tasks/returns/overlap.py);
    a return whose goods all were is left out (no second reversal, no second credit note)."""
    at_source = refunded_at_source(session, returns)
    left = [(r, r.goods_value - min(at_source.get(r.id, Decimal(0)), r.goods_value))
            for r in returns]
    return [(r, goods) for r, goods in left if goods > 0]


def credit(ret: Return, order: Order, goods: Decimal | None = None) -> CreditIn:
    """The credit note for a return's refund: the goods (or the part of them not refunded at
    Shopify already), less the fees kept back."""
    by_id = {line.id: line for line in order.lines}
    lines = [{"sku": by_id[rl.order_line_id].sku, "title": by_id[rl.order_line_id].title,
              "quantity": rl.quantity,
              "amount": str(line_value(by_id[rl.order_line_id], rl.quantity))}
             for rl in ret.lines if rl.order_line_id in by_id]
    goods = ret.goods_value if goods is None else goods
    fees = (ret.restocking_fee or 0) + (ret.shipping_fee or 0)
    return CreditIn(key=refund_key(ret), order_id=ret.order_id, goods=goods,
                    shipping=Decimal(0), fees=min(Decimal(fees), goods),
                    reason=f"Return {ret.rma}", lines=lines, return_id=ret.id)


def line_value(line: Any, quantity: int) -> Decimal:
    """What `quantity` units of an order line cost the customer, after its discount."""
    if not line.quantity:
        return Decimal(0)
    unit = line.unit_price - Decimal(line.total_discount or 0) / line.quantity
    return max(unit * quantity, Decimal(0)).quantize(CENT)


# ---------------------------------------------------------------- exchanges


def exchange(session: Session, returns: Sequence[Return], now: datetime, rt: Runtime
             ) -> list[Return]:
    if not returns:
        return []
    orders = orders_of(session, returns)
    products = products_of(session, [rl.exchange_sku for r in returns for rl in r.lines])
    requests = [replacement(r, orders[r.order_id], products) for r in returns]
    made = create_replacements(session, requests, now, rt, SYSTEM)
    moved = move(session, [(r, {"replacement_order_id": made[f"return:{r.id}:exchange"],
                                "closed_at": now}) for r in returns if
                           f"return:{r.id}:exchange" in made],
                 ReturnStatus.RECEIVED, ReturnStatus.EXCHANGED, now)
    record_events(session, [event(r, "exchanged", SYSTEM, now,
                                  replacement_order_id=r.replacement_order_id) for r in moved])
    links = {r.id: {"replacement_url": order_page(rt, r.replacement_order_id, now)}
             for r in moved}
    notify(session, moved, "exchanged", rt, now, extra=links)
    return moved


def products_of(session: Session, skus: Iterable[str | None]) -> dict[str, Product]:
    wanted = sorted({s for s in skus if s})
    if not wanted:
        return {}
    return {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(wanted)))}


def replacement(ret: Return, order: Order, products: dict[str, Product]) -> ReplacementRequest:
    """The units sent back, as the variants asked for (the same one when none was named)."""
    by_id = {line.id: line for line in order.lines}
    lines = []
    for rl in ret.lines:
        line = by_id[rl.order_line_id]
        wanted = products.get(rl.exchange_sku or "")
        lines.append(ReplacementLine(
            sku=rl.exchange_sku or line.sku, title=wanted.title if wanted else line.title,
            variant_title=None if wanted else line.variant_title, quantity=rl.quantity,
            variant_id=None if wanted else line.variant_id,
            grams=(wanted.grams if wanted else line.grams) or 0))
    return ReplacementRequest(original_order_id=order.id, key=f"return:{ret.id}:exchange",
                              lines=tuple(lines), reason=f"exchange for return {ret.rma}")


def order_page(rt: Runtime, order_id: int | None, now: datetime) -> str | None:
    if order_id is None:
        return None
    return link_url(rt.config.store.links_base_url, rt.settings.secret_key, Purpose.ORDER,
                    order_id, now)
