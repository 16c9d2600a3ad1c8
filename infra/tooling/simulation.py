"""What the outside world does in a simulated store: carriers scan parcels, customers answer.

Pure, seeded generation: given the orders as they stand, the records a day would bring.
The simulation driver (infra/tooling/simulate.py) feeds them through the real ingest flows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from tasks.config import Config
from tasks.returns.policy import exchange_options, returnable_lines
from tasks.returns.requests import ReturnRequest
from tasks.states import ReturnStatus
from tasks.store.models import Order, Product, Return, Shipment
from tasks.store.returns import units_not_kept

SIZE_REASONS = ("too_small", "too_big")
OTHER_REASONS = ("changed_mind", "quality", "not_as_described", "damaged")

ISSUES = ("damaged", "wrong_item", "missing_item", "late", "other")


@dataclass(frozen=True)
class Outside:
    """The seeded behaviour of carriers and customers."""

    seed: int
    transit_days: tuple[int, int] = (2, 6)
    late_share: float = 0.08  # parcels that arrive days after the promise
    exception_share: float = 0.05  # parcels with a failed delivery attempt on the way
    answer_share: float = 0.6  # customers who answer the delivery survey
    return_share: float = 0.15  # delivered orders a customer starts a return for
    exchange_share: float = 0.4  # of those, an exchange when another variant is in stock
    return_after_days: int = 4  # days after delivery the customer starts it
    return_transit_days: tuple[int, int] = (3, 7)  # approval to the parcel arriving back

    def rng(self, *parts: Any) -> random.Random:
        """A generator per (thing, day): the same seed always tells the same story."""
        return random.Random(f"{self.seed}:" + ":".join(str(p) for p in parts))


def shipments_for(session: Session, day: datetime) -> list[dict[str, Any]]:
    """The warehouse ships every confirmed order with one parcel (canonical records)."""
    orders = session.execute(
        select(Order.source, Order.external_id).where(Order.state == "confirmed")
    ).all()
    return [{"order_source": source, "order_external_id": external_id, "carrier": "ups",
             "tracking_number": f"1Z{external_id}", "shipped_at": day.isoformat()}
            for source, external_id in orders]


def events_for(session: Session, day: datetime, world: Outside) -> list[dict[str, Any]]:
    """Carrier scans happening on `day` for every parcel still under way."""
    rows = session.execute(
        select(Shipment.tracking_number, Shipment.shipped_at, Order.promised_delivery)
        .join(Order, Order.id == Shipment.order_id).where(Shipment.status != "Delivered")
    ).all()
    events = []
    for tracking, shipped_at, promised in rows:
        events += _scans(tracking, shipped_at, promised, day, world)
    return events


def deliveries_for(session: Session, at: datetime) -> list[dict[str, Any]]:
    """Every parcel still under way is delivered at `at` (the bench's compressed story)."""
    rows = session.execute(
        select(Shipment.tracking_number).where(Shipment.status != "Delivered")
    ).scalars()
    return [_event(tracking, "Delivered", "Delivered_001", at) for tracking in rows]


def _scans(tracking: str, shipped_at: datetime, promised: Any, day: datetime,
           world: Outside) -> list[dict[str, Any]]:
    rng = world.rng("parcel", tracking)
    transit = rng.randint(*world.transit_days)
    if rng.random() < world.late_share and promised is not None:
        transit = max(transit, (promised - shipped_at.date()).days + rng.randint(2, 5))
    age = (day.date() - shipped_at.date()).days
    at = day.replace(hour=15, minute=0, second=0, microsecond=0)
    if age == transit:
        return [_event(tracking, "Delivered", "Delivered_001", at)]
    if age == 1:
        return [_event(tracking, "InTransit", "InTransit_001", at)]
    if age == transit - 1 and rng.random() < world.exception_share:
        return [_event(tracking, "AttemptFail", "AttemptFail_001", at)]
    return []


def _event(tracking: str, tag: str, subtag: str, at: datetime) -> dict[str, Any]:
    return {"event_id": f"{tracking}:{tag}:{at:%Y%m%d}", "tracking_number": tracking,
            "carrier": "ups", "tag": tag, "subtag": subtag, "occurred_at": at.isoformat()}


def feedback_for(session: Session, day: datetime, world: Outside) -> list[dict[str, Any]]:
    """Some customers answer the survey three days after delivery, with a seeded rating."""
    start = day.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
    orders = session.execute(
        select(Order.source, Order.external_id).where(
            Order.delivered_at >= start, Order.delivered_at < start + timedelta(days=1))
    ).all()
    answers = []
    for source, external_id in orders:
        rng = world.rng("feedback", external_id)
        if rng.random() >= world.answer_share:
            continue
        rating = rng.choices((1, 2, 3, 4, 5), weights=(5, 5, 10, 30, 50))[0]
        tags = [rng.choice(ISSUES)] if rating <= 2 else []
        answers.append({"source": source, "order_external_id": external_id, "rating": rating,
                        "tags": tags, "submitted_at": day.replace(hour=12).isoformat()})
    return answers


def returns_for(session: Session, day: datetime, world: Outside, cfg: Config
                ) -> list[ReturnRequest]:
    """Customers who start a return on `day` (return_after_days after delivery): one
    returnable line each, a seeded reason, and an exchange for another in-stock variant when
    the seed says so and the product has one. Only requests the policy takes are made."""
    start = day.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=world.return_after_days)
    orders = session.scalars(
        select(Order).where(Order.delivered_at >= start,
                            Order.delivered_at < start + timedelta(days=1))
        .options(selectinload(Order.lines))).all()
    picked = [o for o in orders if world.rng("return", o.external_id).random()
              < world.return_share]
    skus = {line.sku for o in picked for line in o.lines if line.sku}
    products = {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(skus)))}
    in_returns = units_not_kept(session, [o.id for o in picked])
    options = exchange_options(session, skus)
    requests = []
    for order in picked:
        lines = [line for line in returnable_lines(order, products, in_returns.get(order.id, {}),
                                                   day, cfg) if line.why_not is None]
        if lines:
            requests.append(_request(order, lines[0], options, world))
    return requests


def _request(order: Order, line: Any, options: dict[str, list[Any]], world: Outside
             ) -> ReturnRequest:
    rng = world.rng("return-kind", order.external_id)
    other = [p.sku for p in options.get(line.sku or "", []) if p.sku != line.sku]
    if other and rng.random() < world.exchange_share:
        return ReturnRequest(order.id, {line.line_id: 1}, rng.choice(SIZE_REASONS), "exchange",
                             {line.line_id: rng.choice(other)}, key=f"sim:{order.id}:return")
    return ReturnRequest(order.id, {line.line_id: 1}, rng.choice(SIZE_REASONS + OTHER_REASONS),
                         key=f"sim:{order.id}:return")


def returns_arriving(session: Session, day: datetime, world: Outside) -> list[int]:
    """Approved returns whose parcel reaches the warehouse by `day` (seeded transit)."""
    rows = session.execute(select(Return.id, Return.rma, Return.decided_at).where(
        Return.status == ReturnStatus.APPROVED)).all()
    return [rid for rid, rma, decided in rows
            if decided + timedelta(days=world.rng("return-transit", rma).randint(
                *world.return_transit_days)) <= day]


def returns_waiting(session: Session) -> list[int]:
    """Requested returns an operator must look at."""
    return list(session.scalars(select(Return.id).where(
        Return.status == ReturnStatus.REQUESTED).order_by(Return.id)))
