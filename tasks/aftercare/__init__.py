"""Aftercare: delivery feedback, service recovery, review requests and value-add follow-ups.

Every stage here consumes a step the tracking module schedules at delivery (feedback_request,
review_request, care_guide, cross_sell, replenishment) and writes outbox rows; consent,
suppression, frequency caps and quiet hours are the governor's job at send time.
This package holds what the stages share: the config model and small batch helpers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import Field
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, selectinload

from tasks.config import Config, Strict, section
from tasks.confirm import customer_context, locale_of, store_context
from tasks.messaging.outbox import message_id_for, order_message
from tasks.store.db import is_postgres
from tasks.store.journal import CANCELLED, CLOSED, DONE, PENDING, set_steps
from tasks.store.models import Order, Step

ISSUE_TAGS = ("damaged", "wrong_item", "missing_item", "late", "other")
DECISIONS = ("replacement", "refund", "keep_with_credit")


class FeedbackRules(Strict):
    low_rating_threshold: int = Field(default=2, ge=1, le=5)
    # Issue tag → proposed resolution; the first tag listed here that a response carries wins.
    proposals: dict[str, str] = Field(default_factory=lambda: {
        "damaged": "replacement", "wrong_item": "replacement", "missing_item": "replacement",
        "late": "keep_with_credit", "other": "keep_with_credit",
    })
    low_rating_proposal: str = "refund"


class ReviewRules(Strict):
    per_customer_30_days: int = Field(default=5, ge=0)
    product_repeat_days: int = Field(default=365, ge=1)
    hold_retry_hours: int = Field(default=24, ge=1)


class CareGuide(Strict):
    title: str
    body: str
    url: str | None = None


class CrossSellRules(Strict):
    max_items: int = Field(default=3, ge=1)
    affinity: dict[str, list[str]] = Field(default_factory=dict)


class ReplenishmentRules(Strict):
    lead_days: int = Field(default=5, ge=0)


class BirthdayRules(Strict):
    min_capture_days: int = Field(default=30, ge=0)
    percent_off: int = Field(default=15, ge=1, le=100)
    valid_days: int = Field(default=30, ge=1)
    code_prefix: str = "BDAY"


class AftercareConfig(Strict):
    feedback: FeedbackRules = FeedbackRules()
    reviews: ReviewRules = ReviewRules()
    care_guides: dict[str, CareGuide] = Field(default_factory=dict)  # by category
    cross_sell: CrossSellRules = CrossSellRules()
    replenishment: ReplenishmentRules = ReplenishmentRules()
    birthday: BirthdayRules = BirthdayRules()


def aftercare_config(cfg: Config) -> AftercareConfig:
    """configs/aftercare.yaml, validated once per process."""
    return section(cfg, "aftercare", AftercareConfig)


def mail_domain(cfg: Config) -> str:
    return cfg.messaging.from_address.rpartition("@")[2]


def delivered_orders(session: Session, order_ids: Sequence[int]) -> list[Order]:
    """The batch's delivered, not cancelled orders with lines and customer (locked on PG)."""
    if not order_ids:
        return []
    query = (
        select(Order)
        .where(Order.id.in_(order_ids), Order.delivered_at.is_not(None),
               Order.state != CANCELLED)
        .order_by(Order.id)
        .options(selectinload(Order.lines), selectinload(Order.customer))
    )
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True, of=Order)
    return list(session.scalars(query))


def finish_steps(
    session: Session, step: str, outcomes: Mapping[int, str | None], now: datetime,
    status: str = DONE,
) -> None:
    """Mark `step` of each order `status` with its reason (order id → reason), in one UPDATE."""
    set_steps(session, step, {oid: (status, reason) for oid, reason in outcomes.items()}, now)


def close_missing(
    session: Session, step: str, order_ids: Sequence[int], found: Iterable[int], now: datetime
) -> int:
    """Close the step of ids that are not delivered, cancelled or gone (not those a peer locked)."""
    missing = set(order_ids) - set(found)
    if missing:  # delivered but skipped: locked by another worker, so leave the step pending
        missing -= set(session.scalars(select(Order.id).where(
            Order.id.in_(missing), Order.delivered_at.is_not(None), Order.state != CANCELLED)))
    finish_steps(session, step, {oid: "not delivered" for oid in missing}, now, status=CLOSED)
    return len(missing)


def reschedule_steps(
    session: Session, step: str, due: Mapping[int, datetime], reason: str | None, now: datetime
) -> None:
    """Keep `step` pending but due again later (order id → due time): a stage never waits."""
    if not due:
        return
    table = Step.__table__
    statement = (
        update(table)
        .where(table.c.order_id == bindparam("b_id"), table.c.name == step)
        .values(status=PENDING, due_at=bindparam("b_due"), reason=reason,
                attempts=table.c.attempts + 1, updated_at=now)
    )
    rows = [{"b_id": oid, "b_due": when} for oid, when in due.items()]
    session.connection().execute(statement, rows)


def keyed_message(
    cfg: Config, order: Order, step: str, template: str, context: Mapping[str, Any],
    now: datetime, effect_key: str | None = None, topic: str | None = None,
) -> dict[str, Any]:
    """An outbox row for `order`; `effect_key` overrides the per-order key (one per SKU, …)."""
    domain = mail_domain(cfg)
    row = order_message(
        order_id=order.id, customer_id=order.customer_id, step=step, template=template,
        spec=cfg.messaging.templates[template], to_addr=order.email, context=context,
        not_before=now, domain=domain,
    )
    if effect_key:
        row["effect_key"], row["message_id"] = effect_key, message_id_for(effect_key, domain)
    row["topic"] = topic
    return row


def base_context(order: Order, cfg: Config) -> dict[str, Any]:
    """Store, customer and order basics every aftercare e-mail shows."""
    return {
        "store": {**store_context(cfg), "links_base_url": cfg.store.links_base_url},
        "customer": customer_context(order),
        "order": {"id": order.id, "name": order.name or f"#{order.external_id}",
                  "currency": order.currency, "locale": locale_of(order, cfg)},
    }
