"""Opening returns: from the /returns/{token} page, an operator, Shopify or a cancellation
after shipping (return to sender). One call per batch; the caller owns the transaction.

A request is checked against the policy (tasks/returns/policy.py) and refused with one line
the customer can read (`ReturnRefused`) before anything is written. Then: the goods' value and
fees, the send-by date, a random RMA, the `returns` + `return_lines` rows (the request's
`key` is the return's effect key: the same key again returns the return already opened), a
timeline event, auto-approval when the policy allows it (else an operator decides:
tasks/returns/decisions.py), the customer's mail, and pending marketing about SKUs the customer
is sending back all of is cancelled (no review request or cross-sell for goods they return).

Only the page's requests face every policy rule: an operator, Shopify (the store approved it
there) and a return to sender are limited to the units bought and not yet refunded or returned.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from tasks.messaging.outbox import enqueue
from tasks.returns.notices import return_notice
from tasks.returns.policy import (
    ReturnableLine,
    auto_approval,
    available,
    exchange_options,
    fee_note,
    fees,
    money,
    returnable_lines,
)
from tasks.runtime import Runtime
from tasks.states import MessageStatus, ReturnStatus
from tasks.store.journal import insert_new, record_events
from tasks.store.models import Message, Order, Product, Return, ReturnLine
from tasks.store.returns import returned_skus, units_not_kept

SOURCES = ("page", "operator", "shopify", "cancellation")
RESOLUTIONS = ("refund", "exchange")
RETURN_TO_SENDER = "return_to_sender"
# Shopify's ReturnReason enum (shopify.dev/docs/api/admin-graphql/latest/enums/ReturnReason)
# → our reason keys; "other" when not configured.
SHOPIFY_REASONS = {
    "SIZE_TOO_SMALL": "too_small", "SIZE_TOO_LARGE": "too_big",
    "NOT_AS_DESCRIBED": "not_as_described", "DEFECTIVE": "damaged", "WRONG_ITEM": "wrong_item",
    "UNWANTED": "changed_mind", "STYLE": "changed_mind", "COLOR": "changed_mind",
}
RMA_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I/L: read over the phone
RMA_LENGTH = 8


class ReturnRefused(ValueError):
    """A request the policy does not allow; the message is one line for the customer."""


@dataclass(frozen=True)
class ReturnRequest:
    order_id: int
    lines: Mapping[int, int]  # order line id → units
    reason: str  # a key of returns.yaml reasons (see `reason_key` for Shopify and cancellations)
    resolution: str = "refund"  # refund | exchange
    exchange: Mapping[int, str] = field(default_factory=dict)  # order line id → sku wanted
    comment: str | None = None
    source: str = "page"  # page | operator | shopify | cancellation
    key: str = ""  # the return's effect key: the same key twice opens one return
    external_id: str | None = None  # Shopify's return id
    approve: bool = False  # approved at once (a return to sender)


@dataclass(frozen=True)
class Opened:
    """A request's return; `created` False when its key had opened it before."""

    key: str
    ret: Return
    created: bool


def shopify_reason(code: str | None, configured: Iterable[str]) -> str:
    """Shopify's return reason code as one of our configured keys, else "other"."""
    key = SHOPIFY_REASONS.get((code or "").upper(), (code or "").lower())
    return key if key in set(configured) else "other"


def new_rma() -> str:
    return "R-" + "".join(secrets.choice(RMA_ALPHABET) for _ in range(RMA_LENGTH))


def unique_rmas(session: Session, count: int) -> list[str]:
    """`count` fresh RMAs none of which is taken (one query per round; collisions are rare)."""
    picked: set[str] = set()
    while len(picked) < count:
        candidates = {new_rma() for _ in range(count - len(picked))} - picked
        taken = set(session.scalars(select(Return.rma).where(Return.rma.in_(candidates))))
        picked |= candidates - taken
    return sorted(picked)


