"""Writing shipments and tracking events to the store, chunk by chunk, a few statements each.

A new shipment of a confirmed order runs the ship stage (tasks/tracking/ship.py) for it in the
same transaction, and every new parcel queues its "shipped" mail; a changed
fulfillment (tracking added or corrected) updates its parcel; a cancelled or failed one undoes
its parcel (status "Cancelled") and, when nothing else of the order is under way, takes the
order back to confirmed; a pending or open one changes nothing yet. Tracking events move
shipments forward only (a stale or out-of-order event is kept, marked not applied) and schedule
the "track" step for the orders they touch. The caller owns the session and commits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import Session, selectinload

from tasks.config import Config
from tasks.intake.ingest import CHUNK, IntakeResult, _bulk_update, chunks, quarantine_records
from tasks.intake.schema import Rejected
from tasks.journey import step
from tasks.links import Purpose, link_url
from tasks.messaging.compose import customer_context, locale_of, order_mail, store_context
from tasks.messaging.outbox import enqueue
from tasks.states import OrderState, ParcelStatus
from tasks.store.db import is_postgres
from tasks.store.journal import (
    Transition,
    apply_transitions,
    insert_ignoring_duplicates,
    record_events,
    reopen_step,
    schedule_steps,
)
from tasks.store.models import Order, Shipment, TrackingEvent
from tasks.tracking.formats import (
    EDD_REVISE,
    EVENT,
    FAILED_FULFILLMENT,
    SHIPMENT,
    TRACKING_UPDATE,
    WAITING_FULFILLMENT,
    ShipmentIn,
    TrackingEventIn,
)
from tasks.tracking.ship import SHIP_STEP, ship_orders

# Short names the tracking modules share (tasks/states.py defines them).
CONFIRMED, SHIPPED, DELIVERED = OrderState.CONFIRMED, OrderState.SHIPPED, OrderState.DELIVERED
DELIVERED_TAG = ParcelStatus.DELIVERED
INITIAL_STATUS = ParcelStatus.INITIAL
# A parcel whose fulfillment was cancelled or failed: not an AfterShip tag, so no tracking event
# moves it again; its substatus keeps the source's word (cancelled, error, failure).
CANCELLED_STATUS = ParcelStatus.CANCELLED
TRACK_STEP = step("track").name
SHIPPED_TEMPLATE = "shipped"
SHIPPABLE = frozenset({CONFIRMED, SHIPPED, DELIVERED})
FUTURE_TOLERANCE = timedelta(minutes=5)
# Tracking numbers that can stand in an effect key as they are (the key format since v1).
PLAIN_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NO_TRACKING_YET = "not available yet"

ShipmentKey = tuple[str, str]  # (tracking_number, carrier)


# ---------------------------------------------------------------- shipments


@dataclass
class _ShipmentPlan:
    """One chunk's shipments sorted by what must happen to them."""

    new: list[tuple[ShipmentIn, Order]] = field(default_factory=list)
    changed: list[tuple[ShipmentIn, RowMapping]] = field(default_factory=list)
    cancelled: list[tuple[ShipmentIn, RowMapping]] = field(default_factory=list)
    waiting: list[tuple[ShipmentIn, str]] = field(default_factory=list)  # with why
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class _StoredParcels:
    """The chunk's parcels already stored, by tracking key and by fulfillment id."""

    by_number: dict[tuple[str, str | None], RowMapping] = field(default_factory=dict)
    by_fulfillment: dict[str, list[RowMapping]] = field(default_factory=dict)
    claimed: set[int] = field(default_factory=set)  # parcels a record of this chunk took


def ingest_shipments(
    session: Session, items: Iterable[ShipmentIn | Rejected], now: datetime, cfg: Config,
    secret_key: str,
) -> IntakeResult:
    """Store new shipments, ship confirmed orders and queue one "shipped" mail per parcel
    (`secret_key` signs the mail's link to the order page)."""
    result = IntakeResult()
    for chunk in chunks(items, CHUNK):
        result.add(_ingest_shipment_chunk(session, chunk, now, cfg, secret_key))
    return result


