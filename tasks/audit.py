"""Rule audit over what was actually sent and awarded: the simulation requires zero findings.

Each check reads the outbox and the ledger as they are, independent of the code that wrote
them, so a bug in a stage or in the governor shows up here as a violation.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.states import MessageStatus, ReturnStatus
from tasks.store.models import (
    CreditNote,
    Customer,
    LoyaltyEntry,
    Message,
    Order,
    OrderLine,
    Return,
    ReturnLine,
    ServiceCase,
)

SENT = (MessageStatus.SENT, MessageStatus.UNKNOWN)  # unknown outcome: may have reached them


@dataclass(frozen=True)
class AuditRules:
    """The limits the audit holds the outbox to (the governor's configuration)."""

    cap_short: int = 1
    cap_short_hours: int = 16
    cap_long: int = 3
    cap_long_days: int = 7
    quiet_start: int = 21  # hour, recipient's local time
    quiet_end: int = 8
    default_timezone: str = "UTC"
    winback_every_days: int = 180  # aftercare.yaml winback.every_days


def _sent_marketing(session: Session) -> list[dict[str, Any]]:
    query = (
        select(Message.id, Message.customer_id, Message.template, Message.sent_at,
               Message.order_id, Customer.accepts_marketing, Customer.timezone)
        .join(Customer, Customer.id == Message.customer_id)
        .where(Message.msg_class == "marketing", Message.status.in_(SENT))
        .order_by(Message.customer_id, Message.sent_at)
    )
    return [dict(row) for row in session.execute(query).mappings()]


def without_consent(messages: list[dict[str, Any]]) -> list[str]:
    return [f"message {m['id']}: marketing ({m['template']}) to a customer without consent"
            for m in messages if not m["accepts_marketing"]]


def cap_breaches(messages: list[dict[str, Any]], rules: AuditRules) -> list[str]:
    """Any window of cap_*_hours/days holding more marketing mails than the cap allows."""
    by_customer: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for m in messages:
        by_customer[m["customer_id"]].append(m)
    findings = []
    windows = ((rules.cap_short, timedelta(hours=rules.cap_short_hours)),
               (rules.cap_long, timedelta(days=rules.cap_long_days)))
    for customer_id, sent in by_customer.items():
        times = sorted(m["sent_at"] for m in sent)
        for cap, window in windows:
            for i, start in enumerate(times):
                inside = sum(1 for t in times[i:] if t - start < window)
                if inside > cap:
                    findings.append(f"customer {customer_id}: {inside} marketing mails within "
                                    f"{window} from {start.isoformat()} (cap {cap})")
                    break
    return findings


def quiet_hour_breaches(messages: list[dict[str, Any]], rules: AuditRules) -> list[str]:
    findings = []
    for m in messages:
        local = m["sent_at"].astimezone(ZoneInfo(m["timezone"] or rules.default_timezone))
        if local.hour >= rules.quiet_start or local.hour < rules.quiet_end:
            findings.append(f"message {m['id']}: marketing sent at {local:%H:%M} local time")
    return findings


def early_or_held_reviews(session: Session) -> list[str]:
    """A review request sent before delivery, or while the order had an open service case."""
    query = (
        select(Message.id, Message.sent_at, Order.delivered_at, ServiceCase.opened_at,
               ServiceCase.decided_at)
        .join(Order, Order.id == Message.order_id)
        .outerjoin(ServiceCase, ServiceCase.order_id == Order.id)
        .where(Message.template == "review_request", Message.status.in_(SENT))
    )
    findings = []
    for row in session.execute(query).mappings():
        if row["delivered_at"] is None or row["sent_at"] < row["delivered_at"]:
            findings.append(f"message {row['id']}: review request before delivery")
        elif row["opened_at"] and row["opened_at"] <= row["sent_at"] and (
            row["decided_at"] is None or row["sent_at"] < row["decided_at"]
        ):
            findings.append(f"message {row['id']}: review request during an open service case")
    return findings


def double_points(session: Session) -> list[str]:
    """More than one earn entry per order, or reversals beyond what the order earned."""
    earn = func.sum(LoyaltyEntry.points).filter(LoyaltyEntry.kind == "earn")
    earns = func.count().filter(LoyaltyEntry.kind == "earn")
    reversed_ = -func.coalesce(func.sum(LoyaltyEntry.points).filter(
        LoyaltyEntry.kind == "reverse"), 0)
    query = (select(LoyaltyEntry.order_id, earns, earn, reversed_)
             .where(LoyaltyEntry.order_id.is_not(None)).group_by(LoyaltyEntry.order_id))
    findings = []
    for order_id, count, earned, reversed_points in session.execute(query):
        if count > 1:
            findings.append(f"order {order_id}: points earned {count} times")
        if reversed_points > (earned or 0):
            findings.append(f"order {order_id}: {reversed_points} reversed of {earned} earned")
    return findings


def reviews_of_returned_items(session: Session) -> list[str]:
    """A review request about a SKU sent after the customer asked to return every unit of it
    (the customer no longer has it; this is not a sentiment filter)."""
    bought = (select(OrderLine.order_id, OrderLine.sku,
                     func.sum(OrderLine.quantity).label("units"))
              .group_by(OrderLine.order_id, OrderLine.sku)).subquery()
    returned = (select(Return.order_id, OrderLine.sku,
                       func.max(Return.requested_at).label("at"),
                       func.sum(ReturnLine.quantity).label("units"))
                .join(ReturnLine, ReturnLine.return_id == Return.id)
                .join(OrderLine, OrderLine.id == ReturnLine.order_line_id)
                .where(Return.status.not_in((ReturnStatus.REJECTED,
                                             ReturnStatus.KEPT_WITH_CREDIT)))
                .group_by(Return.order_id, OrderLine.sku)).subquery()
    query = (select(Message.id, returned.c.sku)
             .join(returned, (returned.c.order_id == Message.order_id)
                   & (returned.c.sku == Message.topic))
             .join(bought, (bought.c.order_id == returned.c.order_id)
                   & (bought.c.sku == returned.c.sku))
             .where(Message.template == "review_request", Message.status.in_(SENT),
                    Message.sent_at > returned.c.at, returned.c.units >= bought.c.units))
    return [f"message {mid}: review request for {sku}, returned before it was sent"
            for mid, sku in session.execute(query)]


def refunds_beyond_payment(session: Session) -> list[str]:
    """Credit notes of an order adding up to more than it cost, or a return refunded twice."""
    per_order = (select(CreditNote.order_id, Order.total, func.sum(CreditNote.total))
                 .join(Order, Order.id == CreditNote.order_id)
                 .group_by(CreditNote.order_id, Order.total))
    findings = [f"order {oid}: credit notes total {credited} of {total} paid"
                for oid, total, credited in session.execute(per_order) if credited > total]
    per_return = (select(CreditNote.return_id, func.count()).where(
        CreditNote.return_id.is_not(None)).group_by(CreditNote.return_id)
        .having(func.count() > 1))
    findings += [f"return {rid}: refunded {n} times" for rid, n in session.execute(per_return)]
    return findings


def winbacks_too_often(session: Session, every_days: int) -> list[str]:
    """Win-back mail is marketing (the consent check covers it) and goes at most once per
    customer in `every_days`."""
    query = (select(Message.customer_id, Message.sent_at)
             .where(Message.template == "winback", Message.status.in_(SENT))
             .order_by(Message.customer_id, Message.sent_at))
    last: dict[int, datetime] = {}
    findings = []
    for customer_id, sent_at in session.execute(query):
        before = last.get(customer_id)
        if before is not None and sent_at - before < timedelta(days=every_days):
            findings.append(f"customer {customer_id}: two win-back mails within {every_days} days")
        last[customer_id] = sent_at
    return findings


def negative_balances(session: Session) -> list[str]:
    """The ledger balances: no customer's points (pending + approved) below zero."""
    query = (select(LoyaltyEntry.customer_id, func.sum(LoyaltyEntry.points))
             .group_by(LoyaltyEntry.customer_id).having(func.sum(LoyaltyEntry.points) < 0))
    return [f"customer {cid}: points balance {points}" for cid, points in session.execute(query)]


def audit(session: Session, rules: AuditRules) -> list[str]:
    """Every rule violation found in the outbox and the ledger (empty means compliant)."""
    marketing = _sent_marketing(session)
    return (without_consent(marketing) + cap_breaches(marketing, rules)
            + quiet_hour_breaches(marketing, rules) + early_or_held_reviews(session)
            + double_points(session) + reviews_of_returned_items(session)
            + refunds_beyond_payment(session)
            + winbacks_too_often(session, rules.winback_every_days)
            + negative_balances(session))


def message_calendar(session: Session, since: datetime | None = None) -> dict[str, list[str]]:
    """Per customer e-mail: each message with its day, template and status, in order."""
    query = (select(Message.to_addr, Message.template, Message.status, Message.reason,
                    Message.sent_at, Message.created_at)
             .order_by(Message.to_addr, Message.created_at, Message.id))
    if since is not None:
        query = query.where(Message.created_at >= since)
    calendar: dict[str, list[str]] = defaultdict(list)
    for row in session.execute(query).mappings():
        when = (row["sent_at"] or row["created_at"]).strftime("%Y-%m-%d %H:%M")
        note = f" ({row['reason']})" if row["reason"] else ""
        calendar[row["to_addr"]].append(f"{when} {row['template']}: {row['status']}{note}")
    return dict(calendar)