def recent_returns(session: Session, customer_ids: Iterable[int], since: datetime
                   ) -> dict[int, int]:
    """customer id → returns requested since `since` (any status), one query."""
    ids = sorted(set(customer_ids))
    if not ids:
        return {}
    query = (select(Return.customer_id, func.count()).where(
        Return.customer_id.in_(ids), Return.requested_at >= since).group_by(Return.customer_id))
    return {cid: int(n) for cid, n in session.execute(query)}


# ---------------------------------------------------------------- validation


def check_request(request: ReturnRequest, order: Order | None, lines: list[ReturnableLine],
                  options: Mapping[str, list[Product]], rt: Runtime) -> None:
    """Raise ReturnRefused with a readable line when the request breaks the policy."""
    policy = rt.config.returns
    if order is None:
        raise ReturnRefused("we could not find this order")
    if request.source not in SOURCES:
        raise ReturnRefused(f"unknown source {request.source!r}")
    if request.source == "page" and not policy.enabled:
        raise ReturnRefused("returns are not taken online; see our return policy")
    check_reason(request, rt)
    wanted = {lid: qty for lid, qty in request.lines.items() if qty}
    if not wanted:
        raise ReturnRefused("choose at least one item to return")
    by_id = {line.line_id: line for line in lines}
    for line_id, qty in wanted.items():
        check_units(request, by_id.get(line_id), qty, order)
    if request.resolution == "exchange":
        check_exchange(request, wanted, by_id, options, rt)


def check_reason(request: ReturnRequest, rt: Runtime) -> None:
    if request.resolution not in RESOLUTIONS:
        raise ReturnRefused("choose a refund or an exchange")
    allowed = set(rt.config.returns.reasons)
    if request.source == "cancellation":
        allowed.add(RETURN_TO_SENDER)
    elif request.source == "shopify":
        allowed.add("other")
    if request.reason not in allowed:
        raise ReturnRefused("choose a reason for the return")


def check_units(request: ReturnRequest, line: ReturnableLine | None, qty: int, order: Order
                ) -> None:
    if line is None:
        raise ReturnRefused(f"that item is not part of order {order.name or order.id}")
    if not isinstance(qty, int) or qty < 0:
        raise ReturnRefused(f"{line.title}: choose a number of units")
    if request.source == "page" and line.why_not:
        raise ReturnRefused(f"{line.title} cannot be returned: {line.why_not}")
    limit = line.units if request.source == "page" else line.unreturned
    if qty > limit:
        raise ReturnRefused(f"{line.title}: at most {limit} can be returned")


def check_exchange(request: ReturnRequest, wanted: Mapping[int, int],
                   by_id: Mapping[int, ReturnableLine], options: Mapping[str, list[Product]],
                   rt: Runtime) -> None:
    """Each line exchanged for another variant of the same product, in stock for the units."""
    if not rt.config.returns.exchanges:
        raise ReturnRefused("exchanges are not offered; choose a refund")
    for line_id, qty in wanted.items():
        line, sku = by_id[line_id], request.exchange.get(line_id)
        if not sku:
            raise ReturnRefused(f"{line.title}: choose the size or colour you want instead")
        offered = {p.sku: p for p in options.get(line.sku or "", [])}
        if sku not in offered or available(offered[sku]) < qty:
            raise ReturnRefused(f"{line.title}: that size or colour is not in stock")


# ---------------------------------------------------------------- opening


@dataclass
class Batch:
    """What open_returns loads once for all its requests."""

    orders: dict[int, Order]
    lines: dict[int, list[ReturnableLine]]
    options: dict[str, list[Product]]
    recent: dict[int, int]