def _ingest_shipment_chunk(
    session: Session, chunk: list[ShipmentIn | Rejected], now: datetime, cfg: Config,
    secret_key: str,
) -> IntakeResult:
    records = latest_records([s for s in chunk if isinstance(s, ShipmentIn)])
    orders = _orders_by_key(session, records)
    plan = plan_shipments(records, orders, _stored_parcels(session, records))
    plan.rejected += [item for item in chunk if isinstance(item, Rejected)]
    _insert_shipments(session, plan.new, now)
    _ship_orders(session, plan.new, now, cfg, secret_key)
    _update_tracking(session, plan.changed, now)
    _cancel_parcels(session, plan.cancelled, now)
    record_events(session, _waiting_events(plan.waiting, orders, now))
    quarantined, _ = quarantine_records(session, plan.rejected, now)
    updated = len(plan.changed) + len(plan.cancelled)
    # Waiting (pending/open) and never-shipped failed fulfillments change nothing: until intake
    # counts them on their own they are counted with the duplicates.
    return IntakeResult(
        received=len(chunk), accepted=len(plan.new), updated=updated, quarantined=quarantined,
        deferred=len(plan.waiting),
        duplicates=len(chunk) - len(plan.new) - updated - quarantined - len(plan.waiting),
    )


def record_key(record: ShipmentIn) -> tuple[str | None, ...]:
    """A record's parcel within a chunk: its tracking key, else its fulfillment."""
    if record.tracking_number:
        return (record.tracking_number, record.carrier)
    return ("fulfillment", record.fulfillment_id)


def latest_records(records: list[ShipmentIn]) -> list[ShipmentIn]:
    """The last record of each parcel; a fulfillment's untracked record yields to a tracked one."""
    latest = {record_key(r): r for r in records}
    tracked = {r.fulfillment_id for r in latest.values() if r.tracking_number}
    return [r for r in latest.values() if r.tracking_number or r.fulfillment_id not in tracked]


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


def _stored_parcels(session: Session, records: list[ShipmentIn]) -> _StoredParcels:
    """Parcels sharing a tracking number or a fulfillment id with the records, in one query."""
    numbers = {r.tracking_number for r in records if r.tracking_number}
    fulfillments = {r.fulfillment_id for r in records if r.fulfillment_id}
    stored = _StoredParcels()
    if not numbers and not fulfillments:
        return stored
    table = Shipment.__table__
    query = select(table).where(or_(table.c.tracking_number.in_(numbers),
                                    table.c.fulfillment_id.in_(fulfillments))).order_by(table.c.id)
    for row in session.execute(query).mappings():
        if row["tracking_number"] is not None:
            stored.by_number[(row["tracking_number"], row["carrier"])] = row
        if row["fulfillment_id"] is not None:
            stored.by_fulfillment.setdefault(row["fulfillment_id"], []).append(row)
    return stored


def plan_shipments(
    records: list[ShipmentIn], orders: dict[tuple[str, str], Order], stored: _StoredParcels
) -> _ShipmentPlan:
    """Decide each record: a new parcel, a change, an undo, a wait, a duplicate or a rejection."""
    plan = _ShipmentPlan()
    per_fulfillment: dict[str | None, int] = {}
    for record in records:
        per_fulfillment[record.fulfillment_id] = per_fulfillment.get(record.fulfillment_id, 0) + 1
    for record in records:
        parcel = _stored_parcel(record, stored, per_fulfillment[record.fulfillment_id] == 1)
        order = orders.get((record.order_source, record.order_external_id))
        _decide(plan, record, parcel, order)
    return plan


def _stored_parcel(
    record: ShipmentIn, stored: _StoredParcels, alone: bool
) -> RowMapping | None:
    """The stored parcel this record speaks of: same tracking key, else same fulfillment.

    A tracked record takes its fulfillment's untracked parcel (tracking arrived later), or its
    only parcel when it is its fulfillment's only record (the number was corrected).
    """
    parcel = stored.by_number.get((record.tracking_number, record.carrier)) \
        if record.tracking_number else None
    siblings = [row for row in stored.by_fulfillment.get(record.fulfillment_id or "", [])
                if row["id"] not in stored.claimed]
    if parcel is None and siblings:
        untracked = [row for row in siblings if row["tracking_number"] is None]
        if not record.tracking_number or untracked:
            parcel = (untracked or siblings)[0]
        elif alone and len(siblings) == 1 and not _taken_number(record, stored):
            parcel = siblings[0]
    if parcel is not None:
        stored.claimed.add(parcel["id"])
    return parcel


def _taken_number(record: ShipmentIn, stored: _StoredParcels) -> bool:
    """Whether another parcel already holds this record's tracking number (any carrier)."""
    return any(number == record.tracking_number for number, _ in stored.by_number)


