"""The rewards page (/l/{token}): a customer's points, tier, history, and joining.

Every figure comes from the functions the ledger and the report use (`balances`,
`rolling_spend`, `LoyaltyConfig.tier_for`); this module only arranges them for reading. Joining
is `tasks.loyalty.enroll`, the compare-and-set an accepted invite uses, so a second POST (or a
delivered order enrolling the customer in between) changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.config import Config
from tasks.loyalty import (
    APPROVE,
    APPROVED,
    EARN,
    PENDING,
    REVERSE,
    EarningRule,
    LoyaltyConfig,
    Tier,
    balances,
    enroll,
    loyalty_config,
    rolling_spend,
)
from tasks.store.models import Customer, LoyaltyEntry, Order
from tasks.storefront.words import customer_locale

HISTORY_LIMIT = 50  # the newest entries; older ones add little to a page read on a phone


@dataclass(frozen=True)
class Waiting:
    """Points of one order still pending, and the day they become spendable."""

    points: int
    order: str
    available_from: date | None


@dataclass(frozen=True)
class Event:
    """One line of the history; the template words it by `kind`:
    earned | available | reversed | adjusted."""

    kind: str
    points: int
    order: str | None
    day: date
    available_from: date | None = None  # set on an earn whose points are still pending


@dataclass(frozen=True)
class EarnRate:
    """`points` (as written, e.g. "1") for every `unit` of `currency` spent."""

    points: str
    unit: Decimal
    currency: str


@dataclass
class RewardsView:
    """What the page shows one customer."""

    first_name: str | None
    member_since: date | None
    locale: str
    currency: str
    approved: int
    pending: int
    waiting: list[Waiting]
    tier: str
    spend: Decimal
    next_tier: Tier | None
    next_needs: Decimal | None
    history: list[Event]
    rates: list[EarnRate]  # the rule in force today: store currency first, then overrides
    settings: LoyaltyConfig

    @property
    def member(self) -> bool:
        return self.member_since is not None


def rewards_view(session: Session, customer: Customer, cfg: Config, now: datetime) -> RewardsView:
    """Balance, tier, history and earning rules of one customer, as of `now`."""
    settings = loyalty_config(cfg)
    points = balances(session, [customer.id])[customer.id]
    spend = rolling_spend(session, [customer.id], now, settings.tier_window_days)[customer.id]
    tier = settings.tier_for(spend)
    next_tier = next((t for t in settings.tiers if t.min_spend > spend), None)
    entries = ledger_of(session, customer.id)
    names = order_names(session, {e.order_id for e in entries if e.order_id is not None})
    return RewardsView(
        first_name=customer.first_name,
        member_since=customer.loyalty_enrolled_at.date() if customer.loyalty_enrolled_at else None,
        locale=customer_locale(customer, cfg),
        currency=cfg.store.default_currency,
        approved=points[APPROVED], pending=points[PENDING],
        waiting=waiting_points(entries, names),
        tier=tier, spend=spend, next_tier=next_tier,
        next_needs=next_tier.min_spend - spend if next_tier else None,
        history=history(entries, names)[:HISTORY_LIMIT],
        rates=earn_rates(settings.rule_at(now), cfg.store.default_currency), settings=settings,
    )


def earn_rates(rule: EarningRule | None, currency: str) -> list[EarnRate]:
    """How today's rule earns, in words the page can print (none before the first rule)."""
    if rule is None:
        return []
    others = [(code, rate) for code, rate in sorted(rule.currencies.items())
              if code != currency.upper()]
    return [EarnRate(f"{rate.points_per_unit.normalize():f}", rate.unit, code)
            for code, rate in [(currency, rule.rate_for(currency)), *others]]


def join(session: Session, customer_id: int, now: datetime) -> bool:
    """Enrol the customer (True) or leave a member as they are (False): the same compare-and-set
    as an accepted invite, so the date of joining stays the first one."""
    return enroll(session, [customer_id], now) == 1


def ledger_of(session: Session, customer_id: int) -> list[Any]:
    """The customer's ledger rows, newest first (id breaks ties within one stage run)."""
    table = LoyaltyEntry.__table__
    query = (select(table).where(table.c.customer_id == customer_id)
             .order_by(table.c.created_at.desc(), table.c.id.desc()))
    return list(session.execute(query))


def order_names(session: Session, order_ids: set[int]) -> dict[int, str]:
    """`#1001` for each order: the store's name for it, as the mails say it."""
    if not order_ids:
        return {}
    query = select(Order.id, Order.name, Order.external_id).where(Order.id.in_(order_ids))
    return {oid: name or f"#{external}" for oid, name, external in session.execute(query)}


def waiting_points(entries: list[Any], names: dict[int, str]) -> list[Waiting]:
    """Per order, the pending points not yet released or reversed, soonest available first."""
    available = {e.order_id: day_of(e.available_at) for e in entries if e.kind == EARN}
    rows = [Waiting(points, names.get(oid, "an order"), available.get(oid))
            for oid, points in pending_by_order(entries).items() if points > 0]
    return sorted(rows, key=lambda w: (w.available_from or date.max, w.order))


def history(entries: list[Any], names: dict[int, str]) -> list[Event]:
    """The ledger in plain words. An approval is two rows (pending −N, approved +N): only the
    second is news to the customer. Rows of 0 points (a refund after everything was reversed)
    say nothing."""
    still_pending = {w for w, points in pending_by_order(entries).items() if points > 0}
    events = []
    for entry in entries:
        if entry.points == 0 or (entry.kind == APPROVE and entry.status == PENDING):
            continue
        order = names.get(entry.order_id, "an order") if entry.order_id is not None else None
        day = day_of(entry.created_at)
        if entry.kind == EARN:
            later = day_of(entry.available_at) if entry.order_id in still_pending else None
            events.append(Event("earned", entry.points, order, day, later))
        elif entry.kind == APPROVE:
            events.append(Event("available", entry.points, order, day))
        elif entry.kind == REVERSE:
            events.append(Event("reversed", -entry.points, order, day))
        else:  # an adjustment by the team, either way
            events.append(Event("adjusted", entry.points, order, day))
    return events


def pending_by_order(entries: list[Any]) -> dict[int, int]:
    totals: dict[int, int] = defaultdict(int)
    for entry in entries:
        if entry.order_id is not None and entry.status == PENDING:
            totals[entry.order_id] += entry.points
    return totals


def day_of(moment: datetime | None) -> date | None:
    return moment.date() if moment else None
