"""Orders that never ship: a confirmed order with no parcel by its promised ship date.

Confirmation schedules the `ship_overdue` step (tasks/journey.py) due when the ship-by day is
over in the warehouse's time zone, plus `tracking.ship_overdue_grace_hours`. The ship-by day
is the dispatch day confirmation counted its promise from: the promised delivery day less the
method's transit business days (tasks/delivery.py adds them the other way). When it runs and
the order is still confirmed without a live parcel, the order is flagged, once each:

- the `not_shipped_apology` mail with a new estimate (today + handling + the method's transit
  days, as tasks/delivery.py estimates any order placed now), effect key
  order:{id}:ship_overdue:not_shipped_apology:v{n};
- a service case `order:{id}:case:not_shipped`, proposing what late parcels' cases propose
  (`tracking.late_case_proposal`): the same late rules as parcels have;
- a timeline row (kind `case`), which the sweep turns into the operator alert and the report
  counts (orders past their ship date).

An order that shipped, or left confirmed, before the step came due has its step closed when it
runs. `overdue_watch_ids` is the daily net for confirmed orders without the step (confirmed
before it existed).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from tasks.config import Config
from tasks.delivery import estimate_delivery, is_business_day, resolve_method
from tasks.journey import StageResult, step
from tasks.messaging.compose import order_mail
from tasks.runtime import Runtime
from tasks.states import OrderState, StepStatus
from tasks.store.journal import (
    claim_orders,
    finish_steps,
    insert_new,
    record_events,
    reschedule_steps,
    schedule_steps,
)
from tasks.store.models import Order, ServiceCase, Step
from tasks.tracking.ship import first_shipped
from tasks.tracking.stage import base_context, enqueue_new

STEP = step("ship_overdue").name
TEMPLATE = "not_shipped_apology"
CASE = "not_shipped"
CONFIRMED = OrderState.CONFIRMED
SHIPPED_FIRST = "shipped before its ship-by day ended"
LEFT = "order no longer confirmed"


# ---------------------------------------------------------------- the ship-by day


def subtract_business_days(day: date, count: int, holidays: frozenset[date]) -> date:
    """The business day `count` business days before `day` (`day` itself when count is 0)."""
    while count > 0:
        day -= timedelta(days=1)
        if is_business_day(day, holidays):
            count -= 1
    return day


def method_of(order: Order, cfg: Config) -> str:
    return resolve_method(order.shipping_code, order.shipping_title, cfg.shipping)


def country_of(order: Order) -> str | None:
    return (order.shipping_address or {}).get("country_code")


def ship_by(order: Order, promised: date, cfg: Config) -> date:
    """The dispatch day confirmation's promise counted from (promise less transit days)."""
    transit = cfg.shipping.methods[method_of(order, cfg)].transit_to(country_of(order))
    return subtract_business_days(promised, transit, frozenset(cfg.shipping.holidays))


def ship_deadline(order: Order, promised: date, cfg: Config) -> datetime:
    """The end of the ship-by day at the warehouse, plus the grace hours, in UTC."""
    zone = ZoneInfo(cfg.shipping.timezone)
    end = datetime.combine(ship_by(order, promised, cfg) + timedelta(days=1), time(0), zone)
    return end.astimezone(UTC) + timedelta(hours=cfg.tracking.ship_overdue_grace_hours)


def watch_shipping(session: Session, orders: Sequence[Order], promised: dict[int, date | None],
                   now: datetime, cfg: Config) -> None:
    """Confirmation's call: each order promised a delivery day gets its `ship_overdue` step,
    due at its ship deadline (orders with nothing to ship get none)."""
    schedule_steps(session, [(o.id, STEP, ship_deadline(o, day, cfg)) for o in orders
                             if (day := promised.get(o.id)) is not None], now)


# ---------------------------------------------------------------- the stage


