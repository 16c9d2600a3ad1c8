"""Loyalty: an append-only points ledger fed by delivered orders, approvals and refunds.

Every entry has a unique source key, so each stage can run any number of times:

- ``order:{id}:earn``            pending points for a delivered order (stage `loyalty_earn`)
- ``order:{id}:approve:release`` / ``order:{id}:approve``  the order's remaining pending points
                                  leave pending (-N) and become approved (+N) once the return
                                  window has closed (stage `loyalty_approve`)
- ``order:{id}:reverse:{key}``   a refund's exact share of what the order earned, taken from
                                  pending while the earn is pending, else from approved

Decisions (configs/loyalty.yaml can change the first two):
- Points are earned by every delivered order, enrolled or not, so a customer who joins later
  finds them (`earn_before_enrollment`). Balances report them for everyone; showing them only
  to members is the UI's job.
- After a delivered order, a customer who accepts marketing is enrolled automatically
  (`auto_enroll_with_consent`); with auto-enrolment off, a consenting customer gets one
  `loyalty_invite` (keyed per customer). A customer without consent is never invited: the
  invite is marketing mail, and queuing a mail the governor must drop is noise.
- A refund's points are proportional to the cumulative refunded amount over the order's eligible
  value, computed from the points the earn entry recorded (so its rule version, never today's
  rule); rounding is cumulative, so the reversals of an order add up to at most what it earned
  and to exactly that once the refunds reach the eligible value.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, selectinload

from tasks.config import Config, section
from tasks.confirm import locale_of, store_context
from tasks.intake.ingest import quarantine_records
from tasks.intake.schema import Rejected
from tasks.links import Purpose, link_url
from tasks.messaging.outbox import enqueue as enqueue_messages
from tasks.messaging.outbox import message_id_for, order_message
from tasks.runtime import Runtime, StageResult
from tasks.store.db import is_postgres
from tasks.store.journal import (
    CLOSED,
    DONE,
    HELD,
    insert_new,
    record_events,
    schedule_steps,
    set_steps,
)
from tasks.store.models import Customer, LoyaltyEntry, Order

EARN_STEP = "loyalty_earn"
APPROVE_STEP = "loyalty_approve"
INVITE = "loyalty_invite"
UPDATE = "loyalty_update"
PENDING, APPROVED = "pending", "approved"
EARN, APPROVE, REVERSE = "earn", "approve", "reverse"
POINTS_PAID_ATTRIBUTE = "points_redeemed_amount"
NOT_EARNING_STATUSES = frozenset({"refunded", "voided"})
CENT = Decimal("0.0001")  # Money columns hold 4 decimals
MAX_REFUND_KEY = 100


# --- config -------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rate(_Strict):
    points_per_unit: Decimal = Field(ge=0)
    unit: Decimal = Field(gt=0)


class EarningRule(Rate):
    version: str = Field(min_length=1, max_length=30)
    valid_from: date
    currencies: dict[str, Rate] = Field(default_factory=dict)

    def rate_for(self, currency: str) -> Rate:
        return self.currencies.get(currency.upper(), self)


class Tier(_Strict):
    name: str = Field(min_length=1, max_length=30)
    min_spend: Decimal = Field(ge=0)


class Enrollment(_Strict):
    auto_enroll_with_consent: bool = True
    invite: bool = True
    earn_before_enrollment: bool = True


class TierEmails(_Strict):
    enabled: bool = True
    on_downgrade: bool = False


class LoyaltyConfig(_Strict):
    rules: list[EarningRule] = Field(min_length=1)
    return_window_days: int = Field(default=30, ge=0)
    tier_window_days: int = Field(default=365, ge=1)
    tiers: list[Tier] = Field(min_length=1)
    enrollment: Enrollment = Enrollment()
    tier_emails: TierEmails = TierEmails()

    @model_validator(mode="after")
    def _consistent(self) -> LoyaltyConfig:
        """Unique rule versions and valid_from dates; tiers ascending, the first from 0."""
        if len({r.version for r in self.rules}) != len(self.rules):
            raise ValueError("rule versions must be unique")
        if len({r.valid_from for r in self.rules}) != len(self.rules):
            raise ValueError("two rules cannot start on the same day")
        spends = [t.min_spend for t in self.tiers]
        if spends != sorted(set(spends)) or spends[0] != 0:
            raise ValueError("tiers need strictly ascending min_spend, the first one 0")
        return self

    def rule_at(self, placed_at: datetime) -> EarningRule | None:
        """The latest rule whose valid_from is on or before the day (UTC) the order was placed."""
        day = placed_at.date()
        started = [r for r in self.rules if r.valid_from <= day]
        return max(started, key=lambda r: r.valid_from) if started else None

    def tier_for(self, spend: Decimal) -> str:
        return [t.name for t in self.tiers if t.min_spend <= spend][-1]

    def tier_rank(self, name: str | None) -> int:
        names = [t.name for t in self.tiers]
        return names.index(name) if name in names else -1


def loyalty_config(cfg: Config) -> LoyaltyConfig:
    return section(cfg, "loyalty", LoyaltyConfig)


# --- money → points -----------------------------------------------------------------------


class InvalidInput(ValueError):
    """A value on an order or refund we cannot compute with; it goes to quarantine."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field_name, self.reason = field_name, reason


