"""The tracking stage: deliver orders whose parcels all arrived, tell customers about trouble.

`track` runs for orders whose shipments moved (scheduled by `ingest_events`) and for orders whose
promised delivery has passed (its own wake-up step, and `delay_watch_ids` as a daily net).
Delivery schedules the second half of the journey; a missed promise brings an apology and,
days later, `late_cases` opens a service case. Every message has an effect key: reruns are no-ops.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.orm import Session

from tasks.config import Config, TrackingConfig
from tasks.journey import StageResult, Trigger, step, steps_on
from tasks.messaging.compose import customer_context, locale_of, order_mail, store_context
from tasks.messaging.outbox import enqueue
from tasks.returns.notices import returns_url
from tasks.runtime import Runtime
from tasks.store.journal import (
    CLOSED,
    DONE,
    PENDING,
    Transition,
    apply_transitions,
    claim_orders,
    finish_steps,
    insert_ignoring_duplicates,
    record_events,
    schedule_steps,
)
from tasks.store.models import Message, Order, ServiceCase, Shipment, Step
from tasks.tracking.ingest import (
    CANCELLED_STATUS,
    DELIVERED,
    DELIVERED_TAG,
    SHIPPED,
    TRACK_STEP,
    order_link,
)

LATE_CASE_STEP = step("open_late_case").name
NOTICE_TAGS = {"AttemptFail": "failed_attempt", "AvailableForPickup": "pickup"}
EXCEPTION_TAG = "Exception"


def tracking_config(cfg: Config) -> TrackingConfig:
    """configs/tracking.yaml, validated once per process."""
    return cfg.tracking


# ---------------------------------------------------------------- the stage


def track(session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime) -> StageResult:
    """Deliver, notify and watch the promise of the batch's shipped orders, in a few statements."""
    cfg, settings = rt.config, tracking_config(rt.config)
    orders = claim_orders(session, order_ids, SHIPPED)
    parcels = shipments_by_order(session, [o.id for o in orders])
    delivered = [o for o in orders if all_delivered(parcels.get(o.id, []))]
    delivered_ids = {o.id for o in delivered}
    waiting = [o for o in orders if o.id not in delivered_ids]
    late = [o for o in waiting if promise_passed(o, now, cfg.store.timezone)]
    secret = rt.settings.secret_key
    messages = [delivered_message(o, parcels[o.id], cfg, now, secret) for o in delivered]
    for order in waiting:
        messages += exception_messages(order, parcels[order.id], settings, cfg, now, secret)
    messages += [delay_message(o, parcels[o.id], settings, cfg, now, secret) for o in late]
    queued = enqueue_new(session, messages, now)
    deliver(session, delivered, parcels, now, settings)
    schedule_steps(session, [(o.id, LATE_CASE_STEP, late_case_due(o, settings, cfg))
                             for o in late], now)
    _set_track_steps(session, waiting, now, cfg.store.timezone)
    _close_finished(session, TRACK_STEP, set(order_ids) - {o.id for o in orders}, now)
    return StageResult(
        # Still under way: deferred to the next event or the promise, not lost (run accounting).
        stage=TRACK_STEP, advanced=len(delivered),
        skipped=len(set(order_ids)) - len(orders) + len(waiting),
        details={"delivered": len(delivered), "late": len(late), **queued},
    )


def shipments_by_order(session: Session, order_ids: list[int]) -> dict[int, list[Shipment]]:
    """Every live parcel of the batch's orders (not those whose fulfillment was cancelled)."""
    found: dict[int, list[Shipment]] = {oid: [] for oid in order_ids}
    if order_ids:
        query = select(Shipment).where(Shipment.order_id.in_(order_ids),
                                       Shipment.status != CANCELLED_STATUS).order_by(Shipment.id)
        for shipment in session.scalars(query):
            found[shipment.order_id].append(shipment)
    return found


def all_delivered(parcels: list[Shipment]) -> bool:
    """An order is delivered when it has parcels and every one of them is."""
    return bool(parcels) and all(s.status == DELIVERED_TAG for s in parcels)


