"""Orders that never ship (tasks/tracking/unshipped.py), on SQLite and PostgreSQL.

Real verify, pack and confirm schedule the watch; one order gets a parcel in time, one never
does, and one was confirmed before the watch existed (the daily net finds it).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from tasks.delivery import estimate_delivery
from tasks.journey import stages
from tasks.reporting import report
from tasks.store.db import session_scope
from tasks.store.journal import due_order_ids
from tasks.store.models import Message, OrderEvent, ServiceCase, Shipment, Step
from tasks.tracking.ship import ship_orders
from tasks.tracking.unshipped import STEP, overdue_watch_ids, ship_by
from tests.factories import add_catalog, add_order

STAGES = stages()


def run(engine, runtime, stage, ids, now):
    with session_scope(engine) as session:
        return STAGES[stage](session, ids, now, runtime)


def flagged(session):
    """What flagging wrote: apologies, cases and case rows in the timeline, per order."""
    def count(model, *where):
        return dict(session.execute(select(model.order_id, func.count()).where(*where)
                                    .group_by(model.order_id)).all())
    return (count(Message, Message.template == "not_shipped_apology"),
            count(ServiceCase, ServiceCase.effect_key.like("%:case:not_shipped")),
            count(OrderEvent, OrderEvent.kind == "case"))


def test_a_confirmed_order_past_its_ship_date_is_flagged_once(engine, runtime, now):
    cfg = runtime.config
    with session_scope(engine) as session:
        add_catalog(session, now)
        late, on_time = add_order(session, now), add_order(session, now)
        legacy = add_order(session, now, state="confirmed", step=None,
                           promised_delivery=(now - timedelta(days=3)).date())
        ids = [late.id, on_time.id]
    for stage in ("verify", "pack", "confirm"):
        run(engine, runtime, stage, ids, now)
    with session_scope(engine) as session:
        due = dict(session.execute(select(Step.order_id, Step.due_at).where(Step.name == STEP))
                   .all())
        session.add(Shipment(order_id=on_time.id, carrier="ups", tracking_number="1Z1",
                             status="InTransit", line_items=[], shipped_at=now, created_at=now,
                             updated_at=now))
        session.flush()
        ship_orders(session, [on_time.id], now)  # the parcel arrives before the ship date
        assert overdue_watch_ids(session, 10) == [legacy.id]
    assert set(due) == set(ids) and all(at.replace(tzinfo=None) > now.replace(tzinfo=None)
                                        for at in due.values())

    past = max(due.values()).replace(tzinfo=now.tzinfo) + timedelta(minutes=1)
    with session_scope(engine) as session:
        assert due_order_ids(session, STEP, past, 10) == ids
    first = run(engine, runtime, STEP, ids, past)
    net = run(engine, runtime, STEP, [legacy.id], past)
    for rerun in (past, past + timedelta(days=1)):  # the next sweep and the next day: no-ops
        again = run(engine, runtime, STEP, ids + [legacy.id], rerun)
        assert (again.advanced, again.details["cases_opened"]) == (0, 0)

    with session_scope(engine) as session:
        mails, cases, events = flagged(session)
        [apology] = session.scalars(select(Message).where(
            Message.template == "not_shipped_apology", Message.order_id == late.id)).all()
        steps = dict(session.execute(select(Step.order_id, Step.status)
                                     .where(Step.name == STEP)).all())
        proposed = session.scalars(select(ServiceCase.proposed)
                                   .where(ServiceCase.order_id == late.id)).one()
        promised = session.get(type(late), late.id).promised_delivery
        order = session.get(type(late), late.id)
        expected_ship_by = ship_by(order, promised, cfg)
        in_report = report(session)["not_shipped"]["past_ship_date"]
    assert (first.advanced, first.closed, net.advanced) == (1, 1, 1)
    assert mails == cases == events == {late.id: 1, legacy.id: 1}  # none for the shipped one
    assert steps == {late.id: "done", on_time.id: "closed", legacy.id: "done"}
    assert proposed == cfg.tracking.late_case_proposal
    assert apology.effect_key == f"order:{late.id}:ship_overdue:not_shipped_apology:v1"
    estimate = estimate_delivery(past, "standard", "US", cfg.shipping)
    assert apology.context["order"]["new_estimate"] == estimate.isoformat()
    assert apology.context["order"]["ship_by"] == expected_ship_by.isoformat()
    assert expected_ship_by < promised
    assert in_report == 2  # the report's line: flagged and still without a parcel