def ship_overdue(session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime
                 ) -> StageResult:
    """Flag the batch's confirmed orders past their ship deadline without a live parcel."""
    cfg = rt.config
    finished = finished_steps(session, order_ids)  # flagged before: a rerun changes nothing
    orders = [o for o in claim_orders(session, order_ids, CONFIRMED)
              if o.promised_delivery and o.id not in finished]
    schedule_steps(session, [(o.id, STEP, now) for o in orders], now)  # the daily net's orders
    parcels = first_shipped(session, [o.id for o in orders])
    waiting = [o for o in orders if o.id not in parcels]
    deadline = {o.id: ship_deadline(o, o.promised_delivery, cfg) for o in waiting}
    overdue = [o for o in waiting if now >= deadline[o.id]]
    early = {o.id: deadline[o.id] for o in waiting if now < deadline[o.id]}
    queued = enqueue_new(session, [apology(o, now, rt) for o in overdue], now)
    opened = open_cases(session, overdue, now, cfg)
    reschedule_steps(session, STEP, early, "waiting for the ship-by day to end", now)
    finish_steps(session, STEP, dict.fromkeys(o.id for o in overdue), now)
    finish_steps(session, STEP, dict.fromkeys(parcels, SHIPPED_FIRST), now, StepStatus.CLOSED)
    claimed = {o.id for o in orders} | finished
    left = [oid for oid in set(order_ids) - claimed if oid not in locked(session, order_ids)]
    finish_steps(session, STEP, dict.fromkeys(left, LEFT), now, StepStatus.CLOSED)
    return StageResult(stage=STEP, advanced=len(overdue), closed=len(parcels) + len(left),
                       skipped=len(early) + len(set(order_ids)) - len(claimed) - len(left),
                       details={"not_shipped": len(overdue), "cases_opened": opened, **queued})


def finished_steps(session: Session, order_ids: Sequence[int]) -> set[int]:
    query = select(Step.order_id).where(Step.order_id.in_(order_ids), Step.name == STEP,
                                        Step.status.in_((StepStatus.DONE, StepStatus.CLOSED)))
    return set(session.scalars(query)) if order_ids else set()


def locked(session: Session, order_ids: Sequence[int]) -> set[int]:
    """Of the ids, the orders still confirmed (a peer holds them: not ours to close)."""
    query = select(Order.id).where(Order.id.in_(order_ids), Order.state == CONFIRMED)
    return set(session.scalars(query)) if order_ids else set()


def apology(order: Order, now: datetime, rt: Runtime) -> dict[str, Any]:
    """The apology with a new estimate: as if the order were placed now."""
    cfg = rt.config
    context = base_context(order, cfg, rt.settings.secret_key, now)
    estimate = estimate_delivery(now, method_of(order, cfg), country_of(order), cfg.shipping)
    context["order"]["new_estimate"] = estimate.isoformat()
    context["order"]["ship_by"] = ship_by(order, order.promised_delivery, cfg).isoformat()
    return order_mail(cfg, order, STEP, TEMPLATE, context, now)


def open_cases(session: Session, orders: Sequence[Order], now: datetime, cfg: Config) -> int:
    """One case per order (effect key order:{id}:case:not_shipped) and its timeline row."""
    proposal = cfg.tracking.late_case_proposal
    reasons = {o.id: not_shipped_reason(o, now, cfg) for o in orders}
    opened = insert_new(session, ServiceCase, [
        {"effect_key": f"order:{o.id}:case:{CASE}", "order_id": o.id, "reason": reasons[o.id],
         "proposed": proposal, "status": "open", "opened_at": now} for o in orders],
        "effect_key")
    record_events(session, [
        {"order_id": o.id, "at": now, "kind": "case", "from_state": None, "to_state": None,
         "actor": "journeys", "detail": {"case": CASE, "proposed": proposal,
                                         "reason": reasons[o.id]}}
        for o in orders if f"order:{o.id}:case:{CASE}" in opened])
    return len(opened)


def not_shipped_reason(order: Order, now: datetime, cfg: Config) -> str:
    day = ship_by(order, order.promised_delivery, cfg)
    return (f"not shipped: ship by {day}, promised delivery {order.promised_delivery}; "
            f"no parcel as of {now:%Y-%m-%d}")[:200]


# ---------------------------------------------------------------- the daily net


def overdue_watch_ids(session: Session, limit: int, after_id: int = 0) -> list[int]:
    """Confirmed orders promised a delivery day that have no `ship_overdue` step."""
    has_step = exists().where(Step.order_id == Order.id, Step.name == STEP)
    query = (select(Order.id)
             .where(Order.state == CONFIRMED, Order.promised_delivery.is_not(None), ~has_step,
                    Order.id > after_id)
             .order_by(Order.id).limit(limit))
    return list(session.scalars(query))


def past_ship_date(session: Session) -> int:
    """For the report: confirmed orders flagged as past their ship date and still unshipped."""
    query = (select(func.count()).select_from(Step).join(Order, Order.id == Step.order_id)
             .where(Step.name == STEP, Step.status == StepStatus.DONE,
                    Order.state == CONFIRMED))
    return int(session.scalar(query) or 0)