def enqueue_new(session: Session, rows: list[dict[str, Any]], now: datetime) -> dict[str, int]:
    """Enqueue rows not queued before; returns how many of each template were new."""
    keys = [row["effect_key"] for row in rows]
    known = set(session.scalars(select(Message.effect_key).where(Message.effect_key.in_(keys)))
                ) if keys else set()
    new = [row for row in {r["effect_key"]: r for r in rows}.values()
           if row["effect_key"] not in known]
    enqueue(session, new, now)
    counts: dict[str, int] = {}
    for row in new:
        counts[f"{row['template']}_queued"] = counts.get(f"{row['template']}_queued", 0) + 1
    return counts


# ---------------------------------------------------------------- delivery


def deliver(
    session: Session,
    orders: list[Order],
    parcels: dict[int, list[Shipment]],
    now: datetime,
    settings: TrackingConfig,
) -> None:
    """shipped → delivered, delivered_at = the last parcel's, then the second half's steps."""
    delivered_at = {o.id: max(s.delivered_at or s.status_at or now for s in parcels[o.id])
                    for o in orders}
    mark_delivered(session, SHIPPED, delivered_at, now, settings)


def mark_delivered(
    session: Session,
    from_state: str,
    delivered_at: dict[int, datetime],
    now: datetime,
    settings: TrackingConfig,
    skip_steps: frozenset[str] = frozenset(),
) -> None:
    """from_state → delivered (compare-and-set) at the given times, then the second half's steps
    (except `skip_steps`). Also used by confirmation for orders with nothing to ship."""
    transitions = [Transition(oid, DELIVERED, detail={"delivered_at": at.isoformat()})
                   for oid, at in delivered_at.items()]
    apply_transitions(session, TRACK_STEP, from_state, transitions, now)
    if delivered_at:
        table = Order.__table__
        session.connection().execute(
            update(table).where(table.c.id == bindparam("b_id"), table.c.state == DELIVERED)
            .values(delivered_at=bindparam("b_at")),
            [{"b_id": oid, "b_at": at} for oid, at in delivered_at.items()],
        )
    steps = after_delivery_steps(delivered_at, now, settings)
    schedule_steps(session, [step for step in steps if step[1] not in skip_steps], now)


def after_delivery_steps(
    delivered_at: dict[int, datetime], now: datetime, settings: TrackingConfig
) -> list[tuple[int, str, datetime]]:
    """Each "on delivery" step of the journey, due its configured hours (else the registry's
    default) after delivery, never before now."""
    hours = {spec.name: settings.after_delivery.get(spec.name, spec.default_hours or 0.0)
             for spec in steps_on(Trigger.DELIVERY)}
    return [(oid, name, max(now, at + timedelta(hours=hours[name])))
            for oid, at in delivered_at.items() for name in sorted(hours)]


# ---------------------------------------------------------------- promises


def promise_deadline(promised: date, timezone: str) -> datetime:
    """The end of the promised day in the store's time zone, in UTC."""
    midnight = datetime.combine(promised + timedelta(days=1), time(0), ZoneInfo(timezone))
    return midnight.astimezone(UTC)


def promise_passed(order: Order, now: datetime, timezone: str) -> bool:
    """Whether the promised day is over in the store's time zone."""
    return order.promised_delivery is not None and (
        now >= promise_deadline(order.promised_delivery, timezone))


def new_estimate(
    order: Order, parcels: list[Shipment], now: datetime, settings: TrackingConfig, timezone: str
) -> date:
    """The carrier's latest expected day if still ahead, else promise (or today) + extra days."""
    today = now.astimezone(ZoneInfo(timezone)).date()
    known = [s.expected_delivery for s in parcels
             if s.status != DELIVERED_TAG and s.expected_delivery is not None]
    if known and max(known) >= today:
        return max(known)
    extra = timedelta(days=settings.delay_extra_days)
    estimate = order.promised_delivery + extra if order.promised_delivery else today + extra
    return estimate if estimate > today else today + extra


