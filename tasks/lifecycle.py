"""Topic actions: what Shopify tells us about an order, a customer or a product after the fact.

The inbox drain (tasks/inbox.py ACTION_OF_TOPIC) hands each topic's parsed bodies to one action
here, inside its app-database transaction. An action returns {inbox row id: (outcome, reason)};
a body it cannot act on is "ignored" with a readable reason, never an exception. Every action
can run twice on the same delivery and changes nothing the second time: refunds are keyed by
Shopify's refund id (a timeline event per refund), state changes are compare-and-set, mail and
ledger entries have effect keys, and the rest are updates to the value they already hold.

- refunds/create (and the `refunds[]` inside orders/updated, `apply_embedded_refunds`): record
  the refund once, recompute the lines' `refunded_quantity` from the recorded refunds, reverse
  loyalty points for the goods (before tax, shipping earns nothing), cancel pending marketing
  about products the customer no longer has, and cancel an unshipped order refunded in full.
  A refund of an order not here yet waits (inbox WAIT_LIMIT), then is ignored.
- orders/cancelled: cancel an unshipped order (and tell the customer); a shipped one becomes
  a return to sender (tasks/cancellation.py: an approved return of the shipped units).
- order_transactions/create: a successful capture or sale records the payment; an order held
  only for `payment_not_captured` goes back to verification (which checks stock again).
- customers/create, customers/update: e-mail, names and marketing consent; an explicit
  unsubscribe at Shopify is also a suppression (GDPR Art. 21(3)), so consent an order later
  reports from its checkout cannot bring marketing back.
- products/delete: the product's variants are marked `deleted_at` (rows stay: order lines
  refer to them); follow-ups never offer them again.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session, selectinload

from tasks.aftercare.followups import DELETED_AT
from tasks.cancellation import cancel_messages, cancel_orders, return_to_sender, shipped
from tasks.credit_notes import CreditIn, issue_credit_notes
from tasks.deliveries import WAIT_LIMIT, Body, Outcome
from tasks.intake.schema import MONEY_LIMIT
from tasks.loyalty.reversal import Refund, reverse_refunds
from tasks.messaging.governor import email_hash
from tasks.messaging.unsubscribe import suppress_many
from tasks.pack import minor_unit
from tasks.returns.overlap import shopify_refunds_left
from tasks.runtime import Runtime
from tasks.states import InboxStatus, MessageStatus
from tasks.store.db import is_postgres
from tasks.store.journal import (
    CANCELLED,
    ON_HOLD,
    RECEIVED,
    Transition,
    apply_transitions,
    insert_ignoring_duplicates,
    record_events,
    reopen_step,
)
from tasks.store.models import (
    Customer,
    Message,
    Order,
    Product,
    Return,
    Suppression,
)
from tasks.store.refunds import REFUND_EVENT, refresh_refunded_quantities, refund_events
from tasks.verify import reason_codes

SOURCE = "shopify"
PROCESSED, IGNORED = InboxStatus.PROCESSED, InboxStatus.IGNORED  # a body's outcome
ACTOR = "shopify webhook"
WAITING = "waiting"  # the drain keeps the row pending and offers it again
UNSENT = MessageStatus.PENDING  # mail not sent yet, so still ours to cancel
MARKETING = "marketing"
PAYMENT_HOLD = "payment_not_captured"
CAPTURE_KINDS = frozenset({"capture", "sale"})
UNSETTLED = frozenset({"pending", "authorized", "partially_paid", "unpaid"})
CANCELLED_AFTER_SHIPPING = "cancelled at source after shipping"
SUBSCRIBED = "subscribed"
NOT_CONSENTING = frozenset({"not_subscribed", "unsubscribed", "pending", "redacted", "invalid"})
SHOPIFY_UNSUBSCRIBE = "shopify customers/update"  # the suppressions' source


class BadBody(ValueError):
    """A body journeys cannot act on; the message is the inbox row's reason."""


# ---------------------------------------------------------------- reading bodies

ID_MAX = 2**63 - 1  # Shopify ids: positive integers within 64 bits
COUNT_MAX = 2_147_483_647  # a quantity: what an INTEGER column holds


