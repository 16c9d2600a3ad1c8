"""Cancelling an order: the one cancellation every path uses.

An operator (`journeys order cancel`, the cancel-order form, a held order's cancel), Shopify's
orders/cancelled and a full refund before shipping all end in `cancel_orders`. For an order not
shipped yet it, in the caller's transaction:

- moves the order to cancelled (compare-and-set from the state it was loaded in),
- releases the stock verification reserved and closes every pending or held step,
- cancels EVERY unsent mail of the order (a queued confirmation must not follow the
  cancellation mail), then queues `order_cancelled`, which says what refund to expect,
- reverses loyalty points the order earned (ledger key `order:{id}:reverse:cancelled`; an order
  cancelled before delivery normally has none, and then nothing is written),
- records who cancelled and why in the timeline, with the reminder that journeys moves no
  money: the payment must be voided or refunded in Shopify.

After shipping a cancellation is a return to sender (`return_to_sender`: an approved return of
every shipped unit, tasks/returns/requests.py), never a silent state change. An order cancelled
after packing is on the sweep's "Do not ship" list (`do_not_ship`) for the packer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tasks.journey import waiting_steps
from tasks.loyalty.reversal import Refund, reverse_refunds
from tasks.messaging.compose import base_context, order_mail
from tasks.messaging.outbox import enqueue
from tasks.returns.requests import (
    RETURN_TO_SENDER,
    ReturnRefused,
    ReturnRequest,
    open_returns,
)
from tasks.runtime import Runtime
from tasks.states import MessageStatus, OrderState, StepStatus
from tasks.store.journal import (
    Transition,
    apply_transitions,
    claim_orders,
    insert_new,
    record_events,
)
from tasks.store.models import (
    Artifact,
    Message,
    Order,
    OrderEvent,
    Return,
    ServiceCase,
    Step,
)
from tasks.store.returns import units_not_kept
from tasks.store.stock import move_reserved
from tasks.verify import demand, needs_shipping

ACTOR = "shopify webhook"  # who cancels when the caller does not say (the topic actions)
CANCELLED = OrderState.CANCELLED
CANCEL_STEP, CANCEL_TEMPLATE = "cancel", "order_cancelled"
MESSAGE_CANCELLED = MessageStatus.CANCELLED  # as tasks/privacy.py stops mail
UNSENT = MessageStatus.PENDING  # not claimed for sending yet, so still ours to cancel
OPEN_STEPS = (StepStatus.PENDING, StepStatus.HELD)  # steps a cancellation closes
# Not shipped yet, so still ours to cancel; with the step each state waits on.
WAITING_STEP = waiting_steps()
PACKED_STATES = (OrderState.PACKED, OrderState.CONFIRMED)  # documents printed: tell the packer
POINTS_KEY = "cancelled"  # the reversal's refund key: ledger order:{id}:reverse:cancelled
MONEY = "journeys moves no money: void or refund the payment in Shopify"
# Shopify financial_status: what the customer is told about their money.
CHARGED = frozenset({"authorized", "paid", "partially_paid", "partially_refunded"})
REFUNDED = "refunded"
CASE_AFTER_SHIPPING = "cancelled_after_shipping"
AFTER_SHIPPING = "cancelled after shipping; the return to sender was refused"


def shipped(order: Order) -> bool:
    """Gone to the carrier: a state past confirmation (not cancelled), or a shipping date."""
    return order.shipped_at is not None or order.state not in (*WAITING_STEP, CANCELLED)


def cancel_messages(session: Session, message_ids: Sequence[int], reason: str) -> None:
    """Stop mail not claimed for sending yet (a claimed row may be on its way already)."""
    if message_ids:
        session.execute(
            update(Message).where(Message.id.in_(sorted(set(message_ids))),
                                  Message.status == UNSENT)
            .values(status=MESSAGE_CANCELLED, reason=reason)
            .execution_options(synchronize_session=False))


# ---------------------------------------------------------------- the cancellation


def cancel_orders(
    session: Session, orders: Sequence[Order], reason: str, now: datetime, rt: Runtime,
    details: Mapping[int, dict[str, Any]] | None = None, actor: str = ACTOR,
) -> list[int]:
    """Cancel the unshipped ones of `orders` (loaded with lines, locked by the caller): see
    the module docstring. Returns the ids cancelled; shipped or cancelled orders are left."""
    movable = list({o.id: o for o in orders if o.state in WAITING_STEP and not shipped(o)}
                   .values())
    by_state: dict[str, list[Order]] = defaultdict(list)
    for order in movable:
        by_state[order.state].append(order)
    for state, group in by_state.items():
        transitions = [Transition(o.id, CANCELLED, reason=reason, detail=cancel_detail(
            o, (details or {}).get(o.id, {}), actor)) for o in group]
        apply_transitions(session, WAITING_STEP[state], state, transitions, now, actor=actor)
    ids = [o.id for o in movable]
    close_open_steps(session, ids, reason, now)
    release_stock(session, [o for o in movable if o.stock_reserved], now)
    cancel_messages(session, unsent_mail(session, ids), "order cancelled")
    reverse_points(session, movable, now, rt)
    enqueue(session, [cancellation_message(o, rt, now) for o in movable], now)
    return ids


def cancel_detail(order: Order, given: Mapping[str, Any], actor: str) -> dict[str, Any]:
    """The timeline's record: who, why (the caller's detail), whether the packer must be
    told, and what is left to do about the money."""
    detail = {"cancelled_by": actor, **given, "payment": MONEY}
    if order.state in PACKED_STATES:
        detail["do_not_ship"] = True
    return detail


def close_open_steps(session: Session, order_ids: Sequence[int], reason: str, now: datetime
                     ) -> None:
    """Nothing further happens to a cancelled order: its pending or held steps close."""
    if order_ids:
        session.execute(
            update(Step).where(Step.order_id.in_(order_ids), Step.status.in_(OPEN_STEPS))
            .values(status=StepStatus.CLOSED, reason=reason[:500], updated_at=now)
            .execution_options(synchronize_session=False))


def release_stock(session: Session, orders: Sequence[Order], now: datetime) -> None:
    """Give back what verification reserved (tasks.verify.demand: the same lines it counted)."""
    units: Counter[str] = Counter()
    for order in orders:
        units.update(demand(order))
    move_reserved(session, units, -1, now)
    if orders:
        session.execute(update(Order).where(Order.id.in_([o.id for o in orders]))
                        .values(stock_reserved=False)
                        .execution_options(synchronize_session=False))


def unsent_mail(session: Session, order_ids: Sequence[int]) -> list[int]:
    """Every mail of the orders not sent yet, transactional or marketing."""
    if not order_ids:
        return []
    query = select(Message.id).where(Message.order_id.in_(order_ids), Message.status == UNSENT)
    return list(session.scalars(query))


def reverse_points(session: Session, orders: Sequence[Order], now: datetime, rt: Runtime
                   ) -> None:
    """Take back whatever the orders earned (an order that earned nothing is skipped by the
    ledger; the amount reaches the earn's basis, so the whole earn is reversed)."""
    refunds = [Refund(o.id, max(o.total, o.subtotal, Decimal(0)), POINTS_KEY) for o in orders]
    if refunds:
        reverse_refunds(session, refunds, now, rt)


# ---------------------------------------------------------------- the customer's mail


def refund_expectation(order: Order, days: int) -> dict[str, Any]:
    """What the cancellation mail says about the money: `kind` is void_or_refund (charged or
    authorized), refunded (already given back) or not_charged."""
    status = (order.financial_status or "").lower()
    if status in CHARGED:
        kind = "void_or_refund"
    elif status == REFUNDED:
        kind = "refunded"
    else:
        kind = "not_charged"
    exact = status in ("authorized", "paid", REFUNDED)  # else the amount taken is not known
    return {"kind": kind, "amount": str(order.total) if exact else None,
            "business_days": days}


def cancellation_message(order: Order, rt: Runtime, now: datetime) -> dict[str, Any]:
    """The `order_cancelled` mail, one per order ever (an order without address: skipped)."""
    cfg = rt.config
    context = base_context(order, cfg)
    context["refund"] = refund_expectation(order, cfg.returns.cancel_refund_business_days)
    return order_mail(cfg, order, CANCEL_STEP, CANCEL_TEMPLATE, context, now)


# ---------------------------------------------------------------- operators


def cancel_holds(
    session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime, actor: str,
    note: str = "",
) -> list[int]:
    """An operator cancels held orders (the review-holds form, `journeys hold cancel`)."""
    orders = claim_orders(session, order_ids, OrderState.ON_HOLD)
    reason = f"cancelled by operator: {note}" if note else "cancelled by operator"
    details = {o.id: {"decision": "cancel", "note": note, "source": "operator"} for o in orders}
    return cancel_orders(session, orders, reason, now, rt, details, actor=actor)


def cancel_by_operator(
    session: Session, order: Order, now: datetime, rt: Runtime, actor: str, reason: str,
) -> dict[str, Any]:
    """Cancel one order an operator names: unshipped → cancelled; shipped → a return to
    sender. The outcome says what happened and what is left to do in Shopify."""
    claimed = claim_orders(session, [order.id], order.state)
    if not claimed:
        return {"order": order.name or order.external_id, "cancelled": False,
                "outcome": f"order is being changed by another run ({order.state}); try again"}
    order = claimed[0]
    name = order.name or order.external_id
    if shipped(order):
        opened = return_to_sender(session, [order], now, rt, actor, reason)
        return {"order": name, "cancelled": False, "return_to_sender": opened.get(order.id),
                "outcome": f"already {order.state}: return to sender opened; {MONEY}"}
    was = order.state
    detail = {order.id: {"source": "operator", "note": reason}}
    cancel_orders(session, [order], f"cancelled by operator: {reason}", now, rt, detail, actor)
    return {"order": name, "cancelled": True, "was": was, "do_not_ship": was in PACKED_STATES,
            "outcome": f"cancelled; {MONEY}"}


# ---------------------------------------------------------------- after shipping


def return_to_sender(
    session: Session, orders: Sequence[Order], now: datetime, rt: Runtime, actor: str,
    comment: str | None = None,
) -> dict[int, str]:
    """A cancellation after shipping: one approved return (refund) of every shipped unit not
    refunded or returned yet, keyed order:{id}:return_to_sender. Returns order id → its RMA,
    or "case" when the returns policy refused it (a service case for an operator instead);
    an order with nothing left to send back gets neither."""
    in_returns = units_not_kept(session, [o.id for o in orders])
    requests = []
    for order in orders:
        lines = {line.id: units for line in order.lines if needs_shipping(line)
                 and (units := line.quantity - (line.refunded_quantity or 0)
                      - in_returns.get(order.id, {}).get(line.id, 0)) > 0}
        if lines:
            requests.append(ReturnRequest(
                order.id, lines, reason=RETURN_TO_SENDER, resolution="refund", comment=comment,
                source="cancellation", key=sender_key(order.id), approve=True))
    refused: dict[int, str] = {}
    try:
        open_returns(session, requests, now, rt, actor=actor)
    except ReturnRefused:  # nothing written: open what the policy allows, one by one
        refused = one_by_one(session, requests, now, rt, actor)
        open_cases(session, refused, now, actor)
    keys = [sender_key(o.id) for o in orders]
    found = session.execute(select(Return.order_id, Return.rma).where(Return.effect_key.in_(keys)))
    return {**dict.fromkeys(refused, "case"), **dict(found.all())}


def sender_key(order_id: int) -> str:
    return f"order:{order_id}:return_to_sender"


def one_by_one(session: Session, requests: Sequence[ReturnRequest], now: datetime,
               rt: Runtime, actor: str) -> dict[int, str]:
    """Open each request alone; order id → why the policy refused it."""
    refused: dict[int, str] = {}
    for request in requests:
        try:
            open_returns(session, [request], now, rt, actor=actor)
        except ReturnRefused as exc:
            refused[request.order_id] = str(exc)
    return refused


def open_cases(session: Session, refused: Mapping[int, str], now: datetime, actor: str
               ) -> None:
    """A service case per order whose return to sender the policy refused; once per order."""
    keys = {oid: f"order:{oid}:case:{CASE_AFTER_SHIPPING}" for oid in refused}
    opened = insert_new(session, ServiceCase, [
        {"effect_key": keys[oid], "order_id": oid, "reason": AFTER_SHIPPING, "proposed": "refund",
         "status": "open", "opened_at": now} for oid in refused], "effect_key")
    record_events(session, [
        {"order_id": oid, "at": now, "kind": "case", "from_state": None, "to_state": None,
         "actor": actor, "detail": {"case": CASE_AFTER_SHIPPING, "proposed": "refund",
                                    "return_refused": why[:200], "payment": MONEY}}
        for oid, why in refused.items() if keys[oid] in opened])


# ---------------------------------------------------------------- the packer


def do_not_ship(session: Session, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Orders cancelled after packing in [since, until]: the packer must not ship them.
    Each: order name, the packing slip's archive reference, when it was cancelled."""
    query = (select(OrderEvent.order_id, OrderEvent.at, Order.name, Order.external_id)
             .join(Order, Order.id == OrderEvent.order_id)
             .where(OrderEvent.kind == "state", OrderEvent.to_state == CANCELLED,
                    OrderEvent.from_state.in_(PACKED_STATES), OrderEvent.at >= since,
                    OrderEvent.at <= until)
             .order_by(OrderEvent.at, OrderEvent.order_id))
    rows = session.execute(query).all()
    slips = dict(session.execute(
        select(Artifact.order_id, Artifact.ref).where(
            Artifact.order_id.in_([r.order_id for r in rows]),
            Artifact.kind == "packing_slip")).all()) if rows else {}
    return [{"order": r.name or r.external_id, "packing_slip": slips.get(r.order_id),
             "cancelled_at": r.at.isoformat()} for r in rows]

