"""The ship stage: a confirmed order with a live parcel becomes shipped.

Shipment intake (tasks/tracking/ingest.py) stores the parcels, schedules this step for their
confirmed orders and runs it at once in the same transaction, so an order is shipped as soon as
its first parcel is stored; a `ship` step left pending runs in the next sweep like any other.
The "shipped" mail is per parcel, not per order: intake queues it when the parcel arrives (its
key names the parcel as it was then), for an order shipped now and for one shipped before.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from tasks.journey import StageResult, step
from tasks.runtime import Runtime
from tasks.states import OrderState, ParcelStatus, StepStatus
from tasks.store.journal import Transition, apply_transitions, claim_order_ids, set_steps
from tasks.store.models import Order, Shipment, Step

SHIP_STEP = step("ship").name
NO_PARCEL = "confirmed, but no live parcel"
LEFT = "order no longer confirmed"


def ship(session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime) -> StageResult:
    """The stage as the sweep runs it (shipping needs no config)."""
    return ship_orders(session, order_ids, now)


def ship_orders(session: Session, order_ids: Sequence[int], now: datetime) -> StageResult:
    """confirmed → shipped, shipped_at = the earliest live parcel's, for orders that have one."""
    claimed = claim_order_ids(session, order_ids, OrderState.CONFIRMED)
    first = first_shipped(session, claimed)
    transitions = [Transition(oid, OrderState.SHIPPED, detail={"shipped_at": at.isoformat()})
                   for oid, at in first.items()]
    apply_transitions(session, SHIP_STEP, OrderState.CONFIRMED, transitions, now)
    _set_shipped_at(session, first)
    unshipped = [oid for oid in claimed if oid not in first]
    set_steps(session, SHIP_STEP, {oid: (StepStatus.CLOSED, NO_PARCEL) for oid in unshipped}, now)
    _close_left(session, set(order_ids) - set(claimed), now)
    return StageResult(stage=SHIP_STEP, advanced=len(first), closed=len(unshipped),
                       skipped=len(set(order_ids)) - len(first) - len(unshipped))


def first_shipped(session: Session, order_ids: Sequence[int]) -> dict[int, datetime]:
    """Each order's earliest live (not cancelled) parcel's shipped_at; orders without none."""
    if not order_ids:
        return {}
    query = (select(Shipment.order_id, func.min(Shipment.shipped_at))
             .where(Shipment.order_id.in_(order_ids),
                    Shipment.status != ParcelStatus.CANCELLED)
             .group_by(Shipment.order_id).order_by(Shipment.order_id))
    return {oid: at for oid, at in session.execute(query) if at is not None}


def _set_shipped_at(session: Session, shipped_at: dict[int, datetime]) -> None:
    if not shipped_at:
        return
    table = Order.__table__
    session.connection().execute(
        update(table).where(table.c.id == bindparam("b_id")).values(shipped_at=bindparam("b_at")),
        [{"b_id": oid, "b_at": at} for oid, at in shipped_at.items()],
    )


def _close_left(session: Session, order_ids: set[int], now: datetime) -> None:
    """Close a pending ship step of orders that left confirmed (not of ones a peer locked)."""
    if not order_ids:
        return
    gone = select(Order.id).where(Order.id.in_(order_ids), Order.state != OrderState.CONFIRMED)
    session.execute(
        update(Step).where(Step.order_id.in_(gone), Step.name == SHIP_STEP,
                           Step.status == StepStatus.PENDING)
        .values(status=StepStatus.CLOSED, reason=LEFT, updated_at=now)
        .execution_options(synchronize_session=False)
    )