def shown(value: Any) -> str:
    """A value as a reason names it: the kind for containers, else a short repr."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= COUNT_MAX


@dataclass(frozen=True)
class Fields:
    """A JSON object's fields read as the types journeys uses. Absent and null read as None;
    a value of another shape is a BadBody naming the field (`where` is the path to here)."""

    data: Mapping[str, Any]
    where: str = ""

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def bad(self, key: str, expected: str) -> BadBody:
        return BadBody(f"{self.path(key)}: expected {expected}, got {shown(self.data[key])}")

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None or isinstance(value, str):
            return value
        raise self.bad(key, "text")

    def flag(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None or isinstance(value, bool):
            return value
        raise self.bad(key, "true or false")

    def id(self, key: str) -> str | None:
        """A Shopify id as our columns hold it: its decimal digits."""
        value = self.data.get(key)
        if value is None:
            return None
        digits = value.strip() if isinstance(value, str) else ""
        if digits.isascii() and digits.isdigit() and len(digits) <= 19:
            value = int(digits)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= ID_MAX:
            return str(value)
        raise self.bad(key, "a Shopify id (a positive integer)")

    def money(self, key: str, signed: bool = False) -> Decimal | None:
        """A finite amount the store holds exactly, from a JSON number or string."""
        value = self.data.get(key)
        if value is None:
            return None
        found = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                found = Decimal(str(value).strip())
            except InvalidOperation:
                found = None
        if (found is None or not found.is_finite() or abs(found) >= MONEY_LIMIT
                or -found.as_tuple().exponent > 4 or (found < 0 and not signed)):
            raise self.bad(key, "an amount" if signed else "an amount >= 0")
        return found

    def when(self, key: str) -> datetime | None:
        """An ISO 8601 date-time (without an offset: UTC), in UTC."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                stamp = datetime.fromisoformat(value)
                return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).astimezone(UTC)
            except (ValueError, OverflowError):  # not ISO 8601; beyond year 1-9999 in UTC
                pass
        raise self.bad(key, "an ISO date-time")

    def object(self, key: str) -> Fields | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, dict):
            return Fields(value, self.path(key))
        raise self.bad(key, "an object")

    def objects(self, key: str) -> list[Fields]:
        """A list of JSON objects (absent or null: empty)."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise BadBody(f"{self.path(key)}: expected a list of objects")
        return [Fields(v, f"{self.path(key)}[{i}]") for i, v in enumerate(value)]


# ---------------------------------------------------------------- shared order helpers


def load_orders(session: Session, external_ids: Iterable[str | None]) -> dict[str, Order]:
    """Shopify orders by external id with lines and customer, fresh from the database and
    locked on PostgreSQL (in id order) so a concurrent drain applies its refund after ours."""
    ids = sorted({ext for ext in external_ids if ext})
    if not ids:
        return {}
    query = (select(Order).where(Order.source == SOURCE, Order.external_id.in_(ids))
             .order_by(Order.id)
             .options(selectinload(Order.lines), selectinload(Order.customer))
             .execution_options(populate_existing=True))
    if is_postgres(session):
        query = query.with_for_update(of=Order)
    return {order.external_id: order for order in session.scalars(query)}


def unknown_order(body: Body, external_id: str, now: datetime, wait: bool) -> Outcome:
    if wait and now - body.received_at < WAIT_LIMIT:
        return WAITING, f"waiting for order {external_id}"
    return IGNORED, f"no such order: shopify {external_id}"


def note(order_id: int, detail: dict[str, Any], now: datetime, kind: str = "note"
         ) -> dict[str, Any]:
    return {"order_id": order_id, "at": now, "kind": kind, "from_state": None, "to_state": None,
            "actor": ACTOR, "detail": detail}


def in_order(bodies: Sequence[Body], outcomes: Mapping[int, Outcome]) -> dict[int, Outcome]:
    """The outcomes in the order the bodies came (for reports and readers; the drain maps)."""
    return {body.row_id: outcomes[body.row_id] for body in bodies}


# ---------------------------------------------------------------- cancelling orders
# One cancellation for every path: tasks/cancellation.py (cancel_orders, return_to_sender).


# ---------------------------------------------------------------- refunds


@dataclass(frozen=True)
class RefundIn:
    """One Shopify refund as far as journeys uses it."""

    refund_id: str
    order_external_id: str
    lines: dict[str, int]  # Shopify line item id → units refunded
    goods: Decimal  # refund_line_items subtotal: before tax
    shipping: Decimal
    restock: bool
    return_id: str | None = None  # Shopify's return this refund settles (`return.id`)

    @property
    def ledger_key(self) -> str:
        return f"shopify-refund-{self.refund_id}"


LINE_NEEDS = "refund_line_items: each needs line_item_id and a quantity >= 0"


def refund_from_body(data: Mapping[str, Any], order_external_id: str | None = None) -> RefundIn:
    """A refunds/create body (or an entry of an order's `refunds[]`); BadBody says what is off."""
    body = Fields(data)
    refund_id = body.id("id")
    order_id = body.id("order_id") or order_external_id
    if refund_id is None or order_id is None:
        raise BadBody("refund without id or order_id")
    lines: Counter[str] = Counter()
    goods, restock = Decimal(0), bool(body.flag("restock"))
    for item in body.objects("refund_line_items"):
        line_id, quantity = item.id("line_item_id"), item.data.get("quantity")
        if line_id is None or not is_count(quantity):
            raise BadBody(LINE_NEEDS)
        lines[line_id] += quantity
        goods += item.money("subtotal") or 0
        restock |= item.text("restock_type") not in (None, "no_restock")
    if goods >= MONEY_LIMIT:
        raise BadBody("refund_line_items.subtotal: more than the store holds")
    returned = body.object("return")  # null unless the refund settles a Shopify return
    return RefundIn(refund_id, order_id, dict(lines), goods, shipping_refunded(body), restock,
                    returned.id("id") if returned else None)


def shipping_refunded(body: Fields) -> Decimal:
    """Shipping given back: `shipping_refund` order adjustments (negative amounts) and, in
    newer API versions, `refund_shipping_lines`."""
    total = sum((abs(a.money("amount", signed=True) or 0)
                 for a in body.objects("order_adjustments")
                 if a.text("kind") == "shipping_refund"), Decimal(0))
    for line in body.objects("refund_shipping_lines"):
        money = (line.object("subtotal_amount_set") or Fields({})).object("shop_money")
        total += (money.money("amount") if money else None) or 0
    if total >= MONEY_LIMIT:
        raise BadBody("refund shipping: more than the store holds")
    return total


def refund_event(order: Order, refund: RefundIn, now: datetime) -> dict[str, Any]:
    known = {line.external_id for line in order.lines}
    detail = {"refund_id": refund.refund_id, "lines": refund.lines, "goods": str(refund.goods),
              "shipping": str(refund.shipping), "restock": refund.restock}
    if refund.return_id:
        detail["return_id"] = refund.return_id
    unknown = sorted(set(refund.lines) - known)
    if unknown:
        detail["unknown_lines"] = unknown
    return note(order.id, detail, now, kind=REFUND_EVENT)


def refund_reason(refund: RefundIn, event: dict[str, Any]) -> str:
    units = sum(refund.lines.values())
    text = (f"refund {refund.refund_id} recorded: {units} unit(s), goods {refund.goods}, "
            f"shipping {refund.shipping}")
    unknown = event["detail"].get("unknown_lines")
    return text + (f"; lines not on the order: {', '.join(unknown)}" if unknown else "")


@dataclass
class RefundRun:
    """What `apply_refunds` did: an outcome per key (None: the order is not here), the keys
    recorded now (with their order), the orders found (by external id) and those cancelled."""

    outcomes: dict[Any, Outcome | None] = field(default_factory=dict)
    recorded: dict[Any, int] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    cancelled: set[int] = field(default_factory=set)


def apply_refunds(
    session: Session, refunds: Sequence[tuple[Any, RefundIn]], now: datetime, rt: Runtime,
    also: Iterable[str] = (),
) -> RefundRun:
    """Record each new refund once (keyed by its refund id) and apply its effects. Orders in
    `also` (external ids) get their refund effects recomputed even without a new refund:
    intake may have re-inserted their lines."""
    also = list(also)
    run = RefundRun(orders=load_orders(session, [r.order_external_id for _, r in refunds] + also))
    known = refund_events(session, [o.id for o in run.orders.values()])
    events, reasons = [], {}
    touched = {run.orders[ext].id: run.orders[ext] for ext in also if ext in run.orders}
    for key, refund in refunds:
        order = run.orders.get(refund.order_external_id)
        if order is None:
            run.outcomes[key] = None
        elif refund.refund_id in known[order.id]:
            run.outcomes[key] = (PROCESSED, f"refund {refund.refund_id} already recorded")
        else:
            event = refund_event(order, refund, now)
            known[order.id][refund.refund_id] = event["detail"]
            events.append(event)
            touched[order.id], run.recorded[key] = order, order.id
            reasons[key] = refund_reason(refund, event)
    record_events(session, events)
    run.cancelled = refund_effects(session, list(touched.values()), known, now, rt)
    for key, order_id in run.recorded.items():
        cancelled = "; order cancelled: refunded in full before shipping"
        run.outcomes[key] = (PROCESSED, reasons[key] + (cancelled if order_id in run.cancelled
                                                        else ""))
    return run


def refund_effects(
    session: Session, orders: Sequence[Order], recorded: Mapping[int, dict[str, dict]],
    now: datetime, rt: Runtime,
) -> set[int]:
    """Quantities, points, marketing and, for an order refunded in full, its status (and
    cancellation while unshipped). Returns the orders cancelled."""
    if not orders:
        return set()
    refunded = refresh_refunded_quantities(session, [o.id for o in orders])
    reverse_recorded_refunds(session, [o.id for o in orders], now, rt, recorded)
    issue_credit_notes(session, refund_credits(orders, not_refunded_here(session, recorded)),
                       now, rt)
    cancel_refunded_marketing(session, orders, refunded)
    whole = [o for o in orders if refunded_in_full(o, refunded)]
    mark_refunded(session, whole)
    return set(cancel_orders(session, [o for o in whole if not shipped(o)],
                             "refunded in full before shipping", now, rt,
                             {o.id: {"source": "shopify refund"} for o in whole}))


def refunded_in_full(order: Order, refunded: Mapping[int, int]) -> bool:
    """Every unit of every line refunded (and at least one unit refunded at all)."""
    units = [(refunded.get(line.id, 0), line.quantity) for line in order.lines]
    return sum(r for r, _ in units) > 0 and all(r >= q for r, q in units)


def reverse_recorded_refunds(
    session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime,
    recorded: Mapping[int, dict[str, dict]] | None = None,
) -> None:
    """Reverse the points of every recorded refund's goods (keyed per refund, so a refund
    reversed before is a no-op). Also the catch-up for refunds recorded before the order
    earned: call it after loyalty's earn with the same orders."""
    recorded = recorded if recorded is not None else refund_events(session, order_ids)
    recorded = not_refunded_here(session, recorded)
    refunds = [Refund(oid, goods_of(detail), f"shopify-refund-{refund_id}")
               for oid in order_ids for refund_id, detail in recorded.get(oid, {}).items()
               if goods_of(detail) > 0]
    if refunds:
        reverse_refunds(session, refunds, now, rt)


def not_refunded_here(session: Session, recorded: Mapping[int, dict[str, dict]]
                      ) -> dict[int, dict[str, dict]]:
    """The recorded refunds less those settling a Shopify return journeys refunded itself
    (tasks/returns/receipt.py reversed its points and issued its credit note already), and
    less the units of returns from our page journeys refunded before the store refunded the
    payment at Shopify (tasks/returns/overlap.py)."""
    named = sorted({str(d["return_id"]) for refunds in recorded.values()
                    for d in refunds.values() if d.get("return_id")})
    done = set(session.execute(select(Return.order_id, Return.external_id).where(
        Return.source == SOURCE, Return.external_id.in_(named),
        Return.status == "refunded")).tuples()) if named else set()
    left = {oid: {rid: d for rid, d in refunds.items()
                  if (oid, str(d.get("return_id"))) not in done}
            for oid, refunds in recorded.items()}
    return shopify_refunds_left(session, left)


def refund_credits(orders: Sequence[Order], recorded: Mapping[int, dict[str, dict]]
                   ) -> list[CreditIn]:
    """A credit note per recorded refund that gave money back (key: the refund's id, so a
    refund seen again, or recomputed after intake, is the note already issued)."""
    credits = []
    for order in orders:
        for refund_id, detail in recorded.get(order.id, {}).items():
            goods, shipping = goods_of(detail), Decimal(str(detail.get("shipping") or 0))
            if goods + shipping > 0:
                credits.append(CreditIn(
                    f"shopify-refund:{refund_id}", order.id, goods, shipping, Decimal(0),
                    f"Shopify refund {refund_id}", refund_lines(order, detail)))
    return credits


def refund_lines(order: Order, detail: Mapping[str, Any]) -> list[dict]:
    """The refunded units of known lines, each at its price after its own discount."""
    lines = {line.external_id: line for line in order.lines if line.external_id}
    cent, found = minor_unit(order.currency), []
    for line_id, units in (detail.get("lines") or {}).items():
        line = lines.get(str(line_id))
        if line is not None and int(units) > 0:
            net = line.unit_price - line.total_discount / max(line.quantity, 1)
            found.append({"sku": line.sku, "title": line.title, "quantity": int(units),
                          "amount": (net * int(units)).quantize(cent)})
    return found


def goods_of(detail: Mapping[str, Any]) -> Decimal:
    return Decimal(str(detail.get("goods") or 0))


def cancel_refunded_marketing(
    session: Session, orders: Sequence[Order], refunded: Mapping[int, int]
) -> None:
    """Pending marketing of an order about a SKU none of whose units the customer kept: by
    topic (review request, replenishment) or by the product it is about (care guide,
    cross-sell)."""
    gone = {o.id: skus for o in orders if (skus := refunded_skus(o, refunded))}
    if not gone:
        return
    query = select(Message.id, Message.order_id, Message.topic, Message.context).where(
        Message.order_id.in_(sorted(gone)), Message.status == UNSENT,
        Message.msg_class == MARKETING)
    about = [row.id for row in session.execute(query)
             if {row.topic, ((row.context or {}).get("product") or {}).get("sku")}
             & gone[row.order_id]]
    cancel_messages(session, about, "refunded")


def refunded_skus(order: Order, refunded: Mapping[int, int]) -> set[str]:
    bought: Counter[str] = Counter()
    returned: Counter[str] = Counter()
    for line in order.lines:
        if line.sku:
            bought[line.sku] += line.quantity
            returned[line.sku] += refunded.get(line.id, 0)
    return {sku for sku, units in bought.items() if returned[sku] >= units}


def mark_refunded(session: Session, orders: Sequence[Order]) -> None:
    """Refunded in full: no points are earned on it (loyalty.NOT_EARNING_STATUSES)."""
    ids = [o.id for o in orders if o.financial_status != "refunded"]
    if ids:
        session.execute(update(Order).where(Order.id.in_(ids))
                        .values(financial_status="refunded")
                        .execution_options(synchronize_session=False))


def on_refunds(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime
               ) -> dict[int, Outcome]:
    """Inbox action for ("shopify", "refunds/create")."""
    outcomes: dict[int, Outcome] = {}
    parsed: list[tuple[int, RefundIn]] = []
    for body in bodies:
        try:
            parsed.append((body.row_id, refund_from_body(body.data)))
        except BadBody as exc:
            outcomes[body.row_id] = (IGNORED, str(exc))
    run = apply_refunds(session, parsed, now, rt)
    by_row = {body.row_id: body for body in bodies}
    for row_id, refund in parsed:
        outcomes[row_id] = run.outcomes[row_id] or unknown_order(
            by_row[row_id], refund.order_external_id, now, wait=True)
    return in_order(bodies, outcomes)


def apply_embedded_refunds(
    session: Session, order_records_data: Sequence[Mapping[str, Any]], now: datetime,
    rt: Runtime,
) -> dict[str, int]:
    """The `refunds[]` of stored Shopify order bodies (orders/updated ...), applied like
    refunds/create; every order given gets its refund effects recomputed (intake may have
    re-inserted its lines). Returns counts for the run's report."""
    refunds, bad, orders = [], 0, []
    for position, data in enumerate(order_records_data):
        try:  # an order intake refused (an odd id) still has refunds that name their order
            external_id = Fields(data).id("id")
        except BadBody:
            external_id = None
        orders.append(external_id)
        try:
            entries = Fields(data).objects("refunds")
        except BadBody:
            entries, bad = [], bad + 1
        for index, entry in enumerate(entries):
            try:
                refunds.append(((position, index), refund_from_body(entry.data, external_id)))
            except BadBody:
                bad += 1
    run = apply_refunds(session, refunds, now, rt, also=[o for o in orders if o])
    return {"refunds_recorded": len(run.recorded),
            "refunds_known": sum(1 for o in run.outcomes.values() if o) - len(run.recorded),
            "refunds_without_order": sum(1 for o in run.outcomes.values() if o is None),
            "refunds_unreadable": bad, "orders_cancelled": len(run.cancelled)}


# ---------------------------------------------------------------- orders/cancelled


@dataclass(frozen=True)
class CancelIn:
    """What an orders/cancelled body says about the cancellation."""

    external_id: str
    cancelled_at: datetime
    cancelled_at_text: str  # as Shopify wrote it, for the timeline
    cancel_reason: str | None


def cancellation_from_body(data: Mapping[str, Any]) -> CancelIn:
    """An orders/cancelled body; BadBody says what is off (an empty cancelled_at: the order
    is not cancelled at Shopify)."""
    body = Fields(data)
    external_id = body.id("id")
    if external_id is None:
        raise BadBody("order body without id")
    reason = body.text("cancel_reason")
    if data.get("cancelled_at") in (None, ""):
        raise BadBody("cancelled_at is empty: not cancelled at source")
    return CancelIn(external_id, body.when("cancelled_at"), data["cancelled_at"], reason)


def on_orders_cancelled(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime
                        ) -> dict[int, Outcome]:
    """Inbox action for ("shopify", "orders/cancelled")."""
    outcomes: dict[int, Outcome] = {}
    wanted: dict[int, tuple[CancelIn, Body]] = {}
    for body in bodies:
        try:
            wanted[body.row_id] = (cancellation_from_body(body.data), body)
        except BadBody as exc:
            outcomes[body.row_id] = (IGNORED, str(exc))
    orders = load_orders(session, [cancel.external_id for cancel, _ in wanted.values()])
    to_cancel: dict[int, tuple[Order, CancelIn]] = {}
    after_shipping: dict[int, tuple[Order, CancelIn]] = {}
    for row_id, (cancel, body) in wanted.items():
        order = orders.get(cancel.external_id)
        outcomes[row_id] = cancellation_outcome(order, cancel, body, now)
        if order is not None and order.state != CANCELLED:
            (after_shipping if shipped(order) else to_cancel).setdefault(order.id,
                                                                         (order, cancel))
    cancel_at_source(session, list(to_cancel.values()), now, rt)
    send_back(session, list(after_shipping.values()), now, rt)
    return in_order(bodies, outcomes)


def cancellation_outcome(order: Order | None, cancel: CancelIn, body: Body, now: datetime
                         ) -> Outcome:
    if order is None:
        return unknown_order(body, cancel.external_id, now, wait=False)
    if order.state == CANCELLED:
        return PROCESSED, "already cancelled"
    if shipped(order):
        return PROCESSED, f"already {order.state}: not cancelled, returned to sender"
    return PROCESSED, f"cancelled ({cancel.cancel_reason or 'no reason given'})"


def cancel_at_source(session: Session, found: Sequence[tuple[Order, CancelIn]], now: datetime,
                     rt: Runtime) -> None:
    details = {order.id: cancel_detail(cancel) for order, cancel in found}
    stamps = [{"b_id": order.id, "b_at": cancel.cancelled_at} for order, cancel in found]
    if stamps:
        table = Order.__table__
        session.connection().execute(
            update(table).where(table.c.id == bindparam("b_id"))
            .values(cancelled_at=bindparam("b_at")), stamps)
    cancel_orders(session, [order for order, _ in found], "cancelled at source", now, rt,
                  details)


def cancel_detail(cancel: CancelIn) -> dict[str, Any]:
    return {"source": "shopify orders/cancelled", "cancel_reason": cancel.cancel_reason,
            "cancelled_at": cancel.cancelled_at_text}


def send_back(session: Session, found: Sequence[tuple[Order, CancelIn]], now: datetime,
              rt: Runtime) -> None:
    """Cancelled at source after shipping: a return to sender (tasks/cancellation.py), once."""
    return_to_sender(session, [order for order, _ in found], now, rt, ACTOR,
                     comment=CANCELLED_AFTER_SHIPPING)


# ---------------------------------------------------------------- order_transactions/create


def on_transactions(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime
                    ) -> dict[int, Outcome]:
    """Inbox action for ("shopify", "order_transactions/create")."""
    outcomes: dict[int, Outcome] = {}
    captures: dict[int, tuple[str, Decimal | None]] = {}
    for body in bodies:
        try:
            external_id, kind, status, value = transaction_from_body(body.data)
        except BadBody as exc:
            outcomes[body.row_id] = (IGNORED, str(exc))
            continue
        if kind not in CAPTURE_KINDS or status != "success":
            outcomes[body.row_id] = (PROCESSED, f"{kind} {status}: nothing to do")
        else:
            captures[body.row_id] = (external_id, value)
    orders = load_orders(session, [ext for ext, _ in captures.values()])
    paid: dict[int, tuple[Order, str]] = {}
    for row_id, (external_id, value) in captures.items():
        order = orders.get(external_id)
        if order is None:
            outcomes[row_id] = (IGNORED, f"no such order: shopify {external_id}")
            continue
        status = settled_status(order, value)
        outcomes[row_id] = (PROCESSED, capture_reason(order, status))
        if status is not None:
            paid.setdefault(order.id, (order, status))
    record_payments(session, list(paid.values()), now)
    return in_order(bodies, outcomes)


def transaction_from_body(data: Mapping[str, Any]
                          ) -> tuple[str, str | None, str | None, Decimal | None]:
    """(order external id, kind, status, amount: read for a successful capture only; None
    when absent, which counts as the whole order)."""
    body = Fields(data)
    external_id = body.id("order_id")
    if external_id is None:
        raise BadBody("transaction without order_id")
    kind, status = body.text("kind"), body.text("status")
    value = body.money("amount") if kind in CAPTURE_KINDS and status == "success" else None
    return external_id, kind, status, value


def settled_status(order: Order, value: Decimal | None) -> str | None:
    """The financial status after this capture, or None when the order's is not to change."""
    if order.state == CANCELLED or order.financial_status not in UNSETTLED:
        return None
    status = "paid" if value is None or value >= order.total else "partially_paid"
    return status if status != order.financial_status else None


def only_payment_hold(order: Order) -> bool:
    return order.state == ON_HOLD and reason_codes(order.hold_reason) == [PAYMENT_HOLD]


def capture_reason(order: Order, status: str | None) -> str:
    if status is None:
        return f"payment already recorded (order {order.state}, {order.financial_status})"
    if only_payment_hold(order):
        return f"payment captured ({status}): hold released, order verified again"
    if order.state == ON_HOLD:
        return f"payment captured ({status}): other hold reasons remain"
    return f"payment captured ({status})"


def record_payments(session: Session, paid: Sequence[tuple[Order, str]], now: datetime
                    ) -> None:
    """New financial statuses; an order held only for payment goes back to verification
    (stock and the rest are checked again there, rather than reserved blindly)."""
    if not paid:
        return
    table = Order.__table__
    session.connection().execute(
        update(table).where(table.c.id == bindparam("b_id"))
        .values(financial_status=bindparam("b_status"), updated_at=now),
        [{"b_id": order.id, "b_status": status} for order, status in paid])
    released = [order for order, _ in paid if only_payment_hold(order)]
    apply_transitions(session, "verify", ON_HOLD, [
        Transition(o.id, RECEIVED, detail={"decision": "payment captured", "was": o.hold_reason})
        for o in released], now, actor=ACTOR)
    reopen_step(session, [o.id for o in released], "verify", now)
    record_events(session, [
        note(order.id, {"note": "payment captured", "financial_status": status,
                        "hold_kept": order.hold_reason}, now)
        for order, status in paid if order.state == ON_HOLD and not only_payment_hold(order)])


# ---------------------------------------------------------------- customers


@dataclass(frozen=True)
class CustomerIn:
    """What a customers/* body says; None where it says nothing we use."""

    external_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    consent: bool | None
    consent_state: str | None


def customer_from_body(data: Mapping[str, Any]) -> CustomerIn:
    """A customers/* body; BadBody says what is off. An address without "@" says nothing."""
    body = Fields(data)
    external_id = body.id("id")
    if external_id is None:
        raise BadBody("customer without id")
    email = body.text("email")
    email = email.strip().lower()[:320] if email and "@" in email else None
    consent = body.object("email_marketing_consent")
    state = consent.text("state") if consent else None
    return CustomerIn(external_id, email, name(body.text("first_name")),
                      name(body.text("last_name")), consent_of(state, body), state)


def name(value: str | None) -> str | None:
    return value.strip()[:200] if value and value.strip() else None


def consent_of(state: str | None, body: Fields) -> bool | None:
    """Shopify's email_marketing_consent.state, else the legacy accepts_marketing flag."""
    if state == SUBSCRIBED:
        return True
    if state in NOT_CONSENTING:
        return False
    return body.flag("accepts_marketing")


def on_customers(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime
                 ) -> dict[int, Outcome]:
    """Inbox action for ("shopify", "customers/create") and ("shopify", "customers/update").

    An update of a customer journeys does not know is not turned into one (its first order or
    customers/create brings it, and an erased customer must not come back from a late update);
    an explicit unsubscribe in it is still kept as a suppression.
    """
    outcomes: dict[int, Outcome] = {}
    parsed: list[tuple[Body, CustomerIn]] = []
    for body in bodies:
        try:
            parsed.append((body, customer_from_body(body.data)))
        except BadBody as exc:
            outcomes[body.row_id] = (IGNORED, str(exc))
    book = CustomerBook.load(session, [c for _, c in parsed])
    for body, customer in parsed:
        outcomes[body.row_id] = book.apply(customer, create=body.topic == "customers/create")
    book.write(session, now)
    follow_consent(session, [c for _, c in parsed], book, now)
    return in_order(bodies, outcomes)


CUSTOMER_FIELDS = ("email", "external_id", "first_name", "last_name", "accepts_marketing")


@dataclass
class CustomerBook:
    """The batch's customers as stored, changed in memory, then written in two statements."""

    by_external: dict[str, dict[str, Any]]
    owners: dict[str, dict[str, Any]]  # e-mail → the customer row holding it
    changed: dict[Any, dict[str, Any]]
    new: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, session: Session, customers: Sequence[CustomerIn]) -> CustomerBook:
        ids = sorted({c.external_id for c in customers})
        emails = sorted({c.email for c in customers if c.email})
        table = Customer.__table__
        query = select(table.c.id, *(table.c[f] for f in CUSTOMER_FIELDS)).where(
            table.c.external_id.in_(ids) | table.c.email.in_(emails)).order_by(table.c.id)
        rows = [dict(r) for r in session.execute(query).mappings()] if ids else []
        by_external: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row["external_id"]:
                by_external.setdefault(row["external_id"], row)
        owners = {row["email"]: row for row in rows if row["email"]}
        return cls(by_external, owners, {}, {})

    def apply(self, customer: CustomerIn, create: bool) -> Outcome:
        row = self.by_external.get(customer.external_id) or self.adopt(customer, create)
        if row is None:
            kept = customer.consent_state == "unsubscribed" and customer.email
            return PROCESSED, "no such customer (an update creates none)" + (
                "; the unsubscribe is kept as a suppression" if kept else "")
        before = dict(row)
        kept = self.move_email(row, customer.email)
        for part in ("first_name", "last_name"):
            row[part] = getattr(customer, part) or row[part]
        if customer.consent is not None:
            row["accepts_marketing"] = customer.consent
        fields = [f for f in CUSTOMER_FIELDS if row.get(f) != before.get(f)]
        if fields or "id" not in row:
            self.changed[row.get("id") or ("new", customer.external_id)] = row
        return PROCESSED, customer_reason(row, fields, kept)

    def adopt(self, customer: CustomerIn, create: bool) -> dict[str, Any] | None:
        """customers/create: the customer holding the address without a Shopify id (a CSV
        import), else a new one."""
        if not create:
            return None
        holder = self.owners.get(customer.email or "")
        if holder is not None and holder["external_id"] is None and "id" in holder:
            holder["external_id"] = customer.external_id
            row = holder
        else:
            row = {"external_id": customer.external_id, "email": None, "first_name": None,
                   "last_name": None, "accepts_marketing": False}
            self.new[customer.external_id] = row
        self.by_external[customer.external_id] = row
        return row

    def move_email(self, row: dict[str, Any], email: str | None) -> bool:
        """Take the new address unless another customer holds it (Customer.email is unique);
        True when the old one was kept for that reason. An address given up stays taken until
        the next batch, so the batch's UPDATEs never collide whatever their order."""
        if email is None or email == row["email"]:
            return False
        holder = self.owners.get(email)
        if holder is not None and holder is not row:
            return True
        row["email"], self.owners[email] = email, row
        return False

    def write(self, session: Session, now: datetime) -> None:
        updates = [row for row in self.changed.values() if "id" in row]
        if updates:
            table = Customer.__table__
            session.connection().execute(
                update(table).where(table.c.id == bindparam("b_id"))
                .values({**{f: bindparam(f"b_{f}") for f in CUSTOMER_FIELDS},
                         "updated_at": now}),
                [{"b_id": r["id"], **{f"b_{f}": r[f] for f in CUSTOMER_FIELDS}}
                 for r in updates])
        fresh = [{**{f: row[f] for f in CUSTOMER_FIELDS}, "orders_count": 0, "tags": [],
                  "created_at": now, "updated_at": now} for row in self.new.values()]
        insert_ignoring_duplicates(session, Customer, fresh, ["email"])


