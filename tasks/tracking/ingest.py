"""Writing shipments and tracking events to the store, chunk by chunk, a few statements each.

A new shipment of a confirmed order ships the order and queues its "shipped" mail; tracking
events move shipments forward only (a stale or out-of-order event is kept, marked not applied)
and schedule the "track" step for the orders they touch. The caller owns the session and commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import Session, selectinload

from tasks.config import Config
from tasks.confirm import customer_context, locale_of, store_context
from tasks.intake.ingest import CHUNK, IntakeResult, _bulk_update, chunks, quarantine_records
from tasks.intake.schema import Rejected
from tasks.messaging.outbox import enqueue, order_message
from tasks.store.db import is_postgres
from tasks.store.journal import (
    CONFIRMED,
    Transition,
    apply_transitions,
    insert_ignoring_duplicates,
    record_events,
    reopen_step,
)
from tasks.store.models import Order, Shipment, TrackingEvent
from tasks.tracking.formats import EVENT, SHIPMENT, ShipmentIn, TrackingEventIn

SHIPPED, DELIVERED = "shipped", "delivered"
DELIVERED_TAG = "Delivered"
INITIAL_STATUS = "Pending"
SHIP_STEP = "ship"  # no step row: shipping is driven by the warehouse feed, not by a sweep
TRACK_STEP = "track"
SHIPPED_TEMPLATE = "shipped"
SHIPPABLE = frozenset({CONFIRMED, SHIPPED, DELIVERED})
FUTURE_TOLERANCE = timedelta(minutes=5)

ShipmentKey = tuple[str, str]  # (tracking_number, carrier)


# ---------------------------------------------------------------- shipments


def ingest_shipments(
    session: Session, items: Iterable[ShipmentIn | Rejected], now: datetime, cfg: Config
) -> IntakeResult:
    """Store new shipments, ship confirmed orders and queue one "shipped" mail per parcel."""
    result = IntakeResult()
    for chunk in chunks(items, CHUNK):
        result.add(_ingest_shipment_chunk(session, chunk, now, cfg))
    return result


def _ingest_shipment_chunk(
    session: Session, chunk: list[ShipmentIn | Rejected], now: datetime, cfg: Config
) -> IntakeResult:
    rejected = [item for item in chunk if isinstance(item, Rejected)]
    latest = {(s.tracking_number, s.carrier): s for s in chunk if isinstance(s, ShipmentIn)}
    orders = _orders_by_key(session, list(latest.values()))
    known = _existing_shipments(session, list(latest))
    new: list[tuple[ShipmentIn, Order]] = []
    for key, shipment in latest.items():
        if key in known:
            continue  # the same parcel again: a duplicate, whatever its order became since
        order = orders.get((shipment.order_source, shipment.order_external_id))
        problem = _shipment_problem(shipment, order)
        if problem:
            rejected.append(shipment.rejected(SHIPMENT, [problem], shipment.order_external_id))
        else:
            new.append((shipment, order))  # type: ignore[arg-type]
    _insert_shipments(session, new, now)
    _ship_orders(session, new, now, cfg)
    quarantined, _ = quarantine_records(session, rejected, now)
    return IntakeResult(
        received=len(chunk), accepted=len(new), quarantined=quarantined,
        duplicates=len(chunk) - len(new) - quarantined,
    )


def _orders_by_key(session: Session, shipments: list[ShipmentIn]) -> dict[tuple[str, str], Order]:
    """The shipments' orders by (source, external_id), with customers; locked on PostgreSQL."""
    if not shipments:
        return {}
    query = (
        select(Order)
        .where(Order.external_id.in_({s.order_external_id for s in shipments}),
               Order.source.in_({s.order_source for s in shipments}))
        .options(selectinload(Order.customer))
    )
    if is_postgres(session):
        query = query.with_for_update(of=Order)
    return {(o.source, o.external_id): o for o in session.scalars(query)}


def _existing_shipments(session: Session, keys: list[ShipmentKey]) -> set[ShipmentKey]:
    if not keys:
        return set()
    query = select(Shipment.tracking_number, Shipment.carrier).where(
        Shipment.tracking_number.in_({number for number, _ in keys}))
    return {(number, carrier) for number, carrier in session.execute(query)}


def _shipment_problem(shipment: ShipmentIn, order: Order | None) -> dict[str, str] | None:
    """Why this shipment cannot be recorded, named as the input names the field."""
    field = "order_id" if shipment.order_source == "shopify" else "order_external_id"
    if order is None:
        ref = f"{shipment.order_source}/{shipment.order_external_id}"
        return {"field": field, "reason": f"no such order: {ref}"}
    if order.state not in SHIPPABLE:
        return {"field": field,
                "reason": f"order is {order.state}; only confirmed orders can be shipped"}
    return None


