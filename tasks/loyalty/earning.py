"""Stage `loyalty_earn`: pending points for delivered orders; enrolment or an invite."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from tasks.config.loyalty import LoyaltyConfig
from tasks.journey import StageResult
from tasks.links import Purpose, link_url
from tasks.loyalty.ledger import (
    APPROVE_STEP,
    EARN,
    EARN_STEP,
    PENDING,
    append_entries,
    earn_key,
    entry_row,
    existing_keys,
    quarantine,
)
from tasks.loyalty.rules import InvalidInput, eligible_value, loyalty_config, points_for
from tasks.messaging.compose import locale_of, mail_row, store_context, template_version
from tasks.messaging.outbox import enqueue as enqueue_messages
from tasks.runtime import Runtime
from tasks.store.journal import CLOSED, DONE, HELD, schedule_step, set_steps
from tasks.store.loaders import delivered_orders
from tasks.store.models import Customer, Order

INVITE = "loyalty_invite"
NOT_EARNING_STATUSES = frozenset({"refunded", "voided"})


@dataclass
class EarnPlan:
    """What the earn stage decided for one batch."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    problems: list[tuple[dict[str, Any], InvalidInput]] = field(default_factory=list)


def load_delivered(session: Session, order_ids: Sequence[int]) -> list[Order]:
    """Delivered orders, cancelled ones too, unlocked: the ledger's keys make reruns no-ops."""
    return delivered_orders(session, order_ids, skip_cancelled=False, lock=False)


def earn(session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime) -> StageResult:
    """Pending points for the batch's delivered orders; enrolment or invite after delivery.

    Consumes step `loyalty_earn`; schedules `loyalty_approve` at delivered_at + return window.
    An order not delivered yet is skipped (its step stays pending).
    """
    settings = loyalty_config(rt.config)
    orders = load_delivered(session, order_ids)
    enrolled = enroll_after_delivery(session, orders, now, settings)
    invites = invite_messages(orders, enrolled, settings, rt, now)
    enqueue_messages(session, invites, now)
    plan = plan_earn(orders, enrolled, settings, now)
    known = existing_keys(session, [e["source_key"] for e in plan.entries])
    new = append_entries(session, [e for e in plan.entries if e["source_key"] not in known], now)
    schedule_step(session, APPROVE_STEP, [(e["order_id"], e["available_at"])
                                          for e in plan.entries], now)
    reverse_refunds_before_earning(session, [e["order_id"] for e in new], now, rt)
    quarantine(session, "loyalty_order", "loyalty", plan.problems, now)
    set_steps(session, EARN_STEP, plan.outcomes, now)
    statuses = [status for status, _ in plan.outcomes.values()]
    return StageResult(
        stage=EARN_STEP, advanced=statuses.count(DONE), closed=statuses.count(CLOSED),
        quarantined=statuses.count(HELD), skipped=len(set(order_ids)) - len(orders),
        details={"points_pending": sum(e["points"] for e in new), "entries": len(new),
                 "enrolled": sum(enrolled.values()),
                 "invites_enqueued": len(invites)},
    )


def reverse_refunds_before_earning(
    session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime
) -> None:
    """Refunds recorded before an order earned (a partial refund before delivery) reverse their
    share now that there are points to reverse."""
    if order_ids:
        from tasks.lifecycle import reverse_recorded_refunds  # lifecycle imports loyalty

        reverse_recorded_refunds(session, order_ids, now, rt)


