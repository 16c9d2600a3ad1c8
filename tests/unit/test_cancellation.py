"""One cancellation for every path (tasks/cancellation.py), on SQLite and PostgreSQL.

Orders go through the real verify, pack and confirm stages first, so the packed order has its
documents, reserved stock, queued confirmation and its `ship_overdue` watch.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from flows.journey import summary_markdown
from tasks import operations
from tasks.cancellation import do_not_ship
from tasks.journey import stages
from tasks.messaging.render import renderer_for
from tasks.store.db import session_scope
from tasks.store.models import Message, Order, OrderEvent, Product, Return, Step
from tests.factories import add_catalog, add_order

STAGES = stages()


def run(engine, runtime, stage, ids, now):
    with session_scope(engine) as session:
        return STAGES[stage](session, ids, now, runtime)


def mails(session, order_id):
    return {m.template: m for m in session.scalars(select(Message).where(
        Message.order_id == order_id))}


def test_every_cancellation_path_tells_everyone(engine, runtime, now):
    with session_scope(engine) as session:
        add_catalog(session, now)
        packed = add_order(session, now, lines=[("TEE-1", 2, "25.00")])
        held = add_order(session, now, financial_status="pending")
        gone = add_order(session, now, state="shipped", step=None, shipped_at=now)
        ids = [packed.id, held.id, gone.id]
        names = {o.id: o.name for o in (packed, held, gone)}
    for stage in ("verify", "pack", "confirm"):
        run(engine, runtime, stage, ids, now)
    later = now + timedelta(hours=2)

    # the operator cancels the packed (confirmed) order
    with session_scope(engine) as session:
        assert session.get(Order, packed.id).state == "confirmed"
        applied = operations.cancel_order(session, names[packed.id], later, runtime,
                                          "ops@store", "customer called")
    assert applied.outcome["cancelled"] and applied.outcome["do_not_ship"]
    assert "void or refund the payment in Shopify" in applied.outcome["outcome"]
    [change] = applied.changes
    assert (change["from_state"], change["to_state"], change["actor"]) == (
        "confirmed", "cancelled", "ops@store")
    assert change["detail"]["note"] == "customer called"

    # the held order is cancelled from the hold decision: the customer now hears of it
    with session_scope(engine) as session:
        operations.decide_holds(session, [held.id], "cancel", later, "ops@store", "fraud",
                                rt=runtime)
    # the shipped one cannot be cancelled: it is returned to sender, once
    with session_scope(engine) as session:
        sent_back = operations.cancel_order(session, names[gone.id], later, runtime, "ops@store",
                                            "customer refused it").outcome
    with session_scope(engine) as session:
        again = operations.cancel_order(session, names[gone.id], later, runtime, "ops@store",
                                        "customer refused it").outcome
        with pytest.raises(operations.OperationRefused, match="already cancelled"):
            operations.cancel_order(session, names[packed.id], later, runtime, "ops", "twice")

    with session_scope(engine) as session:
        order = session.get(Order, packed.id)
        assert (order.state, order.stock_reserved) == ("cancelled", False)
        assert session.scalar(select(Product.reserved).where(Product.sku == "TEE-1")) == 0
        open_steps = session.scalars(select(Step.name).where(
            Step.order_id == packed.id, Step.status.in_(("pending", "held")))).all()
        assert open_steps == []
        assert session.scalar(select(Step.status).where(
            Step.order_id == packed.id, Step.name == "ship_overdue")) == "closed"
        sent = mails(session, packed.id)
        assert sent["confirmation"].status == "cancelled"  # queued, never sent after the news
        cancel = sent["order_cancelled"]
        assert cancel.status == "pending"
        assert cancel.context["refund"] == {"kind": "void_or_refund", "amount": "55.00",
                                            "business_days": 10}
        text = renderer_for(runtime.config).render(cancel.template, cancel.context).text
        assert ("Your payment of $55.00 will be voided or refunded to the original payment "
                "method within 10 business days.") in text
        unpaid = mails(session, held.id)["order_cancelled"]
        held_text = renderer_for(runtime.config).render(unpaid.template, unpaid.context).text
        assert "You have not been charged for it." in held_text
        assert session.get(Order, held.id).state == "cancelled"
        packer = do_not_ship(session, now, later + timedelta(minutes=1))
        rma = session.scalars(select(Return.rma).where(Return.order_id == gone.id)).one()
        who = session.scalars(select(OrderEvent.actor).where(
            OrderEvent.order_id == held.id, OrderEvent.to_state == "cancelled")).one()

    assert who == "ops@store"
    assert [row["order"] for row in packer] == [names[packed.id]]  # not the held one
    assert packer[0]["packing_slip"]  # the slip's archive reference, to find the parcel
    markdown = summary_markdown(later, {"stages": {}, "messages": {}, "do_not_ship": packer})
    assert "## Do not ship" in markdown and names[packed.id] in markdown
    assert sent_back["return_to_sender"] == again["return_to_sender"] == rma
    assert not sent_back["cancelled"] and "return to sender" in sent_back["outcome"]