def _decide(
    plan: _ShipmentPlan, record: ShipmentIn, parcel: RowMapping | None, order: Order | None
) -> None:
    fulfillment = f"fulfillment {record.fulfillment_id or record.tracking_number}"
    if record.status in WAITING_FULFILLMENT:
        plan.waiting.append((record, f"{fulfillment} is {record.status}: not shipped yet"))
    elif record.status in FAILED_FULFILLMENT:
        if parcel is None:
            plan.waiting.append((record, f"{fulfillment} is {record.status}: nothing shipped"))
        elif parcel["status"] != CANCELLED_STATUS:
            plan.cancelled.append((record, parcel))
    elif parcel is None:
        problem = _shipment_problem(record, order)
        if problem:
            plan.rejected.append(record.rejected(SHIPMENT, [problem], record.order_external_id))
        else:
            plan.new.append((record, order))  # type: ignore[arg-type]
    elif parcel["status"] != CANCELLED_STATUS and _tracking_changes(record, parcel):
        plan.changed.append((record, parcel))


def _tracking_changes(record: ShipmentIn, parcel: RowMapping) -> dict[str, Any]:
    """What the record adds to or corrects in the parcel's tracking; it never erases any."""
    wanted = {"tracking_number": record.tracking_number, "tracking_url": record.tracking_url,
              "carrier": record.carrier or (parcel["carrier"] if record.tracking_number else None)}
    return {name: value for name, value in wanted.items()
            if value is not None and value != parcel[name]}


def _shipment_problem(shipment: ShipmentIn, order: Order | None) -> dict[str, str] | None:
    """Why this shipment cannot be recorded, named as the input names the field."""
    field_name = "order_id" if shipment.order_source == "shopify" else "order_external_id"
    if order is None:
        ref = f"{shipment.order_source}/{shipment.order_external_id}"
        return {"field": field_name, "reason": f"no such order: {ref}"}
    if order.state not in SHIPPABLE:
        return {"field": field_name,
                "reason": f"order is {order.state}; only confirmed orders can be shipped"}
    return None


def _insert_shipments(
    session: Session, new: list[tuple[ShipmentIn, Order]], now: datetime
) -> None:
    rows = [
        {"order_id": order.id, "fulfillment_id": s.fulfillment_id, "carrier": s.carrier,
         "tracking_number": s.tracking_number, "tracking_url": s.tracking_url,
         "status": INITIAL_STATUS, "substatus": None, "expected_delivery": None,
         "line_items": s.line_items, "status_at": None, "shipped_at": s.shipped_at,
         "delivered_at": None, "created_at": now, "updated_at": now}
        for s, order in new
    ]
    insert_ignoring_duplicates(session, Shipment, rows, ["tracking_number", "carrier"])


def _ship_orders(
    session: Session, new: list[tuple[ShipmentIn, Order]], now: datetime, cfg: Config,
    secret_key: str,
) -> None:
    """Confirmed orders take the ship step now (first parcel); every new parcel gets its mail.

    `order.state` is the state before this chunk: an order shipped now still mails its parcels.
    """
    confirmed = sorted({order.id for _, order in new if order.state == CONFIRMED})
    schedule_steps(session, [(order_id, SHIP_STEP, now) for order_id in confirmed], now)
    ship_orders(session, confirmed, now)
    record_events(session, [_shipment_event(s, o.id, now) for s, o in new])
    mails = [shipped_message(s, o, cfg, now, secret_key) for s, o in new
             if o.state in (CONFIRMED, SHIPPED)]
    enqueue(session, mails, now)


def _update_tracking(
    session: Session, changed: list[tuple[ShipmentIn, RowMapping]], now: datetime
) -> None:
    """Tracking that arrived (or was corrected) after the parcel: the same parcel, updated."""
    rows = [{"id": parcel["id"], "tracking_number": parcel["tracking_number"],
             "carrier": parcel["carrier"], "tracking_url": parcel["tracking_url"],
             **_tracking_changes(record, parcel), "updated_at": now}
            for record, parcel in changed]
    _bulk_update(session, Shipment.__table__, rows, where={"id": "id"})
    record_events(session, [_shipment_event(record, parcel["order_id"], now, "tracking updated")
                            for record, parcel in changed])


def _cancel_parcels(
    session: Session, cancelled: list[tuple[ShipmentIn, RowMapping]], now: datetime
) -> None:
    """Undo parcels whose fulfillment was cancelled or failed; unship orders left with none."""
    rows = [{"id": parcel["id"], "status": CANCELLED_STATUS, "substatus": record.status,
             "updated_at": now} for record, parcel in cancelled]
    _bulk_update(session, Shipment.__table__, rows, where={"id": "id"})
    record_events(session, [_shipment_event(r, p["order_id"], now, f"fulfillment {r.status}")
                            for r, p in cancelled])
    _unship_orders(session, {parcel["order_id"] for _, parcel in cancelled}, now)


