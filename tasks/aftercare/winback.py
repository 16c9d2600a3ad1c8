"""Win-back: one mail to a customer who went quiet (daily, in batches of customers).

A customer is due when their last order (not cancelled) is older than the repurchase cycle of
what it contained: `winback.by_category` (coffee 30 days, jeans 240 ...), the shortest among
its categories, else `winback.after_days`. Skipped, with the reason counted: no marketing
consent or no address, an open service case, a return in progress, marketing in the governor's
longest cap window ("contacted recently"), a win-back within `every_days`. The mail shows
what is new in their categories since that order, their points and an optional code.

Its effect key is `customer:{id}:winback:{last order id}`: the same quiet spell never mails
twice, and a new order starts a new sequence; a win-back still pending when the customer
ordered again is cancelled here. Consent, topics ("winback" on /u/), caps and quiet hours are
applied again by the governor at send time, like all marketing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, union
from sqlalchemy.orm import Session

from tasks.aftercare import aftercare_config
from tasks.aftercare.followups import customer_zone, existing_keys, on_sale, product_url
from tasks.config.aftercare import WinbackRules
from tasks.journey import StageResult
from tasks.lifecycle import cancel_messages
from tasks.loyalty.earning import loyalty_url
from tasks.loyalty.ledger import APPROVED, PENDING, balances
from tasks.messaging.compose import mail_row, store_context
from tasks.messaging.governor import COUNTED, MARKETING, max_window
from tasks.messaging.outbox import enqueue
from tasks.runtime import Runtime
from tasks.states import OPEN_RETURN_STATUSES, MessageStatus, OrderState
from tasks.store.models import Customer, Message, Order, OrderLine, Product, Return, ServiceCase
from tasks.storefront.words import customer_locale

WINBACK = "winback"
ORDERED_SINCE = "ordered since"


@dataclass(frozen=True)
class LastOrder:
    id: int
    placed_at: datetime
    currency: str
    categories: frozenset[str]


def winback_key(customer_id: int, last_order_id: int) -> str:
    return f"customer:{customer_id}:winback:{last_order_id}"


# ---------------------------------------------------------------- who to look at


def winback_customer_ids(
    session: Session, limit: int, after_id: int, now: datetime, rules: WinbackRules
) -> list[int]:
    """A page of customers to look at: last order older than the shortest cycle, or a
    win-back still pending (it may have to be cancelled). By id after `after_id`."""
    cutoff = now - timedelta(days=rules.shortest_days)
    quiet = (select(Order.customer_id.label("cid")).where(Order.state != OrderState.CANCELLED)
             .group_by(Order.customer_id).having(func.max(Order.placed_at) <= cutoff))
    pending = select(Message.customer_id.label("cid")).where(
        Message.template == WINBACK, Message.status == MessageStatus.PENDING,
        Message.customer_id.is_not(None))
    both = union(quiet, pending).subquery()
    query = (select(both.c.cid).where(both.c.cid > after_id).distinct()
             .order_by(both.c.cid).limit(limit))
    return list(session.scalars(query))


def last_orders(session: Session, customer_ids: Sequence[int]) -> dict[int, LastOrder]:
    """Each customer's latest order that was not cancelled, with its products' categories."""
    query = (select(Order.customer_id, Order.id, Order.placed_at, Order.currency)
             .where(Order.customer_id.in_(customer_ids), Order.state != OrderState.CANCELLED)
             .order_by(Order.customer_id, Order.placed_at, Order.id))
    latest = {cid: (oid, at, cur) for cid, oid, at, cur in session.execute(query)}
    categories: dict[int, set[str]] = defaultdict(set)
    if latest:
        lines = (select(OrderLine.order_id, Product.category)
                 .join(Product, Product.sku == OrderLine.sku)
                 .where(OrderLine.order_id.in_([oid for oid, _, _ in latest.values()]),
                        Product.category.is_not(None)))
        for order_id, category in session.execute(lines):
            categories[order_id].add(category)
    return {cid: LastOrder(oid, at, cur, frozenset(categories[oid]))
            for cid, (oid, at, cur) in latest.items()}


# ---------------------------------------------------------------- why not


def blocked_customers(
    session: Session, customer_ids: Sequence[int], now: datetime, rt: Runtime
) -> dict[int, str]:
    """customer → the first reason found not to win them back now (four queries)."""
    rules = aftercare_config(rt.config).winback
    reasons: dict[int, str] = {}
    for reason, found in (
        ("open service case", open_case_customers(session, customer_ids)),
        ("return in progress", open_return_customers(session, customer_ids)),
        (f"won back in the last {rules.every_days} days",
         won_back_since(session, customer_ids, now - timedelta(days=rules.every_days))),
        ("contacted recently", contacted_since(session, customer_ids,
                                               now - max_window(rt.config.governor))),
    ):
        for customer_id in found:
            reasons.setdefault(customer_id, reason)
    return reasons


def open_case_customers(session: Session, customer_ids: Sequence[int]) -> set[int]:
    query = (select(Order.customer_id).join(ServiceCase, ServiceCase.order_id == Order.id)
             .where(Order.customer_id.in_(customer_ids), ServiceCase.status == "open"))
    return set(session.scalars(query))


def open_return_customers(session: Session, customer_ids: Sequence[int]) -> set[int]:
    query = select(Return.customer_id).where(Return.customer_id.in_(customer_ids),
                                             Return.status.in_(OPEN_RETURN_STATUSES))
    return set(session.scalars(query))


def won_back_since(session: Session, customer_ids: Sequence[int], since: datetime) -> set[int]:
    """Customers a win-back went to (or was made for) since then, but a cancelled one; by
    when it was sent, so the rule audit's "once per every_days" holds for sends too."""
    at = func.coalesce(Message.sent_at, Message.created_at)
    query = select(Message.customer_id).where(
        Message.template == WINBACK, Message.customer_id.in_(customer_ids),
        at > since, Message.status != MessageStatus.CANCELLED)
    return set(session.scalars(query))


