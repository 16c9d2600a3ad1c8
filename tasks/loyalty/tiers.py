"""Tiers from rolling spend, and the `loyalty_update` mail when a tier changes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from tasks.config.loyalty import LoyaltyConfig
from tasks.journey import StageResult
from tasks.loyalty.earning import customer_names, loyalty_url
from tasks.loyalty.ledger import APPROVED, EARN, PENDING, REVERSE, balances
from tasks.loyalty.rules import loyalty_config
from tasks.messaging.compose import mail_row, store_context, template_version
from tasks.messaging.outbox import enqueue as enqueue_messages
from tasks.runtime import Runtime
from tasks.store.models import Customer, LoyaltyEntry, Order
from tasks.storefront.words import customer_locale

UPDATE = "loyalty_update"


def rolling_spend(
    session: Session, customer_ids: Sequence[int], now: datetime, window_days: int
) -> dict[int, Decimal]:
    """Eligible spend on orders delivered in the window, minus their refunds (capped per order)."""
    table = LoyaltyEntry.__table__
    query = (
        select(table.c.customer_id, table.c.order_id, table.c.kind, table.c.basis)
        .join(Order.__table__, Order.__table__.c.id == table.c.order_id)
        .where(table.c.customer_id.in_(customer_ids), table.c.kind.in_([EARN, REVERSE]),
               Order.__table__.c.delivered_at > now - timedelta(days=window_days),
               Order.__table__.c.delivered_at <= now)
    )
    earned: dict[tuple[int, int], Decimal] = defaultdict(Decimal)
    refunded: dict[tuple[int, int], Decimal] = defaultdict(Decimal)
    for cid, oid, kind, basis in session.execute(query):
        (earned if kind == EARN else refunded)[(cid, oid)] += basis or Decimal(0)
    spend = {cid: Decimal(0) for cid in customer_ids}
    for (cid, oid), value in earned.items():
        spend[cid] += value - min(refunded[(cid, oid)], value)
    return spend


def update_tiers(
    session: Session, customer_ids: Sequence[int], now: datetime, rt: Runtime
) -> StageResult:
    """Set each customer's tier from rolling spend; a `loyalty_update` mail when it changes.

    Mail goes to enrolled customers only, not for a first assignment of the lowest tier, and
    for a downgrade only if `tier_emails.on_downgrade`.
    """
    settings = loyalty_config(rt.config)
    ids = sorted(set(customer_ids))
    customers = list(session.scalars(select(Customer).where(Customer.id.in_(ids)))) if ids else []
    spend = rolling_spend(session, ids, now, settings.tier_window_days) if ids else {}
    changes = {c.id: (c.loyalty_tier, settings.tier_for(spend[c.id])) for c in customers
               if settings.tier_for(spend[c.id]) != c.loyalty_tier}
    set_tiers(session, {cid: new for cid, (_, new) in changes.items()}, now)
    notify = [c for c in customers
              if c.id in changes and tier_mail_due(c, *changes[c.id], settings)]
    points = balances(session, [c.id for c in notify])
    messages = [tier_message(c, *changes[c.id], points[c.id], rt, now) for c in notify]
    enqueue_messages(session, messages, now)
    return StageResult(stage="loyalty_tiers", advanced=len(changes),
                       skipped=len(customers) - len(changes),
                       details={"tier_mails_enqueued": len(messages)})


def set_tiers(session: Session, tiers: Mapping[int, str], now: datetime) -> None:
    if not tiers:
        return
    table = Customer.__table__
    statement = (
        update(table).where(table.c.id == bindparam("b_id"))
        .values(loyalty_tier=bindparam("b_tier"), updated_at=now)
    )
    session.connection().execute(statement, [{"b_id": c, "b_tier": t} for c, t in tiers.items()])


def tier_mail_due(customer: Customer, old: str | None, new: str, settings: LoyaltyConfig) -> bool:
    if not settings.tier_emails.enabled or customer.loyalty_enrolled_at is None:
        return False
    old_rank, new_rank = settings.tier_rank(old), settings.tier_rank(new)
    if old is None:
        return new_rank > 0
    return new_rank > old_rank or settings.tier_emails.on_downgrade


def tier_message(
    customer: Customer, old: str | None, new: str, points: Mapping[str, int], rt: Runtime,
    now: datetime,
) -> dict[str, Any]:
    """A customer-level outbox row keyed by customer, new tier and day."""
    cfg = rt.config
    version = template_version(cfg, UPDATE)
    key = f"customer:{customer.id}:{UPDATE}:{new}:{now.date().isoformat()}:v{version}"
    context = {
        "store": store_context(cfg), "customer": customer_names(customer),
        "locale": customer_locale(customer, cfg),  # the mail's language (render.mail_locale)
        "loyalty": {"tier": new, "previous_tier": old, "pending": points[PENDING],
                    "approved": points[APPROVED],
                    "url": loyalty_url(rt, customer.id, now)},
    }
    return mail_row(cfg, UPDATE, context, now, key=key, order_id=None,
                    customer_id=customer.id, to_addr=customer.email, topic="loyalty")