def load_batch(session: Session, requests: Sequence[ReturnRequest], now: datetime,
               rt: Runtime) -> Batch:
    ids = sorted({r.order_id for r in requests})
    orders = {o.id: o for o in session.scalars(
        select(Order).where(Order.id.in_(ids))
        .options(selectinload(Order.lines), selectinload(Order.customer)))}
    skus = {line.sku for o in orders.values() for line in o.lines if line.sku}
    products = {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(skus)))}
    in_returns = units_not_kept(session, ids)
    lines = {oid: returnable_lines(o, products, in_returns.get(oid, {}), now, rt.config)
             for oid, o in orders.items()}
    exchanging = {line.sku for r in requests if r.resolution == "exchange" and r.order_id in orders
                  for line in orders[r.order_id].lines if line.sku}
    period = timedelta(days=rt.config.returns.auto_approve.repeat_period_days)
    recent = recent_returns(session, {o.customer_id for o in orders.values()}, now - period)
    return Batch(orders, lines, exchange_options(session, exchanging), recent)


def return_row(request: ReturnRequest, order: Order, lines: list[ReturnableLine], rma: str,
               recent: int, now: datetime, rt: Runtime, actor: str) -> dict[str, Any]:
    """The returns row: value, fees, send-by date, and approved at once or requested."""
    value_of = {line.line_id: line.unit_value for line in lines}
    goods = money(sum((value_of[lid] * qty for lid, qty in request.lines.items() if qty),
                      Decimal(0)))
    restocking, shipping = fees(request.reason, goods, order.currency, rt.config)
    review = None if request.approve else auto_approval(
        order, goods, request.reason, recent, rt.config)
    approved = review is None
    return {
        "rma": rma, "effect_key": request.key, "order_id": order.id,
        "customer_id": order.customer_id, "source": request.source,
        "external_id": request.external_id, "resolution": request.resolution,
        "status": ReturnStatus.APPROVED if approved else ReturnStatus.REQUESTED,
        "reason": request.reason, "comment": (request.comment or "").strip()[:2000] or None,
        "requested_at": now,
        "return_by": now.date() + timedelta(days=rt.config.returns.instructions.send_within_days),
        "decided_at": now if approved else None,
        "decided_by": (actor if request.approve else "policy") if approved else None,
        "goods_value": goods, "restocking_fee": restocking, "shipping_fee": shipping,
        "updated_at": now,
        "_review": review,
    }


def open_returns(session: Session, requests: Sequence[ReturnRequest], now: datetime,
                 rt: Runtime, actor: str = "customer") -> list[Opened]:
    """Open the requests' returns (see the module docstring); one Opened per request, in order.
    Raises ReturnRefused (nothing written) when any new request breaks the policy."""
    if any(not r.key for r in requests):
        raise ValueError("every ReturnRequest needs its effect key")
    existing = load_returns(session, [r.key for r in requests])
    fresh = list({r.key: r for r in requests if r.key not in existing}.values())
    if fresh:
        batch = load_batch(session, fresh, now, rt)
        for request in fresh:
            order = batch.orders.get(request.order_id)
            check_request(request, order, batch.lines.get(request.order_id, []),
                          batch.options, rt)
        created = insert_returns(session, fresh, batch, now, rt, actor)
        existing = load_returns(session, [r.key for r in requests])
        opened = [(existing[key], review) for key, review in sorted(created.items())]
        after_opening(session, opened, batch, now, rt, actor)
    else:
        created = {}
    return [Opened(r.key, existing[r.key], r.key in created) for r in requests]


def insert_returns(session: Session, fresh: Sequence[ReturnRequest], batch: Batch,
                   now: datetime, rt: Runtime, actor: str) -> dict[str, str | None]:
    """Insert the returns (a key another transaction took meanwhile is left to it) and the
    lines of those really inserted: {key inserted: why an operator must look, or None}."""
    rmas = unique_rmas(session, len(fresh))
    rows = [return_row(r, batch.orders[r.order_id], batch.lines[r.order_id], rma,
                       batch.recent.get(batch.orders[r.order_id].customer_id, 0), now, rt, actor)
            for r, rma in zip(fresh, rmas, strict=True)]
    reviews = {row["effect_key"]: row.pop("_review") for row in rows}
    created = insert_new(session, Return, rows, "effect_key")
    ids = dict(session.execute(select(Return.effect_key, Return.id)
                               .where(Return.effect_key.in_(created))).all())
    line_rows = [{"return_id": ids[r.key], "order_line_id": lid, "quantity": qty,
                  "exchange_sku": r.exchange.get(lid) if r.resolution == "exchange" else None}
                 for r in fresh if r.key in created for lid, qty in sorted(r.lines.items())
                 if qty]
    if line_rows:
        session.execute(ReturnLine.__table__.insert(), line_rows)
    return {key: reviews[key] for key in created}