def _unship_orders(session: Session, order_ids: set[int], now: datetime) -> None:
    """Shipped orders whose parcels are all cancelled, none ever scanned, go back to confirmed."""
    if not order_ids:
        return
    parcels: dict[int, list[Any]] = {}
    query = select(Shipment.order_id, Shipment.status, Shipment.status_at).where(
        Shipment.order_id.in_(order_ids))
    for row in session.execute(query):
        parcels.setdefault(row.order_id, []).append(row)
    undone = sorted(oid for oid, rows in parcels.items()
                    if all(r.status == CANCELLED_STATUS and r.status_at is None for r in rows))
    transitions = [Transition(oid, CONFIRMED, detail={"reason": "every parcel was cancelled"})
                   for oid in undone]
    apply_transitions(session, SHIP_STEP, SHIPPED, transitions, now)
    _bulk_update(session, Order.__table__,
                 [{"id": oid, "state": CONFIRMED, "shipped_at": None} for oid in undone],
                 where={"id": "id", "state": "state"})


def _waiting_events(
    waiting: list[tuple[ShipmentIn, str]], orders: dict[tuple[str, str], Order], now: datetime
) -> list[dict[str, Any]]:
    """Why a fulfillment changed nothing, on its order's timeline (when the order is known)."""
    events = []
    for record, reason in waiting:
        order = orders.get((record.order_source, record.order_external_id))
        if order is not None:
            events.append(_shipment_event(record, order.id, now, reason))
    return events


def _shipment_event(
    shipment: ShipmentIn, order_id: int, now: datetime, note: str | None = None
) -> dict[str, Any]:
    detail = {"fulfillment_id": shipment.fulfillment_id, "carrier": shipment.carrier,
              "tracking_number": shipment.tracking_number}
    return {"order_id": order_id, "at": now, "kind": "shipment", "from_state": None,
            "to_state": None, "actor": "journeys",
            "detail": {k: v for k, v in detail.items() if v is not None}
            | ({"note": note} if note else {})}


def order_link(cfg: Config, secret_key: str, order_id: int, issued: datetime) -> str:
    """The order page (/o/{token}): what the order mails link to, instead of the carrier.

    Mails sent before it linked to `/track/{carrier}/{number}`; the edge answers those with its
    friendly page (a tracking number is not proof of who asks)."""
    return link_url(cfg.store.links_base_url, secret_key, Purpose.ORDER, order_id, issued)


def shipped_step(shipment: ShipmentIn) -> str:
    """The "shipped" mail's step: `ship-{number}` for a plain number (the key since v1, so
    mail already queued keeps its key), else `parcel-{hash}` of the parcel's identity.

    A number with '#', '/', ':', spaces or non-ASCII, or no number yet (a fulfillment without
    tracking), must not shape a key that becomes a file name; the hash is stable per parcel.
    """
    number = shipment.tracking_number
    if number and PLAIN_NUMBER.fullmatch(number):
        return f"ship-{number}"
    identity = (f"tracking\0{shipment.carrier or ''}\0{number}" if number
                else f"fulfillment\0{shipment.order_source}\0{shipment.fulfillment_id}")
    return f"parcel-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def shipped_message(
    shipment: ShipmentIn, order: Order, cfg: Config, now: datetime, secret_key: str
) -> dict[str, Any]:
    """The "shipped" mail for one parcel, keyed order:{id}:{shipped_step}:shipped:v{n}."""
    context = {
        "order_url": order_link(cfg, secret_key, order.id, now),
        "store": store_context(cfg),
        "customer": customer_context(order),
        "order": {"id": order.id, "name": order.name or f"#{order.external_id}",
                  "locale": locale_of(order, cfg),
                  "promised_delivery": _iso(order.promised_delivery)},
        "shipment": {"carrier": shipment.carrier or "",
                     "tracking_number": shipment.tracking_number or NO_TRACKING_YET,
                     "tracking_url": shipment.tracking_url,  # the carrier's, if known
                     "contents": [_item(i) for i in shipment.line_items]},
    }
    return order_mail(cfg, order, shipped_step(shipment), SHIPPED_TEMPLATE, context, now)


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
    """Shipments by tracking number (a number may recur across carriers), with their order's
    external id and name; locked on PostgreSQL."""
    if not numbers:
        return {}
    table = Shipment.__table__
    query = (select(table, Order.external_id.label("order_external_id"),
                    Order.name.label("order_name"))
             .join(Order, Order.id == table.c.order_id)
             .where(table.c.tracking_number.in_(numbers)).order_by(table.c.id))
    if is_postgres(session):
        query = query.with_for_update(of=table)
    found: dict[str, list[RowMapping]] = {}
    for row in session.execute(query).mappings():
        found.setdefault(row["tracking_number"], []).append(row)
    return found