def contacted_since(session: Session, customer_ids: Sequence[int], since: datetime) -> set[int]:
    """Customers marketing went to (or may have) since then: the governor's cap count."""
    at = func.coalesce(Message.sent_at, Message.not_before)
    query = select(Message.customer_id).where(
        Message.customer_id.in_(customer_ids), Message.msg_class == MARKETING,
        Message.status.in_(COUNTED), at > since)
    return set(session.scalars(query))


def cancel_superseded(
    session: Session, customer_ids: Sequence[int], last: dict[int, LastOrder]
) -> int:
    """Cancel pending win-backs of customers who ordered again after the mail was made."""
    query = select(Message.id, Message.customer_id, Message.effect_key).where(
        Message.template == WINBACK, Message.customer_id.in_(customer_ids),
        Message.status == MessageStatus.PENDING)
    stale = [mid for mid, cid, key in session.execute(query)
             if cid not in last or key != winback_key(cid, last[cid].id)]
    cancel_messages(session, stale, ORDERED_SINCE)
    return len(stale)


# ---------------------------------------------------------------- the stage


def winback(
    session: Session, customer_ids: Sequence[int], now: datetime, rt: Runtime
) -> StageResult:
    """Win-back mail for the batch's customers who are due, once per quiet spell."""
    rules = aftercare_config(rt.config).winback
    ids = sorted(set(customer_ids))
    if not ids or not rules.enabled:
        return StageResult(stage=WINBACK, details={"sent": 0})
    last = last_orders(session, ids)
    cancelled = cancel_superseded(session, ids, last)
    due = {cid: order for cid, order in last.items()
           if now - order.placed_at >= timedelta(days=rules.days_for(order.categories))}
    customers = list(session.scalars(
        select(Customer).where(Customer.id.in_(sorted(due))).order_by(Customer.id)))
    reasons = skip_reasons(session, customers, now, rt)
    rows = [winback_message(c, due[c.id], news, points, rt, now)
            for c, news, points in with_content(session, customers, reasons, due, rt)]
    known = existing_keys(session, [row["effect_key"] for row in rows])
    enqueue(session, rows, now)
    skipped = Counter(reasons.values()) + Counter({"already sent": len(known)})
    sent = len(rows) - len(known)
    return StageResult(
        stage=WINBACK, advanced=sent, skipped=sum(skipped.values()), closed=cancelled,
        details={"sent": sent, "not_due": len(ids) - len(due),
                 "cancelled_ordered_since": cancelled,
                 **{f"skipped: {why}": n for why, n in sorted(skipped.items())}})


def skip_reasons(
    session: Session, customers: Sequence[Customer], now: datetime, rt: Runtime
) -> dict[int, str]:
    """customer → why no win-back now; consent first (the rule audit's "never without")."""
    reasons = {c.id: "no marketing consent" for c in customers if not c.accepts_marketing}
    reasons |= {c.id: "no address" for c in customers
                if c.id not in reasons and not (c.email or "").strip()}
    rest = [c.id for c in customers if c.id not in reasons]
    return reasons | (blocked_customers(session, rest, now, rt) if rest else {})