def enroll_after_delivery(
    session: Session, orders: Sequence[Order], now: datetime, settings: LoyaltyConfig
) -> dict[int, bool]:
    """Enrol consenting customers (compare-and-set); returns {enrolled customer: newly?}."""
    customers = {o.customer_id: o.customer for o in orders}
    enrolled = {cid: False for cid, c in customers.items() if c.loyalty_enrolled_at is not None}
    if settings.enrollment.auto_enroll_with_consent:
        joining = [cid for cid, c in customers.items()
                   if c.loyalty_enrolled_at is None and c.accepts_marketing]
        if joining:
            session.execute(
                update(Customer)
                .where(Customer.id.in_(joining), Customer.loyalty_enrolled_at.is_(None))
                .values(loyalty_enrolled_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        enrolled.update({cid: True for cid in joining})
    return enrolled


def enroll(session: Session, customer_ids: Sequence[int], now: datetime) -> int:
    """Explicit enrolment (an accepted invite, an operator); members keep their date."""
    if not customer_ids:
        return 0
    result = session.execute(
        update(Customer)
        .where(Customer.id.in_(customer_ids), Customer.loyalty_enrolled_at.is_(None))
        .values(loyalty_enrolled_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def plan_earn(
    orders: Sequence[Order], enrolled: Mapping[int, bool], settings: LoyaltyConfig, now: datetime
) -> EarnPlan:
    """Per order: an earn entry, a reason not to earn, or a value we cannot compute with."""
    plan = EarnPlan()
    for order in orders:
        reason = not_earning_reason(order, enrolled, settings)
        if reason:
            plan.outcomes[order.id] = (CLOSED, reason)
            continue
        try:
            plan.entries.append(earn_entry(order, settings, now))
            plan.outcomes[order.id] = (DONE, None)
        except InvalidInput as err:
            plan.problems.append((order_record(order), err))
            plan.outcomes[order.id] = (HELD, str(err)[:500])
    return plan


def not_earning_reason(
    order: Order, enrolled: Mapping[int, bool], settings: LoyaltyConfig
) -> str | None:
    if order.cancelled_at is not None:
        return "no points: order cancelled"
    if order.replaces_order_id is not None:  # tasks/replacements.py: nothing was paid
        return "no points: a replacement, at no charge"
    if order.financial_status in NOT_EARNING_STATUSES:
        return f"no points: order {order.financial_status}"
    if settings.rule_at(order.placed_at) is None:
        return "no points: no earning rule in force when the order was placed"
    if not settings.enrollment.earn_before_enrollment and order.customer_id not in enrolled:
        return "no points: customer not enrolled"
    return None


def earn_entry(order: Order, settings: LoyaltyConfig, now: datetime) -> dict[str, Any]:
    """Pending points under the rule in force when the order was placed."""
    rule = settings.rule_at(order.placed_at)
    assert rule is not None  # not_earning_reason checked it
    basis = eligible_value(order)
    return entry_row(
        source_key=earn_key(order.id), customer_id=order.customer_id, order_id=order.id,
        kind=EARN, points=points_for(basis, rule, order.currency), status=PENDING,
        rule_version=rule.version, basis=basis,
        available_at=order.delivered_at + timedelta(days=settings.return_window_days),
        created_at=now,
    )


def order_record(order: Order) -> dict[str, Any]:
    return {"order_id": order.id, "external_id": order.external_id, "source": order.source,
            "note_attributes": dict(order.note_attributes or {})}


def invite_messages(
    orders: Sequence[Order], enrolled: Mapping[int, bool], settings: LoyaltyConfig,
    rt: Runtime, now: datetime,
) -> list[dict[str, Any]]:
    """One invite per consenting, not enrolled customer (keyed per customer, sent once ever)."""
    if not settings.enrollment.invite:
        return []
    first_order: dict[int, Order] = {}
    for order in orders:
        if order.customer_id not in enrolled and order.customer.accepts_marketing:
            first_order.setdefault(order.customer_id, order)
    return [invite_message(order, rt, now) for order in first_order.values()]


def invite_message(order: Order, rt: Runtime, now: datetime) -> dict[str, Any]:
    cfg = rt.config
    key = f"customer:{order.customer_id}:{INVITE}:v{template_version(cfg, INVITE)}"
    return mail_row(cfg, INVITE, invite_context(order, rt, now), now, key=key,
                    order_id=order.id, customer_id=order.customer_id,
                    to_addr=order.customer.email, topic="loyalty")


def invite_context(order: Order, rt: Runtime, now: datetime) -> dict[str, Any]:
    cfg, customer = rt.config, order.customer
    return {
        "store": store_context(cfg),
        "customer": customer_names(customer),
        "order": {"id": order.id, "name": order.name or f"#{order.external_id}",
                  "locale": locale_of(order, cfg)},
        "loyalty": {"join_url": loyalty_url(rt, order.customer_id, now)},
    }


def loyalty_url(rt: Runtime, customer_id: int, now: datetime) -> str:
    """The customer's rewards page (/l/{token}: points, tier, and a Join button for a customer
    not enrolled yet); issued on the stage's day, so a re-rendered mail has the same link."""
    return link_url(rt.config.store.links_base_url, rt.settings.secret_key, Purpose.LOYALTY,
                    customer_id, now)


def customer_names(customer: Customer) -> dict[str, Any]:
    first, last = customer.first_name, customer.last_name
    return {"first_name": first, "name": " ".join(p for p in (first, last) if p)}