def _insert_shipments(
    session: Session, new: list[tuple[ShipmentIn, Order]], now: datetime
) -> None:
    rows = [
        {"order_id": order.id, "carrier": s.carrier, "tracking_number": s.tracking_number,
         "tracking_url": s.tracking_url, "status": INITIAL_STATUS, "substatus": None,
         "expected_delivery": None, "line_items": s.line_items, "status_at": None,
         "shipped_at": s.shipped_at, "delivered_at": None, "created_at": now, "updated_at": now}
        for s, order in new
    ]
    insert_ignoring_duplicates(session, Shipment, rows, ["tracking_number", "carrier"])


def _ship_orders(
    session: Session, new: list[tuple[ShipmentIn, Order]], now: datetime, cfg: Config
) -> None:
    """Confirmed orders move to shipped (first parcel); every new parcel gets its own mail."""
    first_shipped: dict[int, datetime] = {}
    for shipment, order in new:
        if order.state == CONFIRMED:
            first = first_shipped.get(order.id, shipment.shipped_at)
            first_shipped[order.id] = min(first, shipment.shipped_at)
    transitions = [Transition(oid, SHIPPED, detail={"shipped_at": at.isoformat()})
                   for oid, at in first_shipped.items()]
    apply_transitions(session, SHIP_STEP, CONFIRMED, transitions, now)
    _bulk_update(session, Order.__table__,
                 [{"id": oid, "shipped_at": at} for oid, at in first_shipped.items()],
                 where={"id": "id"})
    record_events(session, [_shipment_event(s, o, now) for s, o in new])
    mails = [shipped_message(s, o, cfg, now) for s, o in new if o.state in (CONFIRMED, SHIPPED)]
    enqueue(session, mails, now)


def _shipment_event(shipment: ShipmentIn, order: Order, now: datetime) -> dict[str, Any]:
    return {"order_id": order.id, "at": now, "kind": "shipment", "from_state": None,
            "to_state": None, "actor": "journeys",
            "detail": {"carrier": shipment.carrier, "tracking_number": shipment.tracking_number}}


def tracking_link(carrier: str, tracking_number: str, url: str | None, cfg: Config) -> str:
    """The carrier's link, or our own tracking page when the feed gave none."""
    if url:
        return url
    base = cfg.store.links_base_url.rstrip("/")
    return f"{base}/track/{quote(carrier, safe='')}/{quote(tracking_number, safe='')}"


def shipped_message(
    shipment: ShipmentIn, order: Order, cfg: Config, now: datetime
) -> dict[str, Any]:
    """The "shipped" mail for one parcel, keyed order:{id}:ship-{tracking}:shipped:v{n}."""
    context = {
        "store": store_context(cfg),
        "customer": customer_context(order),
        "order": {"id": order.id, "name": order.name or f"#{order.external_id}",
                  "locale": locale_of(order, cfg),
                  "promised_delivery": _iso(order.promised_delivery)},
        "shipment": {"carrier": shipment.carrier, "tracking_number": shipment.tracking_number,
                     "tracking_url": tracking_link(shipment.carrier, shipment.tracking_number,
                                                     shipment.tracking_url, cfg),
                     "contents": [_item(i) for i in shipment.line_items]},
    }
    return order_message(
        order_id=order.id, customer_id=order.customer_id,
        step=f"ship-{shipment.tracking_number}", template=SHIPPED_TEMPLATE,
        spec=cfg.messaging.templates[SHIPPED_TEMPLATE], to_addr=order.email, context=context,
        not_before=now, domain=cfg.messaging.from_address.rpartition("@")[2],
    )


def _item(item: dict[str, Any]) -> dict[str, Any]:
    return {"title": str(item.get("title") or item.get("sku") or "Item"),
            "quantity": item.get("quantity") or 1}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


# ---------------------------------------------------------------- tracking events


def ingest_events(
    session: Session, items: Iterable[TrackingEventIn | Rejected], now: datetime
) -> IntakeResult:
    """Store every new event, move shipments forward only, and schedule "track" for their orders."""
    result = IntakeResult()
    for chunk in chunks(items, CHUNK):
        result.add(_ingest_event_chunk(session, chunk, now))
    return result


def _ingest_event_chunk(
    session: Session, chunk: list[TrackingEventIn | Rejected], now: datetime
) -> IntakeResult:
    rejected = [item for item in chunk if isinstance(item, Rejected)]
    fresh = _unseen_events(session, [e for e in chunk if isinstance(e, TrackingEventIn)])
    shipments = _shipments_by_number(session, {e.tracking_number for e in fresh})
    accepted: list[tuple[TrackingEventIn, RowMapping]] = []
    for event in fresh:
        problem = _event_problem(event, shipments.get(event.tracking_number, []), now)
        if isinstance(problem, dict):
            rejected.append(event.rejected(EVENT, [problem], event.event_id))
        else:
            accepted.append((event, problem))
    _apply_events(session, accepted, now)
    quarantined, _ = quarantine_records(session, rejected, now)
    return IntakeResult(
        received=len(chunk), accepted=len(accepted), quarantined=quarantined,
        duplicates=len(chunk) - len(accepted) - quarantined,
    )