def late_case_due(order: Order, settings: TrackingConfig, cfg: Config) -> datetime:
    """`late_case_after_days` whole days after the promised day ended."""
    deadline = promise_deadline(order.promised_delivery, cfg.store.timezone)  # type: ignore[arg-type]
    return deadline + timedelta(days=settings.late_case_after_days)


def _set_track_steps(
    session: Session, waiting: list[Order], now: datetime, timezone: str
) -> None:
    """Not delivered yet: wake up when the promise runs out, or rest until the next event."""
    wake = {o.id: promise_deadline(o.promised_delivery, timezone) for o in waiting
            if o.promised_delivery and not promise_passed(o, now, timezone)}
    rows = [{"b_id": o.id, "b_status": PENDING if o.id in wake else DONE,
             "b_due": wake.get(o.id, now)} for o in waiting]
    if not rows:
        return
    schedule_steps(session, [(o.id, TRACK_STEP, now) for o in waiting], now)
    table = Step.__table__
    session.connection().execute(
        update(table).where(table.c.order_id == bindparam("b_id"), table.c.name == TRACK_STEP)
        .values(status=bindparam("b_status"), due_at=bindparam("b_due"),
                attempts=table.c.attempts + 1, updated_at=now),
        rows,
    )


def _close_finished(session: Session, step: str, order_ids: Iterable[int], now: datetime) -> None:
    """Close `step` for orders that left the shipped state (not for ones a peer has locked)."""
    ids = list(order_ids)
    if not ids:
        return
    gone = select(Order.id).where(Order.id.in_(ids), Order.state != SHIPPED)
    session.execute(
        update(Step).where(Step.order_id.in_(gone), Step.name == step, Step.status == PENDING)
        .values(status=CLOSED, reason="order no longer shipped", updated_at=now)
        .execution_options(synchronize_session=False)
    )


def delay_watch_ids(
    session: Session, now: datetime, limit: int, timezone: str = "UTC", after_id: int = 0
) -> list[int]:
    """Shipped orders whose promise has passed and that have not been apologised to yet."""
    today = now.astimezone(ZoneInfo(timezone)).date()
    has_case_step = exists().where(Step.order_id == Order.id, Step.name == LATE_CASE_STEP)
    query = (
        select(Order.id)
        .where(Order.state == SHIPPED, Order.promised_delivery < today, ~has_case_step,
               Order.id > after_id)
        .order_by(Order.id)
        .limit(limit)
    )
    return list(session.scalars(query))


# ---------------------------------------------------------------- late cases


def late_cases(
    session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime
) -> StageResult:
    """Open one service case per order still not delivered days after its promise."""
    settings = tracking_config(rt.config)
    orders = claim_orders(session, order_ids, SHIPPED)
    keys = {o.id: f"order:{o.id}:case:late" for o in orders}
    query = select(ServiceCase.effect_key).where(ServiceCase.effect_key.in_(keys.values()))
    known = set(session.scalars(query)) if keys else set()
    new = [o for o in orders if keys[o.id] not in known]
    insert_ignoring_duplicates(session, ServiceCase, [
        {"effect_key": keys[o.id], "order_id": o.id, "reason": late_reason(o, now, rt.config),
         "proposed": settings.late_case_proposal, "status": "open", "opened_at": now}
        for o in new], ["effect_key"])
    record_events(session, [
        {"order_id": o.id, "at": now, "kind": "case", "from_state": None, "to_state": None,
         "actor": "journeys", "detail": {"case": "late", "proposed": settings.late_case_proposal}}
        for o in new])
    finish_steps(session, LATE_CASE_STEP, dict.fromkeys(o.id for o in orders), now)
    _close_finished(session, LATE_CASE_STEP, set(order_ids) - {o.id for o in orders}, now)
    return StageResult(stage=LATE_CASE_STEP, advanced=len(new),
                       skipped=len(set(order_ids)) - len(orders),
                       details={"cases_opened": len(new)})


