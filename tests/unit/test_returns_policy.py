"""The return policy (tasks/returns/policy.py) and opening returns (tasks/returns/requests.py).

The policy is pure: checked on rows built in memory. Opening runs on SQLite and PostgreSQL:
auto-approved vs waiting for an operator, the same key twice = one return and one mail, a
refused request writes nothing, pending marketing about the returned SKU is cancelled, an
exchange only for a variant in stock, and a return to sender of an undelivered order.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tasks.messaging.outbox import enqueue
from tasks.messaging.render import renderer_for
from tasks.returns import policy
from tasks.returns.notices import KINDS, return_notice
from tasks.returns.requests import (
    ReturnRefused,
    ReturnRequest,
    open_returns,
    recent_returns,
    shopify_reason,
)
from tasks.store.db import session_scope
from tasks.store.models import Message, Order, OrderEvent, OrderLine, Product, Return
from tests.factories import add_customer, add_order


def line(id_, sku, qty=1, price="50.00", discount="0", **fields) -> OrderLine:
    return OrderLine(id=id_, position=id_, sku=sku, title=sku, quantity=qty,
                     unit_price=Decimal(price), total_discount=Decimal(discount),
                     refunded_quantity=fields.pop("refunded", 0),
                     gift_card=fields.pop("gift_card", False),
                     requires_shipping=fields.pop("requires_shipping", True), **fields)


def product(sku, category="apparel", tags=(), title=None, stock=5, **attributes) -> Product:
    return Product(sku=sku, title=title or sku, category=category, tags=list(tags), stock=stock,
                   reserved=0, attributes=attributes)


def test_policy_window_final_sale_fees_and_auto_approval(cfg, now):
    delivered = now - timedelta(days=20)
    order = Order(id=1, currency="USD", delivered_at=delivered, lines=[
        line(1, "TEE", qty=3, price="10.00", discount="1.00", refunded=1),
        line(2, "RING"),
        line(3, "SALE"), line(4, "CARD", gift_card=True), line(5, "EBOOK", requires_shipping=False),
        line(6, "GONE", qty=2), line(7, "UNKNOWN-SKU")])
    products = {"TEE": product("TEE"), "RING": product("RING", category="jewelry"),
                "SALE": product("SALE", tags=["Final-Sale"]),
                "CARD": product("CARD", category="gift cards"), "GONE": product("GONE")}
    lines = {x.sku: x for x in policy.returnable_lines(order, products, {1: 1, 6: 2}, now, cfg)}
    # 3 bought, 1 refunded, 1 already in a return; 29.00 paid for 3: 9.66 each, rounded down.
    assert (lines["TEE"].units, lines["TEE"].unit_value, lines["TEE"].why_not) == (
        1, Decimal("9.66"), None)
    closed = (delivered + timedelta(days=14)).date()
    assert lines["RING"].why_not == f"return window closed on {policy.long_date(closed)}"
    assert lines["RING"].units == 0
    assert lines["SALE"].why_not == "final sale"
    assert lines["CARD"].why_not == "gift card"
    assert lines["EBOOK"].why_not.startswith("nothing to send back")
    assert lines["GONE"].why_not == "already returned"
    assert lines["UNKNOWN-SKU"].why_not is None  # no product row: the default 30 days
    undelivered = policy.returnable_lines(Order(id=2, delivered_at=None, lines=[line(8, "TEE")]),
                                          products, {}, now, cfg)
    assert undelivered[0].why_not == "not delivered yet"
    late = policy.returnable_lines(order, products, {}, now + timedelta(days=11), cfg)
    assert {x.sku for x in late if x.why_not and "closed" in x.why_not} >= {"TEE", "RING"}

    returns = cfg.returns.model_copy(update={"restocking_fee_percent": Decimal(10)})
    charged = cfg.model_copy(update={"returns": returns})
    assert policy.fees("changed_mind", Decimal("100.00"), "USD", charged) == (
        Decimal("10.00"), Decimal("6.95"))
    assert policy.fees("too_small", Decimal("100.00"), "USD", charged) == (0, 0)
    assert policy.fees("damaged", Decimal("100.00"), "USD", charged) == (0, 0)
    assert policy.fees("changed_mind", Decimal("100.00"), "JPY", charged) == (
        Decimal("10.00"), Decimal("0.00"))
    assert "JPY" in policy.fee_note("changed_mind", "JPY", cfg)
    assert policy.fees("changed_mind", Decimal("3.00"), "USD", cfg)[1] == Decimal("3.00")

    usd = Order(currency="USD")
    assert policy.auto_approval(usd, Decimal("250"), "too_small", 0, cfg) is None
    assert policy.auto_approval(usd, Decimal("312"), "too_small", 0, cfg) == (
        "value 312.00 USD above 250")
    assert policy.auto_approval(usd, Decimal("20"), "too_small", 4, cfg) == "4 returns in 180 days"
    assert policy.auto_approval(usd, Decimal("20"), "damaged", 4, cfg) is None  # our fault
    assert policy.auto_approval(Order(currency="XYZ"), Decimal("1"), "too_small", 0, cfg) == (
        "currency XYZ has no auto-approve limit")
    off = cfg.returns.model_copy(update={"auto_approve": cfg.returns.auto_approve.model_copy(
        update={"enabled": False})})
    assert policy.auto_approval(usd, Decimal("1"), "too_small", 0,
                                cfg.model_copy(update={"returns": off})) == "auto-approve off"
    assert policy.product_family(product("A", title="Trail Runner - 10")) == (
        policy.product_family(product("B", title="Trail Runner - 11")))
    assert policy.product_family(product("A", title="X", shopify_product_id=7)) == "shopify:7"
    assert shopify_reason("SIZE_TOO_SMALL", cfg.returns.reasons) == "too_small"
    assert shopify_reason("UNKNOWN", cfg.returns.reasons) == "other"


def add_runners(session, now) -> None:
    """A CSV-style family (title before " - ") and one Shopify-id family of one variant."""
    for sku, stock, deleted in (("RUN-10", 3, None), ("RUN-11", 2, None), ("RUN-12", 0, None),
                                ("RUN-13", 4, now.isoformat())):
        session.add(Product(sku=sku, title=f"Trail Runner - {sku[-2:]}", category="shoes",
                            tags=[], stock=stock, reserved=0, price=Decimal("120.00"),
                            attributes={"deleted_at": deleted} if deleted else {},
                            updated_at=now))
    session.add(Product(sku="RING-1", title="Gold ring", category="jewelry", tags=["Personalised"],
                        stock=1,
                        reserved=0, price=Decimal("900.00"), attributes={}, updated_at=now))
    session.flush()


def test_open_returns(engine, runtime, now):
    cfg = runtime.config
    with session_scope(engine) as session:
        add_runners(session, now)
        customer = add_customer(session, now, "ret@example.com")
        order = add_order(session, now, [("RUN-10", 2, "120.00"), ("RING-1", 1, "900.00")],
                          state="delivered", step=None, customer=customer,
                          delivered_at=now - timedelta(days=3))
        late_order = add_order(session, now, [("RUN-11", 1, "120.00")], state="shipped",
                               step=None, customer=customer)
        enqueue(session, [{"effect_key": "cross-sell-run", "order_id": order.id,
                           "customer_id": customer.id, "template": "cross_sell", "version": 1,
                           "msg_class": "marketing", "priority": 70, "topic": "RUN-10",
                           "to_addr": "ret@example.com", "message_id": "<x@y>", "context": {},
                           "not_before": now}], now)
        ids = order.id, late_order.id, [x.id for x in order.lines], late_order.lines[0].id

    order_id, late_id, (run_line, ring_line), late_line = ids
    one = ReturnRequest(order_id, {run_line: 1}, "too_small", key=f"return:{order_id}:a")
    with session_scope(engine) as session:
        opened = open_returns(session, [one], now, runtime)
        rma = opened[0].ret.rma
        assert opened[0].created and opened[0].ret.status == "approved"
        assert opened[0].ret.decided_by == "policy" and opened[0].ret.goods_value == 120
    with session_scope(engine) as session:  # a double submit: the same return, nothing new
        again = open_returns(session, [one], now + timedelta(minutes=1), runtime)
        assert (again[0].ret.rma, again[0].created) == (rma, False)
        cross_sell = session.scalar(select(Message).where(Message.effect_key == "cross-sell-run"))
        assert cross_sell.status == "pending"  # one of the two units is kept: still relevant

    refusals = [
        (replace(one, key="k1", lines={run_line: 2}), "at most 1 can be returned"),
        (replace(one, key="k2", lines={ring_line: 1}), "cannot be returned: final sale"),
        (replace(one, key="k3", reason="bored"), "choose a reason"),
        (replace(one, key="k4", resolution="exchange", exchange={run_line: "RUN-12"}),
         "not in stock"),
        (replace(one, key="k5", resolution="exchange", exchange={run_line: "RUN-13"}),
         "not in stock"),  # deleted from the catalogue
        (replace(one, key="k6", order_id=late_id, lines={late_line: 1}), "not delivered yet"),
    ]
    for request, message in refusals:
        with session_scope(engine) as session, pytest.raises(ReturnRefused, match=message):
            open_returns(session, [request], now, runtime)

    exchange = replace(one, key="x", resolution="exchange", exchange={run_line: "RUN-11"},
                       reason="too_big")
    rts = ReturnRequest(late_id, {late_line: 1}, "return_to_sender", source="cancellation",
                        key=f"order:{late_id}:return_to_sender", approve=True)
    with session_scope(engine) as session:
        opened = open_returns(session, [exchange, rts], now, runtime, actor="op@store")
        assert [o.ret.status for o in opened] == ["approved", "approved"]
        assert opened[0].ret.lines[0].exchange_sku == "RUN-11"
        assert opened[1].ret.decided_by == "op@store"
        assert len({o.ret.rma for o in opened} | {rma}) == 3
        assert recent_returns(session, [customer.id], now - timedelta(days=1)) == {customer.id: 3}

    with session_scope(engine) as session:
        mails = session.scalars(select(Message).where(Message.template == "return_update")
                                .order_by(Message.id)).all()
        assert [m.effect_key.split(":")[-1] for m in mails] == ["approved"] * 3
        assert session.scalar(select(Message.status).where(
            Message.effect_key == "cross-sell-run")) == "cancelled"  # both units now going back
        events = session.scalars(select(OrderEvent).where(OrderEvent.kind == "return")).all()
        assert len(events) == 3 and {e.detail["rma"] for e in events} >= {rma}
        assert session.scalar(select(func.count()).select_from(Return)) == 3
        renderer = renderer_for(cfg)
        first = mails[0]
        text = renderer.render(first.template, first.context).text
        assert rma in text and "Send it by" in text and "/returns/" in text
        ret = session.scalar(select(Return).where(Return.rma == rma))
        order = session.get(Order, order_id)
        for kind in KINDS:  # every kind renders (H2 sends the later ones)
            row = return_notice(ret, order, kind, runtime, now, message="Worn items.")
            assert renderer.render("return_update", row["context"]).subject


def test_operator_review_for_value_and_repeat(engine, runtime, now):
    with session_scope(engine) as session:
        add_runners(session, now)
        order = add_order(session, now, [("RUN-10", 3, "120.00")], state="delivered", step=None,
                          delivered_at=now - timedelta(days=1))
        request = ReturnRequest(order.id, {order.lines[0].id: 3}, "changed_mind", key="big")
        ret = open_returns(session, [request], now, runtime)[0].ret
        # 360.00 > 250 USD: an operator decides; the customer pays return shipping.
        assert (ret.status, ret.decided_by, ret.shipping_fee) == ("requested", None,
                                                                  Decimal("6.95"))
        event = session.scalar(select(OrderEvent).where(OrderEvent.kind == "return"))
        assert event.detail["needs_operator"] == "value 360.00 USD above 250"
        assert session.scalar(select(Message.effect_key).where(
            Message.template == "return_update")) == f"return:{ret.id}:requested"