def _unseen_events(session: Session, events: list[TrackingEventIn]) -> list[TrackingEventIn]:
    """Events whose id is new: not stored before and not earlier in this chunk."""
    first = {}
    for event in events:
        first.setdefault(event.event_id, event)
    if not first:
        return []
    stored = set(session.scalars(
        select(TrackingEvent.event_id).where(TrackingEvent.event_id.in_(first))))
    return [event for event_id, event in first.items() if event_id not in stored]


def _shipments_by_number(session: Session, numbers: set[str]) -> dict[str, list[RowMapping]]:
    """Shipments by tracking number (a number may recur across carriers); locked on PostgreSQL."""
    if not numbers:
        return {}
    table = Shipment.__table__
    query = select(table).where(table.c.tracking_number.in_(numbers)).order_by(table.c.id)
    if is_postgres(session):
        query = query.with_for_update()
    found: dict[str, list[RowMapping]] = {}
    for row in session.execute(query).mappings():
        found.setdefault(row["tracking_number"], []).append(row)
    return found


def _event_problem(
    event: TrackingEventIn, candidates: list[RowMapping], now: datetime
) -> dict[str, str] | RowMapping:
    """The shipment this event belongs to, or why it cannot be accepted."""
    if event.occurred_at > now + FUTURE_TOLERANCE:
        return {"field": "occurred_at", "reason": "more than 5 minutes in the future"}
    if event.carrier:
        candidates = [row for row in candidates if row["carrier"] == event.carrier] or candidates
    if not candidates:
        return {"field": "tracking_number",
                "reason": f"unknown tracking number: {event.tracking_number} (no shipment)"}
    if len(candidates) > 1:
        return {"field": "tracking_number",
                "reason": f"tracking number {event.tracking_number} matches several carriers; "
                          "the event names none of them"}
    return candidates[0]


def is_applicable(status: str, status_at: datetime | None, event: TrackingEventIn) -> bool:
    """Forward only: never older than the current status, never out of Delivered."""
    if status_at is not None and event.occurred_at < status_at:
        return False
    return not (status == DELIVERED_TAG and event.tag != DELIVERED_TAG)


def _apply_events(
    session: Session, accepted: list[tuple[TrackingEventIn, RowMapping]], now: datetime
) -> list[int]:
    """Store the events, update the shipments they move; returns the orders touched."""
    current = {row["id"]: dict(row) for _, row in accepted}
    rows, moved = [], {}
    for event, shipment in sorted(accepted, key=lambda pair: pair[0].occurred_at):
        state = current[shipment["id"]]
        applied = is_applicable(state["status"], state["status_at"], event)
        if applied:
            _advance(state, event)
            moved[state["id"]] = state
        rows.append(_event_row(event, shipment["id"], applied, now))
    insert_ignoring_duplicates(session, TrackingEvent, rows, ["event_id"])
    _update_shipments(session, list(moved.values()), now)
    order_ids = sorted({state["order_id"] for state in moved.values()})
    record_events(session, [_tracking_event(state, now) for state in moved.values()])
    reopen_step(session, order_ids, TRACK_STEP, now)
    return order_ids


def _advance(state: dict[str, Any], event: TrackingEventIn) -> None:
    state["status"], state["substatus"], state["status_at"] = (
        event.tag, event.subtag, event.occurred_at)
    if event.expected_delivery is not None:
        state["expected_delivery"] = event.expected_delivery
    if event.tag == DELIVERED_TAG and state["delivered_at"] is None:
        state["delivered_at"] = event.occurred_at


def _event_row(
    event: TrackingEventIn, shipment_id: int, applied: bool, now: datetime
) -> dict[str, Any]:
    return {"event_id": event.event_id, "shipment_id": shipment_id, "tag": event.tag,
            "subtag": event.subtag, "message": event.message, "location": event.location,
            "occurred_at": event.occurred_at, "received_at": now, "applied": applied}


def _update_shipments(session: Session, states: Sequence[dict[str, Any]], now: datetime) -> None:
    fields = ("status", "substatus", "status_at", "expected_delivery", "delivered_at")
    rows = [{"id": s["id"], **{f: s[f] for f in fields}, "updated_at": now} for s in states]
    _bulk_update(session, Shipment.__table__, rows, where={"id": "id"})


def _tracking_event(state: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {"order_id": state["order_id"], "at": now, "kind": "tracking", "from_state": None,
            "to_state": None, "actor": "journeys",
            "detail": {"tracking_number": state["tracking_number"], "status": state["status"],
                       "substatus": state["substatus"]}}