def late_reason(order: Order, now: datetime, cfg: Config) -> str:
    """The case's reason: whole days since the promised day ended, in the store's time zone."""
    promised = order.promised_delivery
    days = (now - promise_deadline(promised, cfg.store.timezone)).days if promised else 0
    return f"late: promised {promised}, not delivered {days} days later"[:200]


# ---------------------------------------------------------------- messages


def _message(
    order: Order, step: str, template: str, context: dict[str, Any], cfg: Config, now: datetime
) -> dict[str, Any]:
    """An outbox row keyed order:{id}:{step}:{template}:v{n}."""
    return order_mail(cfg, order, step, template, context, now)


def base_context(order: Order, cfg: Config, secret_key: str, now: datetime) -> dict[str, Any]:
    """What every tracking mail shows: the store, the customer, the order and its page."""
    promised = order.promised_delivery.isoformat() if order.promised_delivery else None
    return {
        "order_url": order_link(cfg, secret_key, order.id, now),
        "store": store_context(cfg),
        "customer": customer_context(order),
        "order": {"id": order.id, "name": order.name or f"#{order.external_id}",
                  "locale": locale_of(order, cfg), "promised_delivery": promised},
    }


def parcel_context(shipment: Shipment) -> dict[str, Any]:
    """One parcel as a mail shows it (the mail links to the order page, which has the rest)."""
    return {
        "carrier": shipment.carrier, "tracking_number": shipment.tracking_number,
        "tracking_url": shipment.tracking_url,  # the carrier's own link, if the feed gave one
        "status": shipment.status, "substatus": shipment.substatus,
        "expected_delivery": (shipment.expected_delivery.isoformat()
                              if shipment.expected_delivery else None),
    }


def delivered_message(
    order: Order, parcels: list[Shipment], cfg: Config, now: datetime, secret_key: str
) -> dict[str, Any]:
    """The "delivered" mail, once per order (step "deliver")."""
    context = base_context(order, cfg, secret_key, now)
    last = max(s.delivered_at or s.status_at or now for s in parcels)
    local_day = last.astimezone(ZoneInfo(cfg.store.timezone)).date()
    context["order"]["delivered_on"] = local_day.isoformat()
    context["shipments"] = [parcel_context(s) for s in parcels]
    if cfg.returns.enabled:  # "Start a return": the returns page (tasks/returns/)
        context["returns_url"] = returns_url(cfg, secret_key, order.id, now)
    return _message(order, "deliver", "delivered", context, cfg, now)


def exception_kind(shipment: Shipment, settings: TrackingConfig) -> str | None:
    """What went wrong with a parcel, or None if nothing the customer must hear about."""
    if shipment.status in NOTICE_TAGS:
        return NOTICE_TAGS[shipment.status]
    if shipment.status != EXCEPTION_TAG:
        return None
    return settings.exception_kinds.get(shipment.substatus or "", settings.default_exception_kind)


def exception_messages(
    order: Order, parcels: list[Shipment], settings: TrackingConfig, cfg: Config, now: datetime,
    secret_key: str,
) -> list[dict[str, Any]]:
    """One notice per parcel and subtag (the effect key carries both)."""
    messages = []
    for shipment in parcels:
        kind = exception_kind(shipment, settings)
        if kind is None:
            continue
        context = base_context(order, cfg, secret_key, now)
        context["shipment"] = parcel_context(shipment)
        context["notice"] = {"kind": kind}
        step = f"exception-{shipment.id}-{shipment.substatus or shipment.status}"
        messages.append(_message(order, step, "shipment_exception", context, cfg, now))
    return messages


def delay_message(
    order: Order, parcels: list[Shipment], settings: TrackingConfig, cfg: Config, now: datetime,
    secret_key: str,
) -> dict[str, Any]:
    """The "delay_apology" mail with a new estimate, once per order (step "delay")."""
    context = base_context(order, cfg, secret_key, now)
    estimate = new_estimate(order, parcels, now, settings, cfg.store.timezone)
    context["order"]["new_estimate"] = estimate.isoformat()
    context["shipments"] = [parcel_context(s) for s in parcels if s.status != DELIVERED_TAG]
    return _message(order, "delay", "delay_apology", context, cfg, now)