def with_content(
    session: Session, customers: Sequence[Customer], reasons: dict[int, str],
    due: dict[int, LastOrder], rt: Runtime,
):
    """(customer, what's new for them, their points) for each customer not skipped."""
    ready = [c for c in customers if c.id not in reasons]
    rules = aftercare_config(rt.config).winback
    news = whats_new(session, [due[c.id] for c in ready], rules.new_products)
    points = balances(session, [c.id for c in ready])
    return [(c, news.get(due[c.id].id, []), points[c.id]) for c in ready]


# ---------------------------------------------------------------- the mail


def whats_new(
    session: Session, orders: Sequence[LastOrder], limit: int
) -> dict[int, list[Product]]:
    """last order id → up to `limit` products of its categories updated since it was placed,
    in stock and on sale, newest first (one query for the batch)."""
    categories = {c for o in orders for c in o.categories}
    if not orders or not categories or limit <= 0:
        return {}
    since = min(o.placed_at for o in orders)
    query = (select(Product).where(Product.category.in_(categories),
                                   Product.stock - Product.reserved > 0,
                                   Product.updated_at > since)
             .order_by(Product.updated_at.desc(), Product.sku))
    products = [p for p in session.scalars(query) if on_sale(p)]
    return {o.id: [p for p in products
                   if p.category in o.categories and p.updated_at > o.placed_at][:limit]
            for o in orders}


def winback_code(secret_key: str, customer_id: int, last_order_id: int, prefix: str) -> str:
    """Deterministic per customer and quiet spell (a rerun shows the same code), unguessable
    without the secret. The store creates it as a single-use discount (like the birthday's)."""
    digest = hmac.new(secret_key.encode(), f"winback:{customer_id}:{last_order_id}".encode(),
                      hashlib.sha256).digest()
    return f"{prefix}-{base64.b32encode(digest).decode()[:10]}"


def winback_message(
    customer: Customer, last: LastOrder, news: Sequence[Product], points: dict[str, int],
    rt: Runtime, now: datetime,
) -> dict[str, Any]:
    """A customer-level outbox row (no order), keyed per customer and last order."""
    config, rules = rt.config, aftercare_config(rt.config).winback
    locale = customer_locale(customer, config)  # one we have words for: dates match them
    first, family = customer.first_name, customer.last_name
    context = {
        "store": {**store_context(config), "links_base_url": config.store.links_base_url},
        "customer": {"first_name": first, "name": " ".join(p for p in (first, family) if p)},
        "locale": locale, "currency": config.store.default_currency,
        "since": last.placed_at.date().isoformat(),
        "picks": [{"sku": p.sku, "title": p.title, "category": p.category,
                   "price": str(p.price) if p.price is not None else None,
                   "url": product_url(config, p, p.sku)} for p in news],
        "loyalty": {"approved": points[APPROVED], "pending": points[PENDING],
                    "url": loyalty_url(rt, customer.id, now) if points[APPROVED] else None},
        "offer": offer_context(customer, last, rules, rt, now),
    }
    return mail_row(config, WINBACK, context, now, key=winback_key(customer.id, last.id),
                    order_id=None, customer_id=customer.id, to_addr=customer.email,
                    topic=WINBACK)


def offer_context(
    customer: Customer, last: LastOrder, rules: WinbackRules, rt: Runtime, now: datetime
) -> dict[str, Any] | None:
    if rules.percent_off is None:
        return None
    today = now.astimezone(customer_zone(customer, rt.config.store.timezone)).date()
    return {"code": winback_code(rt.settings.secret_key, customer.id, last.id,
                                 rules.code_prefix),
            "percent_off": rules.percent_off,
            "valid_until": (today + timedelta(days=rules.valid_days)).isoformat()}


# ---------------------------------------------------------------- the report


def winback_counts(session: Session) -> dict[str, int]:
    """Win-back mail by outcome for `journeys report`: sent, pending, and skipped / expired /
    cancelled by reason. (Customers the daily stage skipped have no row: its run result
    counts them by reason.)"""
    query = (select(Message.status, Message.reason, func.count())
             .where(Message.template == WINBACK).group_by(Message.status, Message.reason))
    counts: Counter[str] = Counter()
    for status, reason, n in session.execute(query):
        final = status in (MessageStatus.SKIPPED, MessageStatus.EXPIRED,
                           MessageStatus.CANCELLED)
        counts[f"{status}: {reason}" if final and reason else str(status)] += n
    return dict(sorted(counts.items()))