def load_returns(session: Session, keys: Sequence[str]) -> dict[str, Return]:
    if not keys:
        return {}
    query = (select(Return).where(Return.effect_key.in_(sorted(set(keys))))
             .options(selectinload(Return.lines)))
    return {ret.effect_key: ret for ret in session.scalars(query)}


# ---------------------------------------------------------------- after opening


def after_opening(session: Session, opened: Sequence[tuple[Return, str | None]], batch: Batch,
                  now: datetime, rt: Runtime, actor: str) -> None:
    """The timeline, the customer's mail and the marketing the returned goods make moot."""
    if not opened:
        return
    record_events(session, [opened_event(ret, batch.orders[ret.order_id].currency, review, now,
                                         rt, actor) for ret, review in opened])
    titles = {p.sku: p.title for found in batch.options.values() for p in found}
    enqueue(session, [return_notice(ret, batch.orders[ret.order_id], notice_kind(ret), rt, now,
                                    exchanges=titles) for ret, _ in opened], now)
    cancel_returned_marketing(session, sorted({ret.order_id for ret, _ in opened}))


def notice_kind(ret: Return) -> str:
    return "approved" if ret.status == ReturnStatus.APPROVED else "requested"


def opened_event(ret: Return, currency: str, review: str | None, now: datetime, rt: Runtime,
                 actor: str) -> dict[str, Any]:
    """The timeline's "return" row: RMA, lines, reason, resolution, and who decides."""
    detail: dict[str, Any] = {
        "rma": ret.rma, "return_id": ret.id, "status": ret.status, "source": ret.source,
        "reason": ret.reason, "resolution": ret.resolution, "goods_value": str(ret.goods_value),
        "lines": {str(item.order_line_id): item.quantity for item in ret.lines},
    }
    if exchanged := {str(i.order_line_id): i.exchange_sku for i in ret.lines if i.exchange_sku}:
        detail["exchange"] = exchanged
    if review:
        detail["needs_operator"] = review
    if note := fee_note(ret.reason, currency, rt.config):
        detail["fee_note"] = note
    return {"order_id": ret.order_id, "at": now, "kind": "return", "from_state": None,
            "to_state": None, "actor": actor, "detail": detail}


def cancel_returned_marketing(session: Session, order_ids: Sequence[int]) -> None:
    """Stop unsent marketing of these orders about a SKU the customer is sending all of back:
    by topic (review request, replenishment) or by the product it shows (care guide,
    cross-sell). The same rule as tasks/lifecycle.py cancel_refunded_marketing, written here
    because lifecycle's cancellations open returns (importing it would make a circle)."""
    gone = returned_skus(session, order_ids)
    if not gone:
        return
    query = select(Message.id, Message.order_id, Message.topic, Message.context).where(
        Message.order_id.in_(sorted(gone)), Message.status == MessageStatus.PENDING,
        Message.msg_class == "marketing")
    about = [row.id for row in session.execute(query)
             if {row.topic, ((row.context or {}).get("product") or {}).get("sku")}
             & gone[row.order_id]]
    if about:
        session.execute(update(Message).where(Message.id.in_(about),
                                              Message.status == MessageStatus.PENDING)
                        .values(status=MessageStatus.CANCELLED, reason="returned")
                        .execution_options(synchronize_session=False))