def _money(value: Any, field_name: str) -> Decimal:
    """A finite, non-negative amount from a number or string."""
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise InvalidInput(field_name, f"not an amount: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise InvalidInput(field_name, f"must be a finite amount >= 0, got {value!r}")
    return amount


def points_paid(order: Order) -> Decimal:
    """What the customer paid with points (note attribute `points_redeemed_amount`), else 0."""
    raw = (order.note_attributes or {}).get(POINTS_PAID_ATTRIBUTE)
    if raw in (None, ""):
        return Decimal(0)
    return _money(raw, f"note_attributes.{POINTS_PAID_ATTRIBUTE}")


def eligible_value(order: Order) -> Decimal:
    """Goods that earn points: non-gift-card lines after line and order-level discounts, without
    shipping, without tax (removed proportionally when prices include it) and without the part
    paid with points.

    `Order.discounts` is the order's total discount (Shopify `total_discounts`, which includes
    the line discounts); the order-level part is what the lines do not account for. Gift cards
    cannot be discounted, so it is allocated to the other lines only.
    """
    goods = sum((_line_net(line) for line in order.lines if not line.gift_card), Decimal(0))
    line_discounts = sum((line.total_discount for line in order.lines), Decimal(0))
    order_discount = max(order.discounts - line_discounts, Decimal(0))
    goods = max(goods - order_discount, Decimal(0))
    eligible = max(goods - points_paid(order), Decimal(0))
    if order.taxes_included and order.tax > 0 and eligible > 0:
        taxed_gross = goods + order.shipping  # what the included tax was charged on
        eligible -= order.tax * eligible / taxed_gross
    return max(eligible, Decimal(0)).quantize(CENT, ROUND_HALF_UP)


def _line_net(line: Any) -> Decimal:
    return line.unit_price * line.quantity - line.total_discount


def points_for(value: Decimal, rule: EarningRule, currency: str) -> int:
    """Whole points for `value` under `rule` (the currency's override if any), rounded down."""
    rate = rule.rate_for(currency)
    return int((value / rate.unit * rate.points_per_unit).to_integral_value(ROUND_FLOOR))


def reversal_points(
    earned: int, basis: Decimal, refunded_before: Decimal, reversed_before: int, amount: Decimal
) -> int:
    """This refund's points: cumulative share of `earned`, minus what was reversed already."""
    refunded = refunded_before + amount
    if basis <= 0 or refunded >= basis:
        target = earned
    else:
        target = int((earned * refunded / basis).to_integral_value(ROUND_FLOOR))
    return max(min(target, earned) - reversed_before, 0)


# --- shared helpers -----------------------------------------------------------------------


def earn_key(order_id: int) -> str:
    return f"order:{order_id}:earn"


def approve_keys(order_id: int) -> tuple[str, str]:
    """(the pending −N entry, the approved +N entry)."""
    return f"order:{order_id}:approve:release", f"order:{order_id}:approve"


def reverse_key(order_id: int, refund_key: str) -> str:
    return f"order:{order_id}:reverse:{refund_key}"


def entry_row(**values: Any) -> dict[str, Any]:
    """A ledger row with every column set (executemany needs the same keys in each row)."""
    defaults = {"order_id": None, "basis": None, "available_at": None}
    return {**defaults, **values}


def existing_keys(session: Session, keys: Iterable[str]) -> set[str]:
    keys = list(keys)
    if not keys:
        return set()
    query = select(LoyaltyEntry.source_key).where(LoyaltyEntry.source_key.in_(keys))
    return set(session.scalars(query))


def loyalty_events(entries: Iterable[Mapping[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Timeline notes for new ledger entries that belong to an order."""
    return [
        {"order_id": e["order_id"], "at": now, "kind": "loyalty", "from_state": None,
         "to_state": None, "actor": "journeys",
         "detail": {"entry": e["kind"], "points": e["points"], "status": e["status"],
                    "rule_version": e["rule_version"]}}
        for e in entries if e["order_id"] is not None
    ]


def append_entries(
    session: Session, rows: Sequence[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """Insert ledger rows (a source key already there is left alone); note and return the
    rows really inserted. A concurrent batch may have inserted the same key after we looked,
    and its timeline note is already there."""
    inserted = insert_new(session, LoyaltyEntry, rows, "source_key")
    new = [row for row in rows if row["source_key"] in inserted]
    record_events(session, loyalty_events(new, now))
    return new


def lock_ledgers(session: Session, order_ids: Sequence[int]) -> None:
    """Take these orders' ledgers for this transaction: approve and reverse read an order's
    entries and append from the totals they read, so two at once would count from the same
    totals (a refund taken from pending points another batch just approved, or two refunds
    together reversing more than the order earned).

    On PostgreSQL this locks the orders' earn entries (in id order, so batches cannot
    deadlock); the entries read afterwards include what the lock holder committed. On SQLite
    the transaction already holds the database's write lock (BEGIN IMMEDIATE).
    """
    if not order_ids or not is_postgres(session):
        return
    query = (select(LoyaltyEntry.id)
             .where(LoyaltyEntry.source_key.in_([earn_key(oid) for oid in set(order_ids)]))
             .order_by(LoyaltyEntry.id).with_for_update())
    session.execute(query).all()


def order_entries(session: Session, order_ids: Sequence[int]) -> list[Any]:
    """All ledger rows of these orders: via their customers, which the ledger indexes."""
    if not order_ids:
        return []
    table = LoyaltyEntry.__table__
    customers = (
        select(table.c.customer_id)
        .where(table.c.source_key.in_([earn_key(oid) for oid in order_ids]))
        .scalar_subquery()
    )
    query = select(table).where(table.c.customer_id.in_(customers),
                                table.c.order_id.in_(order_ids))
    return list(session.execute(query))


def quarantine(
    session: Session,
    kind: str,
    source: str,
    problems: Sequence[tuple[dict[str, Any], InvalidInput]],
    now: datetime,
) -> None:
    """Keep each record we cannot compute with, with its reason."""
    rejected = [
        Rejected(kind=kind, source=source, raw=json.dumps(record, sort_keys=True, default=str),
                 reasons=[{"field": err.field_name, "reason": err.reason}],
                 external_id=str(record.get("order_id")))
        for record, err in problems
    ]
    quarantine_records(session, rejected, now)


# --- earn ---------------------------------------------------------------------------------


@dataclass
class EarnPlan:
    """What the earn stage decided for one batch."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    problems: list[tuple[dict[str, Any], InvalidInput]] = field(default_factory=list)


def load_delivered(session: Session, order_ids: Sequence[int]) -> list[Order]:
    if not order_ids:
        return []
    query = (
        select(Order)
        .where(Order.id.in_(order_ids), Order.delivered_at.is_not(None))
        .order_by(Order.id)
        .options(selectinload(Order.lines), selectinload(Order.customer))
    )
    return list(session.scalars(query))


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
    schedule_steps(session, [(e["order_id"], APPROVE_STEP, e["available_at"])
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
    spec = cfg.messaging.templates[INVITE]
    domain = cfg.messaging.from_address.rpartition("@")[2]
    row = order_message(
        order_id=order.id, customer_id=order.customer_id, step=EARN_STEP, template=INVITE,
        spec=spec, to_addr=order.customer.email, context=invite_context(order, rt, now),
        not_before=now, domain=domain,
    )
    key = f"customer:{order.customer_id}:{INVITE}:v{spec.version}"
    return {**row, "effect_key": key, "message_id": message_id_for(key, domain),
            "topic": "loyalty"}


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


# --- approve ------------------------------------------------------------------------------


def approve(session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime) -> StageResult:
    """Move each order's remaining pending points to approved once its window has closed.

    Consumes step `loyalty_approve`. Two entries per order (pending −N, approved +N), so the
    sums per status stay exact; an order approved before is left alone.
    """
    lock_ledgers(session, order_ids)
    entries = order_entries(session, order_ids)
    by_order: dict[int, list[Any]] = defaultdict(list)
    for entry in entries:
        by_order[entry.order_id].append(entry)
    rows, outcomes, waiting = [], {}, 0
    for oid in sorted(set(order_ids)):
        outcome, new_rows = approve_order(oid, by_order.get(oid, []), now)
        rows += new_rows
        if outcome is None:
            waiting += 1
        else:
            outcomes[oid] = outcome
    append_entries(session, rows, now)
    set_steps(session, APPROVE_STEP, outcomes, now)
    return StageResult(
        stage=APPROVE_STEP, advanced=len(rows) // 2,
        closed=sum(1 for s, _ in outcomes.values() if s == CLOSED), skipped=waiting,
        details={"points_approved": sum(r["points"] for r in rows if r["status"] == APPROVED)},
    )


def approve_order(
    order_id: int, entries: Sequence[Any], now: datetime
) -> tuple[tuple[str, str | None] | None, list[dict[str, Any]]]:
    """(step outcome or None if not due yet, new rows) for one order's ledger rows."""
    earned = next((e for e in entries if e.kind == EARN), None)
    if earned is None:
        return (CLOSED, "nothing earned"), []
    release_key, approved_key = approve_keys(order_id)
    if any(e.source_key == approved_key for e in entries):
        return (DONE, None), []
    if earned.available_at is not None and earned.available_at > now:
        return None, []
    pending = sum(e.points for e in entries if e.status == PENDING)
    common = {"customer_id": earned.customer_id, "order_id": order_id, "kind": APPROVE,
              "rule_version": earned.rule_version, "created_at": now}
    return (DONE, None), [
        entry_row(source_key=release_key, points=-pending, status=PENDING, **common),
        entry_row(source_key=approved_key, points=pending, status=APPROVED, **common),
    ]


# --- reverse ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refund:
    """A refund or return of `amount` on an order; `key` is unique per refund of that order."""

    order_id: int
    amount: Decimal
    key: str


@dataclass
class OrderLedger:
    """One order's running totals while a batch of refunds is applied."""

    earn: Any
    approved: bool
    keys: set[str]
    refunded: Decimal = Decimal(0)
    reversed: int = 0


def reverse(
    session: Session, order_id: int, refund_amount: Decimal, refund_key: str, now: datetime,
    rt: Runtime,
) -> StageResult:
    """Reverse one refund's share of an order's points (see `reverse_refunds`)."""
    return reverse_refunds(session, [Refund(order_id, refund_amount, refund_key)], now, rt)


def reverse_refunds(
    session: Session, refunds: Sequence[Refund], now: datetime, rt: Runtime
) -> StageResult:
    """Append a reversal per new refund: exact, never beyond what the order earned.

    A refund key seen before is a no-op; a refund of an order that earned nothing is skipped;
    a refund with a bad amount or key is quarantined.
    """
    valid, problems = validate_refunds(refunds)
    lock_ledgers(session, [r.order_id for r in valid])
    ledgers = refund_ledgers(session, sorted({r.order_id for r in valid}))
    rows: list[dict[str, Any]] = []
    counts = {"duplicates": 0, "not_earned": 0}
    for refund in valid:
        ledger = ledgers.get(refund.order_id)
        key = reverse_key(refund.order_id, refund.key)
        if ledger is None:
            counts["not_earned"] += 1
        elif key in ledger.keys:
            counts["duplicates"] += 1
        else:
            rows.append(reversal_row(ledger, refund, key, now))
    append_entries(session, rows, now)
    quarantine(session, "loyalty_refund", "loyalty", problems, now)
    return StageResult(
        stage="loyalty_reverse", received=len(refunds), advanced=len(rows),
        skipped=counts["duplicates"] + counts["not_earned"], quarantined=len(problems),
        details={**counts, "points_reversed": -sum(r["points"] for r in rows)},
    )


def validate_refunds(
    refunds: Sequence[Refund],
) -> tuple[list[Refund], list[tuple[dict[str, Any], InvalidInput]]]:
    valid, problems = [], []
    for refund in refunds:
        record = {"order_id": refund.order_id, "amount": str(refund.amount), "key": refund.key}
        try:
            amount = _money(refund.amount, "amount")
            if not isinstance(refund.key, str) or not 0 < len(refund.key) <= MAX_REFUND_KEY:
                raise InvalidInput("key", f"must be 1-{MAX_REFUND_KEY} characters")
            valid.append(Refund(refund.order_id, amount, refund.key))
        except InvalidInput as err:
            problems.append((record, err))
    return valid, problems


def refund_ledgers(session: Session, order_ids: Sequence[int]) -> dict[int, OrderLedger]:
    """Per order that earned: its earn row, whether approved, keys, refunds and reversals so far."""
    by_order: dict[int, list[Any]] = defaultdict(list)
    for entry in order_entries(session, order_ids):
        by_order[entry.order_id].append(entry)
    ledgers = {}
    for oid, entries in by_order.items():
        earned = next((e for e in entries if e.kind == EARN), None)
        if earned is None:
            continue
        reversals = [e for e in entries if e.kind == REVERSE]
        ledgers[oid] = OrderLedger(
            earn=earned, approved=any(e.source_key == approve_keys(oid)[1] for e in entries),
            keys={e.source_key for e in entries},
            refunded=sum((e.basis or Decimal(0) for e in reversals), Decimal(0)),
            reversed=-sum(e.points for e in reversals),
        )
    return ledgers


def reversal_row(ledger: OrderLedger, refund: Refund, key: str, now: datetime) -> dict[str, Any]:
    """The reversal entry; updates the running totals so a later refund in the batch sees it."""
    earned = ledger.earn
    points = reversal_points(earned.points, earned.basis or Decimal(0), ledger.refunded,
                             ledger.reversed, refund.amount)
    ledger.refunded += refund.amount
    ledger.reversed += points
    ledger.keys.add(key)
    return entry_row(
        source_key=key, customer_id=earned.customer_id, order_id=refund.order_id, kind=REVERSE,
        points=-points, status=APPROVED if ledger.approved else PENDING,
        rule_version=earned.rule_version, basis=refund.amount, created_at=now,
    )


# --- balances, liability, tiers -----------------------------------------------------------


def balances(session: Session, customer_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """{customer: {"pending": n, "approved": n}} for each id asked (zeros if none)."""
    result = {cid: {PENDING: 0, APPROVED: 0} for cid in customer_ids}
    if not customer_ids:
        return result
    table = LoyaltyEntry.__table__
    query = (
        select(table.c.customer_id, table.c.status, func.sum(table.c.points))
        .where(table.c.customer_id.in_(customer_ids))
        .group_by(table.c.customer_id, table.c.status)
    )
    for cid, status, total in session.execute(query):
        result[cid][status] = int(total or 0)
    return result


def liability(session: Session) -> dict[str, int]:
    """Outstanding points over all customers, by status (for `journeys report`)."""
    table = LoyaltyEntry.__table__
    query = select(table.c.status, func.sum(table.c.points)).group_by(table.c.status)
    result = {PENDING: 0, APPROVED: 0}
    for status, total in session.execute(query):
        result[status] = int(total or 0)
    return result


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
    spec = cfg.messaging.templates[UPDATE]
    domain = cfg.messaging.from_address.rpartition("@")[2]
    key = f"customer:{customer.id}:{UPDATE}:{new}:{now.date().isoformat()}:v{spec.version}"
    context = {
        "store": store_context(cfg), "customer": customer_names(customer),
        "loyalty": {"tier": new, "previous_tier": old, "pending": points[PENDING],
                    "approved": points[APPROVED],
                    "url": loyalty_url(rt, customer.id, now)},
    }
    return {
        "effect_key": key, "order_id": None, "customer_id": customer.id, "template": UPDATE,
        "version": spec.version, "msg_class": spec.msg_class, "priority": spec.priority,
        "topic": "loyalty", "to_addr": customer.email,
        "message_id": message_id_for(key, domain), "context": context, "not_before": now,
    }


def customers_with_points(session: Session, limit: int, after_id: int = 0) -> list[int]:
    """Customers with any ledger entry, by id after `after_id` (for the daily tier refresh)."""
    query = (select(LoyaltyEntry.customer_id).where(LoyaltyEntry.customer_id > after_id)
             .distinct().order_by(LoyaltyEntry.customer_id).limit(limit))
    return list(session.scalars(query))
