"""Replacement orders (tasks/replacements.py): a service case decided `replacement` creates one,
at no charge, linked both ways, which verification, packing and confirmation treat like any."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from tasks.aftercare.service import decide_case, settle_case
from tasks.confirm import confirm
from tasks.links import Purpose, read_token
from tasks.loyalty.earning import not_earning_reason
from tasks.loyalty.rules import loyalty_config
from tasks.messaging.outbox import dispatch
from tasks.pack import pack
from tasks.replacements import (
    ReplacementLine,
    ReplacementRequest,
    create_replacements,
)
from tasks.store.db import session_scope
from tasks.store.models import Message, Order, OrderEvent, Product, ServiceCase
from tasks.verify import verify
from tests.factories import add_catalog, add_order

LINES = [("TEE-1", 2, "25.00"), ("MUG-1", 1, "18.00")]


def test_a_case_replacement_runs_the_journey_at_no_charge_once(engine, runtime, now):
    with session_scope(engine) as session:
        add_catalog(session, now)
        original = add_order(session, now - timedelta(days=9), LINES, state="delivered",
                             step=None, delivered_at=now - timedelta(days=2))
        original.lines[0].refunded_quantity = 1  # a tee was refunded: one is replaced
        case = ServiceCase(effect_key=f"order:{original.id}:case:lost", order_id=original.id,
                           reason="parcel lost", proposed="replacement", opened_at=now)
        session.add(case)
        session.flush()
        original_id, original_name, case_id = original.id, original.name, case.id

    with session_scope(engine) as session:
        outcome = decide_case(session, case_id, "replacement", "ops", None, now, runtime)
    with session_scope(engine) as session:  # deciding again, or settling: the same order
        again = settle_case(session, case_id, "replacement", "ops", None, now, runtime)
        rerun = create_replacements(session, [ReplacementRequest(
            original_id, f"case:{case_id}:replacement", (ReplacementLine("X", "x", None, 1),),
            "again")], now, runtime, "ops")
    new_id = outcome.replacement_order_id
    assert outcome.changed and not again.changed and new_id is not None
    assert again.replacement_order_id == new_id and rerun == {f"case:{case_id}:replacement":
                                                              new_id}

    with session_scope(engine) as session:
        new = session.get(Order, new_id)
        assert (new.source, new.name, new.replaces_order_id, new.state) == (
            "replacement", f"{original_name}-R1", original_id, "received")
        assert (new.total, new.subtotal, new.shipping, new.financial_status) == (
            0, 0, 0, "paid")
        assert [(ln.sku, ln.quantity, ln.unit_price) for ln in new.lines] == [
            ("TEE-1", 1, 0), ("MUG-1", 1, 0)]
        assert (new.email, new.shipping_address) == (
            session.get(Order, original_id).email, session.get(Order, original_id)
            .shipping_address)
        links = dict(session.execute(select(OrderEvent.order_id, OrderEvent.detail).where(
            OrderEvent.kind == "replacement")).tuples().all())
        assert links[original_id]["replacement_order_id"] == new_id
        assert links[new_id]["replaces_order_id"] == original_id
        [mail] = session.scalars(select(Message).where(
            Message.template == "service_outcome")).all()
        url = mail.context["replacement"]["url"]
        assert "/o/" in url
        link = read_token("test-secret", url.rsplit("/", 1)[1], Purpose.ORDER, now.date())
        assert link.subject == new_id
        assert not_earning_reason(new, {}, loyalty_config(runtime.config)) == (
            "no points: a replacement, at no charge")

    for stage in (verify, pack, confirm):
        with session_scope(engine) as session:
            result = stage(session, [new_id], now, runtime)
            assert result.advanced == 1, (stage.__name__, result)
    with session_scope(engine) as session:
        new = session.get(Order, new_id)
        reserved = dict(session.execute(select(Product.sku, Product.reserved)).tuples().all())
        invoice = runtime.archive.get(new.packing["documents"]["invoice"]).decode()
        [confirmation] = session.scalars(select(Message).where(
            Message.order_id == new_id, Message.template == "confirmation")).all()
        sent = dispatch(session, now, runtime)
    assert new.state == "confirmed" and new.promised_delivery is not None
    assert (reserved["TEE-1"], reserved["MUG-1"]) == (1, 1)
    assert f"No charge &mdash; replacement for order {original_name}" in invoice
    assert confirmation.context["order"]["replaces"] == original_name
    assert confirmation.context["order"]["total"] == "0.00"
    assert sent.sent == 2  # the case's outcome and the replacement's confirmation

    # An exchange of the same order later is replacement number 2.
    with session_scope(engine) as session:
        second = create_replacements(session, [ReplacementRequest(
            original_id, "return:9:exchange", (ReplacementLine("TEE-1", "Tee", "L", 1),),
            "exchange")], now, runtime, "customer")
        assert session.get(Order, second["return:9:exchange"]).name == f"{original_name}-R2"
        assert session.scalar(select(func.count()).select_from(Order).where(
            Order.source == "replacement")) == 2
