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
from sqlalchemy.orm import Session

from tasks.store.models import Order, Shipment

ISSUES = ("damaged", "wrong_item", "missing_item", "late", "other")


@dataclass(frozen=True)
class Outside:
    """The seeded behaviour of carriers and customers."""

    seed: int
    transit_days: tuple[int, int] = (2, 6)
    late_share: float = 0.08  # parcels that arrive days after the promise
    exception_share: float = 0.05  # parcels with a failed delivery attempt on the way
    answer_share: float = 0.6  # customers who answer the delivery survey

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