def customer_reason(row: dict[str, Any], fields: list[str], kept: bool) -> str:
    if "id" not in row:
        text = "customer created"
    elif fields:
        text = f"customer {row['id']}: {', '.join(fields)} updated"
    else:
        text = f"customer {row['id']}: unchanged"
    return text + ("; new e-mail not taken: another customer holds that address" if kept else "")


def follow_consent(session: Session, customers: Sequence[CustomerIn], book: CustomerBook,
                   now: datetime) -> None:
    """An explicit unsubscribe suppresses the customer's addresses (the one stored and the one
    given) for marketing; a later subscribe lifts only the suppressions such an update made."""
    last = {c.external_id: c for c in customers}  # the batch's last word per customer
    out, back = set(), set()
    for customer in last.values():
        row = book.by_external.get(customer.external_id) or {}
        addresses = {a for a in (customer.email, row.get("email")) if a}
        if customer.consent_state == "unsubscribed":
            out |= addresses
        elif customer.consent_state == SUBSCRIBED:
            back |= addresses
    suppress_many(session, sorted(out), "unsubscribe", now, SHOPIFY_UNSUBSCRIBE)
    if back - out:
        session.execute(delete(Suppression).where(
            Suppression.email_hash.in_(sorted(email_hash(a) for a in back - out)),
            Suppression.reason == "unsubscribe", Suppression.source == SHOPIFY_UNSUBSCRIBE))