def _event_problem(
    event: TrackingEventIn, candidates: list[RowMapping], now: datetime
) -> dict[str, str] | RowMapping:
    """The shipment this event belongs to, or why it cannot be accepted.

    A parcel is known by carrier AND number: an event naming a carrier matches only that
    carrier's parcel (or the one parcel with this number whose carrier the feed never named);
    an event naming none matches only when one parcel has the number. When the event names an
    order, the parcel must belong to it.
    """
    if event.occurred_at > now + FUTURE_TOLERANCE:
        return {"field": "occurred_at", "reason": "more than 5 minutes in the future"}
    if not candidates:
        return {"field": "tracking_number",
                "reason": f"unknown tracking number: {event.tracking_number} (no shipment)"}
    matching = _same_carrier(event, candidates)
    if not matching:
        return {"field": "carrier", "reason": f"no {event.carrier} parcel has tracking number "
                f"{event.tracking_number} (only {_carriers(candidates)})"}
    if len(matching) > 1:
        return {"field": "tracking_number",
                "reason": f"tracking number {event.tracking_number} matches several parcels "
                          f"({_carriers(matching)}); the event names none of them"}
    if not _names_order_of(event, matching[0]):
        return {"field": "order_id", "reason": f"tracking number {event.tracking_number} "
                "belongs to another order than the one the event names"}
    return matching[0]


def _same_carrier(event: TrackingEventIn, candidates: list[RowMapping]) -> list[RowMapping]:
    if not event.carrier:
        return candidates
    same = [row for row in candidates if row["carrier"] == event.carrier]
    unnamed = [row for row in candidates if row["carrier"] is None]
    return same or (unnamed if len(unnamed) == 1 else [])


def _carriers(rows: list[RowMapping]) -> str:
    return ", ".join(sorted({row["carrier"] or "carrier not named" for row in rows}))


def _names_order_of(event: TrackingEventIn, parcel: RowMapping) -> bool:
    """True when the event names no order, or names the parcel's (by id or number/name)."""
    named = {ref.strip().lstrip("#") for ref in (event.order_id, event.order_number) if ref}
    if not named:
        return True
    ours = {str(parcel[key]).strip().lstrip("#")
            for key in ("order_external_id", "order_name") if parcel[key]}
    return bool(named & ours)


def is_applicable(shipment: dict[str, Any], event: TrackingEventIn) -> bool:
    """Forward only: a tracking update, never before the parcel shipped nor older than its
    status, never out of Delivered, never for a cancelled parcel."""
    status, status_at = shipment["status"], shipment["status_at"]
    if event.event != TRACKING_UPDATE or status == CANCELLED_STATUS:
        return False  # a revised estimate or a pending-time alert moves no parcel
    if event.occurred_at < shipment["shipped_at"]:
        return False
    if status_at is not None and event.occurred_at < status_at:
        return False
    return not (status == DELIVERED_TAG and event.tag != DELIVERED_TAG)


def _apply_events(
    session: Session, accepted: list[tuple[TrackingEventIn, RowMapping]], now: datetime
) -> list[int]:
    """Store the events, update the shipments they move; returns the orders touched."""
    current = {row["id"]: dict(row) for _, row in accepted}
    rows, moved, revised = [], {}, {}
    for event, shipment in sorted(accepted, key=lambda pair: pair[0].occurred_at):
        state = current[shipment["id"]]
        applied = is_applicable(state, event)
        if applied:
            _advance(state, event)
            moved[state["id"]] = state
        elif _revises_estimate(state, event):
            state["expected_delivery"] = event.expected_delivery
            revised[state["id"]] = state
        rows.append(_event_row(event, shipment["id"], applied, now))
    insert_ignoring_duplicates(session, TrackingEvent, rows, ["event_id"])
    _update_shipments(session, list((revised | moved).values()), now)
    order_ids = sorted({state["order_id"] for state in moved.values()})
    record_events(session, [_tracking_event(state, now) for state in moved.values()])
    reopen_step(session, order_ids, TRACK_STEP, now)
    return order_ids


def _revises_estimate(state: dict[str, Any], event: TrackingEventIn) -> bool:
    """An `edd_revise` webhook: the carrier's new estimate, and nothing else, for a live parcel."""
    return (event.event == EDD_REVISE and event.expected_delivery is not None
            and state["status"] != CANCELLED_STATUS)


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