# ---------------------------------------------------------------- products/delete

SHOPIFY_PRODUCT_ID = "shopify_product_id"  # Product.attributes key intake stores


def on_products_deleted(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime
                        ) -> dict[int, Outcome]:
    """Inbox action for ("shopify", "products/delete"): variants marked, never offered again;
    pending review requests and reminders about them are cancelled."""
    wanted: dict[int, str | None] = {}
    outcomes: dict[int, Outcome] = {}
    for body in bodies:
        try:
            wanted[body.row_id] = Fields(body.data).id("id")
        except BadBody as exc:
            outcomes[body.row_id] = (IGNORED, str(exc))
    ids = sorted({pid for pid in wanted.values() if pid})
    products: dict[str, list[Product]] = defaultdict(list)
    if ids:
        query = select(Product).where(Product.attributes[SHOPIFY_PRODUCT_ID].as_string().in_(ids))
        for product in session.scalars(query.order_by(Product.sku)):
            products[str(product.attributes[SHOPIFY_PRODUCT_ID])].append(product)
    fresh = {p.id: p for found in products.values() for p in found
             if not (p.attributes or {}).get(DELETED_AT)}
    mark_deleted(session, list(fresh.values()), now)
    outcomes.update({row_id: deletion_outcome(pid, products.get(pid or "", []), fresh)
                     for row_id, pid in wanted.items()})
    return in_order(bodies, outcomes)


def mark_deleted(session: Session, products: Sequence[Product], now: datetime) -> None:
    if not products:
        return
    table = Product.__table__
    session.connection().execute(
        update(table).where(table.c.id == bindparam("b_id"))
        .values(attributes=bindparam("b_attributes"), updated_at=now),
        [{"b_id": p.id, "b_attributes": {**(p.attributes or {}), DELETED_AT: now.isoformat()}}
         for p in products])
    query = select(Message.id).where(Message.topic.in_([p.sku for p in products]),
                                     Message.status == UNSENT, Message.msg_class == MARKETING)
    cancel_messages(session, list(session.scalars(query)), "product deleted")


def deletion_outcome(product_id: str | None, found: Sequence[Product],
                     fresh: Mapping[int, Product]) -> Outcome:
    if product_id is None:
        return IGNORED, "product body without id"
    if not found:
        return IGNORED, f"no product with shopify_product_id {product_id}"
    skus = ", ".join(p.sku for p in found)[:300]
    if not any(p.id in fresh for p in found):
        return PROCESSED, f"already marked deleted: {skus}"
    return PROCESSED, f"marked deleted, no longer offered: {skus}"
